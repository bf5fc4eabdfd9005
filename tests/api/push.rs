//! Devices and push notifications, end to end, against the fake provider.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::fake_push::FakePush;
use crate::helpers::{TestApp, Tweak, assert_problem, fields, notice, spawn_tweaked};

const WAIT: Duration = Duration::from_secs(20);

/// An instance whose FCM and Web Push gateways point at `fake`.
pub(crate) async fn app_with(
    fake: &FakePush,
    database: Option<&str>,
    nats: Option<&str>,
    extra: fn(&mut panneau::config::Config),
) -> TestApp {
    let keys = tempfile::tempdir().unwrap().keep();
    let account = fake.service_account(&keys);
    let vapid = FakePush::vapid_key(&keys);
    let endpoint = fake.url.clone();
    let tweak: Tweak = Arc::new(move |config| {
        config.fcm_credentials = Some(account.clone());
        config.fcm_endpoint = endpoint.clone();
        config.webpush_vapid_key = Some(vapid.clone());
        config.webpush_allow_loopback = true;
        config.push_concurrency = 16;
        config.backoff_for_tests();
        extra(config);
    });
    spawn_tweaked(database, nats, tweak).await
}

trait TestConfig {
    fn backoff_for_tests(&mut self);
}

impl TestConfig for panneau::config::Config {
    fn backoff_for_tests(&mut self) {
        self.push_lease_seconds = 3;
    }
}

