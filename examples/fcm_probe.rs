#[path = "../tests/support/fake_push.rs"]
mod fake_push;
use futures_util::StreamExt;
use panneau::push::PushGateway;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = fake_push::FakePush::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let account = fake.service_account(dir.path());
    let gw = panneau::push::fcm::FcmGateway::new(&account, &fake.url).unwrap();
    let msg = panneau::push::PushMessage {
        publication: panneau_domain::PublicationId::new(uuid::Uuid::now_v7()).unwrap(),
        title: "t".into(),
        body: "b".into(),
        urgent: true,
        privacy: false,
        ttl: std::time::Duration::from_secs(60),
    };
    let targets: Vec<panneau::store::Target> = (0..20000)
        .map(|n| panneau::store::Target {
            device: uuid::Uuid::now_v7(),
            platform: panneau_domain::Platform::Fcm,
            token: format!("bench-{n}"),
            locale: "fr".into(),
            token_updated_at: panneau::now(),
        })
        .collect();
    for conc in [16usize, 64, 256] {
        let start = std::time::Instant::now();
        let n = futures_util::stream::iter(targets.iter())
            .map(|t| gw.send(t, &msg))
            .buffer_unordered(conc)
            .count()
            .await;
        println!(
            "concurrency {conc}: {n} in {:?} = {:.0}/s",
            start.elapsed(),
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
}
