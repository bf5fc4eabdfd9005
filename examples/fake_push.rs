//! The fake push provider of the tests as a standalone process, for benchmarks:
//! `cargo run --release --example fake_push -- 127.0.0.1:PORT DIR` serves FCM v1
//! (and its OAuth token endpoint) and Web Push, counts what it accepts (GET
//! /stats), and writes DIR/service-account.json pointing at itself. With
//! FAKE_PUSH_RECORD set it keeps every delivery (GET /received).

#[path = "../tests/support/fake_push.rs"]
mod fake_push;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".to_owned()));
    let record = std::env::var_os("FAKE_PUSH_RECORD").is_some();
    let fake = fake_push::FakePush::start_on(
        address.parse().expect("an address such as 127.0.0.1:9999"),
        record,
    )
    .await;
    let account = fake.service_account(&dir);
    println!("{} {}", fake.url, account.display());
    std::future::pending::<()>().await;
}