async fn register(
    app: &TestApp,
    platform: &str,
    token: &str,
    communes: &[&str],
) -> (String, String) {
    let response = app
        .client
        .post(app.url("/v1/devices"))
        .json(&json!({"platform": platform, "token": token, "locale": "fr", "communes": communes}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    (
        body["device_id"].as_str().unwrap().to_owned(),
        body["device_secret"].as_str().unwrap().to_owned(),
    )
}

/// Waits until the job of `publication` is finished and returns it.
async fn finished_job(app: &TestApp, publication: &str) -> panneau::store::NotificationJob {
    let store = panneau::store::sql::SqlStore::connect(&app.database_url, &Default::default())
        .await
        .unwrap();
    let id = panneau_domain::PublicationId::parse(publication).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = panneau::store::NotificationStore::job(&store, id)
            .await
            .unwrap();
        if let Some(job) = job
            && !matches!(
                job.status,
                panneau::store::JobStatus::Pending | panneau::store::JobStatus::Running
            )
        {
            store.close().await;
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the notification job of {publication} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_device_registers_changes_its_communes_rotates_its_token_and_is_erased() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    let (id, secret) = register(&app, "fcm", "token-a", &["35238"]).await;
    assert!(secret.starts_with("dsk_"));
    let put = |path: String, auth: Option<String>, body: Value| {
        let mut request = app.client.put(app.url(&path)).json(&body);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        async move { request.send().await.unwrap() }
    };
    let communes_path = format!("/v1/devices/{id}/communes");
    let ok = put(
        communes_path.clone(),
        Some(format!("Device {secret}")),
        json!({"communes": ["35238", "35051"]}),
    )
    .await;
    assert_eq!(ok.status(), 204);
    let missing = put(communes_path.clone(), None, json!({"communes": []})).await;
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Device")
    );
    assert_problem(missing, 401).await;
    assert_problem(
        put(
            communes_path.clone(),
            Some("Device dsk_wrong".into()),
            json!({"communes": []}),
        )
        .await,
        403,
    )
    .await;
    assert_problem(
        put(
            communes_path.clone(),
            Some(format!("Bearer {secret}")),
            json!({"communes": []}),
        )
        .await,
        401,
    )
    .await;
    let token = put(
        format!("/v1/devices/{id}/token"),
        Some(format!("Device {secret}")),
        json!({"token": "token-b"}),
    )
    .await;
    assert_eq!(token.status(), 204);
    let unknown = format!("/v1/devices/{}/communes", uuid::Uuid::now_v7());
    assert_problem(
        put(
            unknown,
            Some(format!("Device {secret}")),
            json!({"communes": []}),
        )
        .await,
        404,
    )
    .await;

    let deleted = app
        .client
        .delete(app.url(&format!("/v1/devices/{id}")))
        .header("Authorization", format!("Device {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(
        put(
            communes_path,
            Some(format!("Device {secret}")),
            json!({"communes": []}),
        )
        .await,
        404,
    )
    .await;
    // Every trace is gone from the database.
    let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
    let bytes = uuid::Uuid::parse_str(&id).unwrap().as_bytes().to_vec();
    for (table, column) in [
        ("devices", "id"),
        ("device_communes", "device_id"),
        ("notification_deliveries", "device_id"),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?");
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(bytes.clone())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(count, 0, "{table} still mentions the device");
    }
    let tokens: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE token IN ('token-a', 'token-b')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tokens, 0);
}

#[tokio::test]
async fn registrations_are_checked_and_rate_limited() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    let post = |body: Value| {
        let request = app.client.post(app.url("/v1/devices")).json(&body);
        async move { request.send().await.unwrap() }
    };
    let too_many: Vec<String> = panneau::app::COMMUNES
        .iter()
        .take(51)
        .map(|c| c.code.as_str().to_owned())
        .collect();
    let cases = [
        (json!({"platform": "sms", "token": "t"}), 400, "platform"),
        (json!({"platform": "fcm", "token": ""}), 400, "token"),
        (
            json!({"platform": "fcm", "token": "t", "locale": "français"}),
            400,
            "locale",
        ),
        (
            json!({"platform": "fcm", "token": "t", "communes": too_many}),
            400,
            "communes",
        ),
        (
            json!({"platform": "fcm", "token": "t", "communes": ["35238", "35238"]}),
            400,
            "communes",
        ),
        (
            json!({"platform": "fcm", "token": "t", "communes": ["35999"]}),
            422,
            "communes",
        ),
        (
            json!({"platform": "webpush", "token": "not json"}),
            400,
            "token",
        ),
        (
            json!({"platform": "webpush", "token": "{\"endpoint\":\"https://evil.example/x\",\"keys\":{\"p256dh\":\"AA\",\"auth\":\"AA\"}}"}),
            400,
            "token",
        ),
        (
            json!({"platform": "fcm", "token": "t", "extra": 1}),
            400,
            "extra",
        ),
    ];
    for (body, status, field) in cases {
        let problem = assert_problem(post(body.clone()).await, status).await;
        assert_eq!(fields(&problem), [field], "{body}");
    }
    // The budget per address: some were spent above (validation happens after it).
    let mut statuses = Vec::new();
    for n in 0..60 {
        statuses.push(
            post(json!({"platform": "fcm", "token": format!("t-{n}")}))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&201));
    let last = post(json!({"platform": "fcm", "token": "one-more"})).await;
    assert!(last.headers().contains_key("retry-after"));
    assert_problem(last, 429).await;
}

#[tokio::test]
async fn a_publication_for_two_communes_reaches_each_subscribed_device_once() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    register(&app, "fcm", "rennes-only", &["35238"]).await;
    register(&app, "fcm", "cesson-only", &["35051"]).await;
    register(&app, "fcm", "both", &["35238", "35051"]).await;
    register(&app, "fcm", "elsewhere", &["29019"]).await;
    let token = app.town_hall().await;
    let mut alert = notice(&["35238", "35051"]);
    alert["priority"] = json!("urgent");
    let id = app.publish_ok(&token, &alert).await;
    let job = finished_job(&app, &id).await;
    assert_eq!((job.sent, job.failed, job.disabled), (3, 0, 0));
    let received = fake.received();
    let mut tokens: Vec<&str> = received.iter().map(|r| r.token.as_str()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, ["both", "cesson-only", "rennes-only"]);
    for r in &received {
        assert_eq!(r.publication, id);
        assert_eq!(r.priority, "HIGH", "urgent goes at high priority");
        assert_eq!(r.collapse_key, id, "the collapse key is the publication id");
        assert_eq!(r.ttl, "86400s");
        assert!(r.has_text);
        assert_eq!(
            r.body["message"]["notification"]["title"],
            "Coupure d'eau rue des Lilas"
        );
    }
    // Amendments and retractions never notify again; notify:false never notifies.
    assert_eq!(
        app.amend(&token, &id, Some("\"1\""), &json!({"title": "Reporté"}))
            .await
            .status(),
        200
    );
    let mut quiet = notice(&["35238"]);
    quiet["notify"] = json!(false);
    let quiet = app.publish_ok(&token, &quiet).await;
    assert_eq!(app.retract(&token, &id).await.status(), 204);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.received().len(), 3);
    let store = panneau::store::sql::SqlStore::connect(&app.database_url, &Default::default())
        .await
        .unwrap();
    let quiet = panneau_domain::PublicationId::parse(&quiet).unwrap();
    assert!(
        panneau::store::NotificationStore::job(&store, quiet)
            .await
            .unwrap()
            .is_none()
    );
    // The publisher sees the count.
    let list: Value = app
        .client
        .get(app.url("/v1/publisher/publications"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let own = list["publications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(own["notifications"], 3);
}

#[tokio::test]
async fn a_restart_replays_the_log_without_notifying_again() {
    let fake = FakePush::start(true).await;
    let mut app = app_with(&fake, None, None, |_| {}).await;
    register(&app, "fcm", "d1", &["35238"]).await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    finished_job(&app, &id).await;
    app.restart().await;
    // The notifier's projection is replayed from its position (and would be harmless from 0).
    let store = panneau::store::sql::SqlStore::connect(&app.database_url, &Default::default())
        .await
        .unwrap();
    let mut events = panneau::store::EventStore::read_after(&store, 0);
    while let Some(event) = futures_util::StreamExt::next(&mut events).await {
        panneau::notifier::on_event(&store, &store, &event.unwrap().envelope)
            .await
            .unwrap();
    }
    drop(events);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.received().len(), 1, "nothing is sent twice");
}

#[tokio::test]
async fn a_scheduled_publication_notifies_when_it_goes_live() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    register(&app, "fcm", "d1", &["35238"]).await;
    let token = app.town_hall().await;
    let mut body = notice(&["35238"]);
    body["publish_at"] = json!(panneau::now().plus_micros(2_500_000).to_rfc3339());
    let id = app.publish_ok(&token, &body).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(fake.received().is_empty(), "not before its time");
    let job = finished_job(&app, &id).await;
    assert_eq!(job.sent, 1);
    assert_eq!(fake.received()[0].publication, id);
}

