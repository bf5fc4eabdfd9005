//! Secrets from Vault, against the Vault stand-in: login, renewal, a missing
//! secret, Vault down at start and later; and no secret in any output.
//!
//! Every test secret contains `s3cr3t`, so `scripts/test` can grep the logs of
//! the whole run for it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::fake_vault::FakeVault;
use crate::helpers::{http_client, notice};
use crate::infra::{Instance, NatsServer, TestDatabase, free_port, shared_mariadb_url};
use crate::ops::sample;

/// A MariaDB account whose password only Vault knows, owning `database`.
struct DatabaseUser {
    name: String,
    password: String,
}

impl DatabaseUser {
    async fn create(database: &TestDatabase) -> Self {
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let user = Self {
            name: format!("pv_{}", &suffix[suffix.len() - 12..]),
            password: format!("s3cr3t-db-{suffix}"),
        };
        let mut conn = sqlx::MySqlConnection::connect(&shared_mariadb_url())
            .await
            .unwrap();
        for statement in [
            format!(
                "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
                user.name, user.password
            ),
            format!("GRANT ALL ON {}.* TO '{}'@'%'", database.name, user.name),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        user
    }

    /// The database URL without the password.
    fn url(&self, database: &TestDatabase) -> String {
        format!("mysql://{}@127.0.0.1:3306/{}", self.name, database.name)
    }
}

impl Drop for DatabaseUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::MySqlConnection::connect(&shared_mariadb_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP USER IF EXISTS '{name}'@'%'"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The settings that send an instance or the CLI to `vault`, with the AppRole
/// secret id in a file, as in production.
fn vault_settings(vault: &FakeVault, dir: &Path, secret_id: &str) -> Vec<(&'static str, String)> {
    let file = dir.join("approle-secret-id");
    std::fs::write(&file, format!("{secret_id}\n")).unwrap();
    vec![
        ("PANNEAU_SECRETS", "vault".to_owned()),
        ("PANNEAU_VAULT_ADDR", vault.url()),
        ("PANNEAU_VAULT_ROLE_ID", vault.role_id().to_owned()),
        ("PANNEAU_VAULT_SECRET_ID_FILE", file.display().to_string()),
        ("PANNEAU_VAULT_PATH", "panneau".to_owned()),
    ]
}

/// Runs the binary to completion (at most 30 s) and returns its exit status
/// and everything it printed.
async fn run_panneau(args: &[&str], envs: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_panneau"))
        .args(args)
        .env_remove("PANNEAU_CONFIG")
        .env_remove("PANNEAU_NATS_URL")
        .env("PANNEAU_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("PANNEAU_OPS_ADDR", format!("127.0.0.1:{}", free_port()))
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("the panneau binary runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("panneau {args:?} did not stop within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output =
        std::fs::read_to_string(&stdout).unwrap() + &std::fs::read_to_string(&stderr).unwrap();
    crate::infra::keep_output("panneau-cli", &output);
    (status, output)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics_of(instance: &Instance) -> String {
    http_client()
        .get(format!("http://127.0.0.1:{}/metrics", instance.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// Multi-threaded: starting an instance blocks a thread while Vault must answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_provides_the_secrets_renews_its_token_and_an_outage_does_not_stop_the_service() {
    let nats = NatsServer::start();
    let database = TestDatabase::create(&shared_mariadb_url()).await;
    let user = DatabaseUser::create(&database).await;
    let pepper = format!("s3cr3t-pepper-{}", uuid::Uuid::now_v7().simple());
    let mut vault = FakeVault::start(
        "panneau",
        &[
            ("database_password", user.password.as_str()),
            ("token_pepper", pepper.as_str()),
        ],
        3,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vault_settings(&vault, dir.path(), vault.secret_id());
    settings.push(("PANNEAU_DATABASE_URL", user.url(&database)));

    // The CLI reads the same secrets: the password reaches MariaDB, the pepper
    // keys the token hash.
    let (status, output) = run_panneau(
        &[
            "publisher",
            "create",
            "--name",
            "Mairie de Rennes",
            "--commune",
            "35238",
        ],
        &settings,
    )
    .await;
    assert!(status.success(), "publisher create with Vault: {output}");
    let token = output.lines().next().unwrap().trim().to_owned();
    assert!(token.starts_with("pnn_"), "{output}");
    let mut conn = sqlx::MySqlConnection::connect(&database.url())
        .await
        .unwrap();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let peppered = panneau::tokens::TokenHasher::new(Some(pepper.clone().into())).hash(&token);
    assert_eq!(
        stored, peppered,
        "the token hash is keyed by Vault's pepper"
    );
    assert_ne!(
        stored,
        panneau::tokens::TokenHasher::default().hash(&token),
        "the pepper is used"
    );

    let instance = Instance::start_with(
        &user.url(&database),
        Some(&nats.url()),
        dir.path(),
        &settings[..settings.len() - 1],
    );
    let client = http_client();
    let published = client
        .post(instance.url("/v1/publications"))
        .bearer_auth(&token)
        .json(&notice(&["35238"]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        published.status(),
        201,
        "the instance reached MariaDB with Vault's password"
    );

    // The token lives 3 s: the instance renews it before it expires.
    let renewals = vault.renewals();
    wait_until(
        "the Vault token is renewed",
        Duration::from_secs(10),
        || vault.renewals() >= renewals + 2,
    )
    .await;
    let metrics = metrics_of(&instance).await;
    let expiry = sample(&metrics, "panneau_vault_token_expiry_timestamp_seconds").unwrap();
    assert!(
        expiry > unix_now(),
        "the token's expiry is in the future: {expiry}"
    );

    // Vault goes away: the instance keeps serving with what it read, logs the
    // failure, and its expiry metric falls into the past (the alert's input).
    vault.go_down();
    wait_until(
        "the failed renewal is logged",
        Duration::from_secs(15),
        || instance.log().contains("cannot renew the Vault token"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let feed = client
        .get(instance.url("/v1/communes/35238/feed"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200, "reads go on without Vault");
    let published = client
        .post(instance.url("/v1/publications"))
        .bearer_auth(&token)
        .json(&notice(&["35238"]))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201, "writes go on without Vault");
    let metrics = metrics_of(&instance).await;
    let expiry = sample(&metrics, "panneau_vault_token_expiry_timestamp_seconds").unwrap();
    assert!(
        expiry < unix_now(),
        "the expiry metric shows the lapsed token"
    );

    // Vault comes back: the instance logs in again by itself.
    let logins = vault.logins();
    vault.come_back().await;
    wait_until(
        "the instance logs in again",
        Duration::from_secs(20),
        || vault.logins() > logins,
    )
    .await;
    wait_until("the new login is logged", Duration::from_secs(5), || {
        instance.log().contains("logged in to Vault again")
    })
    .await;

    // Nothing the instance wrote or answered carries a secret, even when
    // handed secret-looking input.
    let mut outputs = vec![instance.log(), metrics_of(&instance).await];
    for (header, value) in [
        ("Authorization", "Bearer pnn_s3cr3t-not-a-token".to_owned()),
        ("Authorization", format!("Bearer {pepper}")),
    ] {
        let refused = client
            .post(instance.url("/v1/publications"))
            .header(header, value)
            .json(&notice(&["35238"]))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        outputs.push(refused.text().await.unwrap());
    }
    let readiness = client
        .get(format!("http://127.0.0.1:{}/readyz", instance.ops))
        .send()
        .await
        .unwrap();
    outputs.push(readiness.text().await.unwrap());
    outputs.push(instance.log());
    for secret in [
        user.password.as_str(),
        pepper.as_str(),
        vault.secret_id(),
        "s3cr3t",
    ] {
        for output in &outputs {
            assert!(!output.contains(secret), "a secret leaked into an output");
        }
    }
    // Vault's token is a secret too.
    assert!(
        !instance.log().contains("hvs."),
        "a Vault token leaked into the log"
    );
}

#[tokio::test]
async fn vault_down_at_start_stops_the_start_with_a_clear_error() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let vault = FakeVault::start("panneau", &[], 60).await;
    let mut settings = vault_settings(&vault, dir.path(), vault.secret_id());
    settings[1].1 = format!("http://127.0.0.1:{port}");
    settings.push((
        "PANNEAU_DATABASE_URL",
        "mysql://panneau@127.0.0.1:3306/panneau".to_owned(),
    ));
    settings.push(("PANNEAU_NATS_URL", "nats://127.0.0.1:4".to_owned()));
    let (status, output) = run_panneau(&["serve"], &settings).await;
    assert!(!status.success(), "no start without Vault: {output}");
    assert!(
        output.contains(&format!(
            "Vault at http://127.0.0.1:{port} cannot be reached"
        )),
        "the error names Vault and its address: {output}"
    );
    assert!(!output.contains("s3cr3t"), "no secret in the error");
}

#[tokio::test]
async fn a_refused_approle_login_stops_the_start_and_names_the_setting() {
    let vault = FakeVault::start("panneau", &[("database_password", "s3cr3t-x")], 60).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vault_settings(&vault, dir.path(), "s3cr3t-wrong-secret-id");
    settings.push((
        "PANNEAU_DATABASE_URL",
        "mysql://panneau@127.0.0.1:3306/panneau".to_owned(),
    ));
    let (status, output) = run_panneau(&["serve"], &settings).await;
    assert!(!status.success());
    assert!(
        output.contains("Vault refused the AppRole login")
            && output.contains("PANNEAU_VAULT_ROLE_ID"),
        "{output}"
    );
    assert!(
        !output.contains("s3cr3t"),
        "no secret in the error: {output}"
    );
    assert_eq!(vault.logins(), 0);
}

#[tokio::test]
async fn a_secret_missing_from_vault_is_named_and_stops_the_start() {
    // Vault answers, but its document lacks the database password that the
    // cluster mode needs.
    let vault = FakeVault::start("panneau", &[("token_pepper", "s3cr3t-pepper")], 60).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vault_settings(&vault, dir.path(), vault.secret_id());
    settings.push((
        "PANNEAU_DATABASE_URL",
        "mysql://panneau@127.0.0.1:3306/panneau".to_owned(),
    ));
    let (status, output) = run_panneau(&["serve"], &settings).await;
    assert!(!status.success());
    assert!(
        output.contains("the secret database_password is required but missing"),
        "{output}"
    );
    assert!(!output.contains("s3cr3t"), "{output}");
    assert_eq!(vault.logins(), 1, "it did log in");

    // A document at another path is a missing document, not a crash.
    let mut settings = vault_settings(&vault, dir.path(), vault.secret_id());
    settings[4].1 = "elsewhere".to_owned();
    settings.push((
        "PANNEAU_DATABASE_URL",
        "mysql://panneau@127.0.0.1:3306/panneau".to_owned(),
    ));
    let (status, output) = run_panneau(&["serve"], &settings).await;
    assert!(!status.success());
    assert!(
        output.contains("the secret database_password is required but missing"),
        "{output}"
    );
}

#[tokio::test]
async fn check_config_reports_the_vault_settings_without_their_values() {
    let vault = FakeVault::start("panneau", &[], 60).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vault_settings(&vault, dir.path(), vault.secret_id());
    settings.push((
        "PANNEAU_VAULT_SECRET_ID",
        "s3cr3t-inline-secret-id".to_owned(),
    ));
    let (status, output) = run_panneau(&["check-config"], &settings).await;
    assert!(status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "secrets: vault ({}, KV v2 secret/panneau",
            vault.url()
        )),
        "{output}"
    );
    assert!(!output.contains("s3cr3t"), "{output}");

    // Without a way to log in, the check names the missing setting.
    let incomplete: Vec<_> = settings
        .iter()
        .filter(|(k, _)| !k.starts_with("PANNEAU_VAULT_SECRET_ID"))
        .cloned()
        .collect();
    let (status, output) = run_panneau(&["check-config"], &incomplete).await;
    assert!(!status.success());
    assert!(
        output.contains("PANNEAU_VAULT_SECRET_ID_FILE is required with PANNEAU_SECRETS=vault"),
        "{output}"
    );
}