#[tokio::test]
async fn dead_tokens_are_disabled_and_payload_errors_never_wipe_the_audience() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    for token in [
        "unregistered-1",
        "mismatch-2",
        "badtoken-3",
        "badpayload-4",
        "good-5",
    ] {
        register(&app, "fcm", token, &["35238"]).await;
    }
    let token = app.town_hall().await;
    let first = app.publish_ok(&token, &notice(&["35238"])).await;
    let job = finished_job(&app, &first).await;
    assert_eq!((job.sent, job.disabled, job.failed), (1, 3, 1));
    let second = app.publish_ok(&token, &notice(&["35238"])).await;
    let job = finished_job(&app, &second).await;
    // Only the token whose payload failed and the good one are still tried.
    assert_eq!((job.sent, job.disabled, job.failed), (1, 0, 1));
}

#[tokio::test]
async fn a_429_storm_delays_but_loses_nothing() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    for n in 0..20 {
        register(&app, "fcm", &format!("device-{n}"), &["35238"]).await;
    }
    fake.storm(40);
    fake.unavailable(5);
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    let job = finished_job(&app, &id).await;
    assert_eq!((job.sent, job.failed), (20, 0));
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 20);
    assert!(deliveries.values().all(|n| *n == 1));
}

#[tokio::test]
async fn privacy_mode_sends_ids_only() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |config| config.push_privacy = true).await;
    register(&app, "fcm", "d1", &["35238"]).await;
    let token = app.town_hall().await;
    let id = app.publish_ok(&token, &notice(&["35238"])).await;
    finished_job(&app, &id).await;
    let received = fake.received();
    assert!(!received[0].has_text);
    let raw = received[0].body.to_string();
    assert!(
        !raw.contains("Coupure") && !raw.contains("Travaux"),
        "no text leaves: {raw}"
    );
    assert_eq!(
        received[0].body["message"]["data"]["publication_id"],
        id.as_str()
    );
}

#[tokio::test]
async fn web_push_subscriptions_get_an_encrypted_vapid_signed_message() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    let secret = web_push_native::p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let public = secret.public_key();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let subscription = |path: &str| {
        json!({
            "endpoint": format!("{}/webpush/{path}", fake.url),
            "keys": {
                "p256dh": b64.encode(web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false).as_bytes()),
                "auth": b64.encode([1u8; 16]),
            }
        })
        .to_string()
    };
    register(&app, "webpush", &subscription("browser-1"), &["35238"]).await;
    register(&app, "webpush", &subscription("gone-2"), &["35238"]).await;
    let token = app.town_hall().await;
    let mut alert = notice(&["35238"]);
    alert["priority"] = json!("urgent");
    let id = app.publish_ok(&token, &alert).await;
    let job = finished_job(&app, &id).await;
    assert_eq!((job.sent, job.disabled), (1, 1));
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].priority, "high");
    assert_eq!(
        received[0].collapse_key,
        uuid::Uuid::parse_str(&id).unwrap().simple().to_string()
    );
    assert!(!received[0].has_text, "the payload is encrypted");
}

#[tokio::test]
async fn the_oauth_token_is_cached_until_it_expires() {
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |_| {}).await;
    for n in 0..5 {
        register(&app, "fcm", &format!("d{n}"), &["35238"]).await;
    }
    let token = app.town_hall().await;
    for _ in 0..2 {
        let id = app.publish_ok(&token, &notice(&["35238"])).await;
        finished_job(&app, &id).await;
    }
    assert_eq!(fake.received().len(), 10);
    assert_eq!(fake.tokens_issued(), 1, "one access token for every send");
}

#[tokio::test]
async fn a_job_that_could_not_start_in_time_is_dropped_not_sent_late() {
    use panneau::store::{NewJob, NotificationStore};
    let fake = FakePush::start(true).await;
    let app = app_with(&fake, None, None, |config| {
        config.push_stale_after_seconds = 3600
    })
    .await;
    register(&app, "fcm", "d1", &["35238"]).await;
    let store = panneau::store::sql::SqlStore::connect(&app.database_url, &Default::default())
        .await
        .unwrap();
    let id = panneau_domain::PublicationId::new(uuid::Uuid::now_v7()).unwrap();
    let stale = NewJob {
        publication: id,
        communes: vec![panneau_domain::InseeCode::parse("35238").unwrap()],
        priority: panneau_domain::Priority::Normal,
        title: "Ancien".into(),
        body: "Trop tard".into(),
        published_at: panneau::now().plus_micros(-2 * 3_600_000_000),
    };
    assert!(store.create_job(&stale, panneau::now()).await.unwrap());
    let job = finished_job(&app, &id.to_string()).await;
    assert_eq!(job.status, panneau::store::JobStatus::Expired);
    assert!(fake.received().is_empty());
}

/// `panneau export` then `panneau import` into another deployment: the same
/// feeds, audit trail and working tokens there, and nobody notified again.
#[tokio::test]
async fn an_export_imported_elsewhere_serves_the_same_feeds_and_notifies_nobody_again() {
    use crate::helpers::{panneau_cli, succeeded};

    let fake = FakePush::start(true).await;
    let source = app_with(&fake, None, None, |_| {}).await;
    register(&source, "fcm", "source-device", &["35238"]).await;
    let token = source.town_hall().await;
    let mut alert = notice(&["35238", "35051"]);
    alert["priority"] = json!("urgent");
    let alert = source.publish_ok(&token, &alert).await;
    assert_eq!(finished_job(&source, &alert).await.sent, 1);
    let amended = source.publish_ok(&token, &notice(&["35238"])).await;
    finished_job(&source, &amended).await;
    let response = source
        .amend(
            &token,
            &amended,
            Some("\"1\""),
            &json!({"title": "Reporté"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let retracted = source.publish_ok(&token, &notice(&["35051"])).await;
    finished_job(&source, &retracted).await;
    assert_eq!(source.retract(&token, &retracted).await.status(), 204);
    let mut later = notice(&["35238"]);
    later["publish_at"] = json!("2099-01-01T08:00:00Z");
    let scheduled = source.publish_ok(&token, &later).await;
    // A refusal, part of the audit trail.
    assert_eq!(
        source
            .amend(
                &token,
                &alert,
                Some("\"1\""),
                &json!({"communes": ["29019"]})
            )
            .await
            .status(),
        403
    );
    let sent_by_source = fake.received().len();
    assert_eq!(sent_by_source, 2, "the alert and the notice to Rennes");

    let file = source.dir.path().join("export.jsonl");
    let file = file.to_str().unwrap();
    let exported = succeeded(&panneau_cli(&source.database_url, &["export", file]));
    assert!(
        exported.contains("4 events") || exported.contains(" events"),
        "{exported}"
    );

    // Another deployment: imported before it first starts.
    let target_dir = tempfile::tempdir().unwrap();
    let target_url = crate::helpers::database_url(target_dir.path());
    let imported = succeeded(&panneau_cli(&target_url, &["import", file]));
    assert!(
        imported.contains("already present: 0 publishers, 0 tokens, 0 events"),
        "{imported}"
    );
    let mut target = app_with(&fake, Some(&target_url), None, |_| {}).await;
    register(&target, "fcm", "target-device", &["35238", "35051"]).await;
    // The notifier walks the whole imported log again with a device present.
    target.restart().await;

    for commune in ["35238", "35051"] {
        let path = format!("/v1/communes/{commune}/feed");
        let here: Value = source.get(&path).await.json().await.unwrap();
        let there: Value = target.get(&path).await.json().await.unwrap();
        assert_eq!(
            here, there,
            "the feed of {commune} is the same after the import"
        );
    }
    assert_eq!(
        target.feed_ids("35238").await,
        [alert.clone(), amended.clone()],
        "the urgent alert first"
    );
    let history = |app: &TestApp, id: &str| {
        let request = app
            .client
            .get(app.url(&format!("/v1/publications/{id}/history")))
            .bearer_auth(&token);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for id in [&alert, &amended, &retracted, &scheduled] {
        assert_eq!(
            history(&source, id).await,
            history(&target, id).await,
            "history of {id}"
        );
    }

    // The imported token publishes there; only the new publication is sent.
    let fresh = target.publish_ok(&token, &notice(&["35051"])).await;
    assert_eq!(finished_job(&target, &fresh).await.sent, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = fake.received();
    assert_eq!(
        received.len(),
        sent_by_source + 1,
        "imported publications are never sent again"
    );
    assert_eq!(received.last().unwrap().token, "target-device");
    assert_eq!(received.last().unwrap().publication, fresh);

    // Importing again changes nothing.
    target.stop().await;
    let again = succeeded(&panneau_cli(&target_url, &["import", file]));
    assert!(
        again.contains("imported 0 publishers, 0 tokens, 0 events, 0 refusals"),
        "{again}"
    );
}

/// The FCM client at the wire: a request that could not leave (nothing listens)
/// is retried; one that left and got no answer may have been delivered, so it
/// is not sent again (at most once per device, ADR 5); a quota answer is
/// retried with its `Retry-After`.
#[tokio::test]
async fn fcm_requests_that_never_left_are_retried_and_unanswered_ones_are_not() {
    use panneau::push::fcm::FcmGateway;
    use panneau::push::{PushGateway, PushMessage, SendOutcome};

    panneau::install_crypto();
    let fake = FakePush::start(true).await;
    let keys = tempfile::tempdir().unwrap();
    let account = fake.service_account(keys.path());
    let target = panneau::store::Target {
        device: uuid::Uuid::now_v7(),
        platform: panneau_domain::Platform::Fcm,
        token: "device-token".to_owned(),
        locale: "fr".to_owned(),
        token_updated_at: panneau::now(),
    };
    let message = PushMessage {
        publication: panneau_domain::PublicationId::new(uuid::Uuid::now_v7()).unwrap(),
        title: "Coupure d'eau".to_owned(),
        body: "Rue des Lilas, de 9 h à 12 h.".to_owned(),
        urgent: false,
        privacy: false,
        ttl: Duration::from_secs(3600),
    };

    let delivered = FcmGateway::new(&account, &fake.url).unwrap();
    assert_eq!(
        delivered.send(&target, &message).await,
        SendOutcome::Delivered
    );
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].token, "device-token");
    assert_eq!(received[0].publication, message.publication.to_string());
    assert!(received[0].has_text);

    fake.storm(1);
    assert_eq!(
        delivered.send(&target, &message).await,
        SendOutcome::Retry {
            after: Some(Duration::from_secs(1)),
            reason: "FCM 429 RESOURCE_EXHAUSTED".to_owned()
        }
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable =
        FcmGateway::new(&account, &format!("http://127.0.0.1:{closed_port}")).unwrap();
    match unreachable.send(&target, &message).await {
        SendOutcome::Retry {
            after: None,
            reason,
        } => {
            assert!(reason.starts_with("FCM unreachable"), "{reason}")
        }
        other => panic!("a request that never left must be retried: {other:?}"),
    }

    // Takes the connection, reads what comes, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let (mut socket, _) = silent.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
    });
    let silent = FcmGateway::new(&account, &format!("http://127.0.0.1:{silent_port}")).unwrap();
    match silent.send(&target, &message).await {
        SendOutcome::Failed { reason } => {
            assert!(reason.contains("not sent again"), "{reason}")
        }
        other => panic!("a request that may have been delivered must not be retried: {other:?}"),
    }
    holder.abort();
    assert_eq!(
        fake.received().len(),
        1,
        "nothing else reached the provider"
    );
}
