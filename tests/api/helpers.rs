//! Test harness: every test gets its own instance, database and random ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use panneau::app::Application;
use panneau::config::Config;
use panneau::store::sql::{PoolSettings, SqlStore};
use panneau::store::{NewToken, StateStore};
use panneau::tokens::TokenHasher;
use panneau_domain::{DepartmentCode, InseeCode, Role, Scope};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

static TRACING: Once = Once::new();

/// Logs are quiet unless `TEST_LOG` is set (to a filter such as `debug`).
fn init_tracing() {
    TRACING.call_once(|| {
        if let Ok(level) = std::env::var("TEST_LOG") {
            panneau::telemetry::init(panneau::config::LogFormat::Text, &level);
        }
    });
}

pub struct TestApp {
    pub address: String,
    pub ops_address: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The database this instance uses (SQLite in `dir`, or MariaDB).
    pub database_url: String,
    pub nats_url: Option<String>,
    tweak: Option<Tweak>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("panneau.db").display())
}

fn config_for(database_url: &str, nats_url: Option<&str>) -> Config {
    let mut config = Config::defaults();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.ops_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(database_url.to_owned().into());
    config.nats_url = nats_url.map(str::to_owned);
    // A MariaDB made unreachable by a test answers 503 within a second; an
    // embedded database keeps the default, so a slow disk under the parallel
    // suite is not taken for an outage.
    if nats_url.is_some() {
        config.database_acquire_timeout_ms = 1_000;
    }
    config
}

async fn start(
    config: Config,
) -> (
    SocketAddr,
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
) {
    let app = Application::build(config)
        .await
        .expect("the application builds");
    let (http, ops) = (app.http_addr(), app.ops_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (http, ops, stop, server)
}

/// A fresh embedded instance on random ports with its own database.
pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = database_url(dir.path());
    spawn_with(dir, url, None).await
}

/// A cluster-mode instance on MariaDB and NATS JetStream.
pub async fn spawn_cluster_app(database_url: &str, nats_url: &str) -> TestApp {
    spawn_inner(
        tempfile::tempdir().unwrap(),
        database_url.to_owned(),
        Some(nats_url.to_owned()),
        None,
    )
    .await
}

/// A tweak of the configuration (push gateways, say), kept across restarts.
pub type Tweak = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

/// An instance whose configuration `tweak` adjusts (embedded when `database_url` is `None`).
pub async fn spawn_tweaked(
    database_url: Option<&str>,
    nats_url: Option<&str>,
    tweak: Tweak,
) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = database_url.map_or_else(|| self::database_url(dir.path()), str::to_owned);
    spawn_inner(dir, url, nats_url.map(str::to_owned), Some(tweak)).await
}

async fn spawn_with(
    dir: tempfile::TempDir,
    database_url: String,
    nats_url: Option<String>,
) -> TestApp {
    spawn_inner(dir, database_url, nats_url, None).await
}

async fn spawn_inner(
    dir: tempfile::TempDir,
    database_url: String,
    nats_url: Option<String>,
    tweak: Option<Tweak>,
) -> TestApp {
    init_tracing();
    let mut config = config_for(&database_url, nats_url.as_deref());
    if let Some(tweak) = &tweak {
        tweak(&mut config);
    }
    let (http, ops, stop, server) = start(config).await;
    TestApp {
        database_url,
        nats_url,
        tweak,
        address: format!("http://{http}"),
        ops_address: format!("http://{ops}"),
        client: {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
        },
        dir,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("panneau.db")
    }

    /// Stops the instance (graceful shutdown) and starts a new one on the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = config_for(&self.database_url, self.nats_url.as_deref());
        if let Some(tweak) = &self.tweak {
            tweak(&mut config);
        }
        let (http, ops, stop, server) = start(config).await;
        self.address = format!("http://{http}");
        self.ops_address = format!("http://{ops}");
        self.stop = Some(stop);
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task")
                .expect("the server stops cleanly");
        }
    }

    /// Creates a publisher with one token, as `panneau publisher create` does.
    pub async fn publisher(&self, name: &str, scope: Scope, role: Role) -> String {
        let store = SqlStore::connect(&self.database_url, &PoolSettings::default())
            .await
            .unwrap();
        let token = format!("pnn_test_{}", uuid::Uuid::now_v7().simple());
        let new = NewToken {
            hash: TokenHasher::default().hash(&token),
            role,
            scope,
        };
        store
            .create_publisher(name, &new, panneau::now())
            .await
            .unwrap();
        store.close().await;
        token
    }

    /// One publisher with one token per role given, in that order.
    pub async fn colleagues(&self, scope: Scope, roles: &[Role]) -> Vec<String> {
        let store = SqlStore::connect(&self.database_url, &PoolSettings::default())
            .await
            .unwrap();
        let mut tokens = Vec::new();
        let mut publisher = None;
        for role in roles {
            let token = format!("pnn_test_{}", uuid::Uuid::now_v7().simple());
            let new = NewToken {
                hash: TokenHasher::default().hash(&token),
                role: *role,
                scope: scope.clone(),
            };
            match publisher {
                None => {
                    publisher = Some(
                        store
                            .create_publisher("Mairie", &new, panneau::now())
                            .await
                            .unwrap()
                            .0,
                    )
                }
                Some(p) => {
                    store
                        .add_token(p, &new, panneau::now())
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
            tokens.push(token);
        }
        store.close().await;
        tokens
    }

    /// A town hall allowed to publish to Rennes (35238) and Cesson-Sévigné (35051).
    pub async fn town_hall(&self) -> String {
        self.publisher(
            "Mairie de Rennes",
            communes(&["35238", "35051"]),
            Role::Editor,
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The instance's metrics, as its ops listener serves them.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.ops_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    pub async fn publish(&self, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/publications"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Publishes and returns the new id, asserting 201.
    pub async fn publish_ok(&self, token: &str, body: &Value) -> String {
        let response = self.publish(token, body).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn amend(
        &self,
        token: &str,
        id: &str,
        if_match: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .patch(self.url(&format!("/v1/publications/{id}")))
            .bearer_auth(token)
            .json(body);
        if let Some(version) = if_match {
            request = request.header("If-Match", version);
        }
        request.send().await.unwrap()
    }

    pub async fn retract(&self, token: &str, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/v1/publications/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/publisher/stats` with this token: 200, private, and its body.
    pub async fn publisher_stats(&self, token: &str) -> Value {
        let response = self
            .client
            .get(self.url("/v1/publisher/stats"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "private, no-cache");
        response.json().await.unwrap()
    }

    /// The ids in a commune's feed (first page), in order.
    pub async fn feed_ids(&self, commune: &str) -> Vec<String> {
        let response = self.get(&format!("/v1/communes/{commune}/feed")).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls until `check` holds or `timeout` passes.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check().await {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub fn communes(codes: &[&str]) -> Scope {
    Scope::Communes(codes.iter().map(|c| InseeCode::parse(c).unwrap()).collect())
}

pub fn departments(codes: &[&str]) -> Scope {
    Scope::Departments(
        codes
            .iter()
            .map(|c| DepartmentCode::parse(c).unwrap())
            .collect(),
    )
}

/// A valid publication body for the given communes.
pub fn notice(communes: &[&str]) -> Value {
    json!({
        "communes": communes,
        "title": "Coupure d'eau rue des Lilas",
        "body": "Travaux sur le réseau d'eau potable mardi de 8 h à 12 h.\nMerci de votre compréhension.",
        "category": "roadworks",
        "priority": "normal",
        "notify": true
    })
}

/// Asserts a problem+json answer with this status, and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let headers: HeaderMap = response.headers().clone();
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert!(headers.contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:panneau:problem:")
    );
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    body
}

/// The field names of a validation problem.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// An HTTP client for tests (reqwest's TLS needs a crypto provider installed).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Runs the `panneau` binary on `database_url`, as an operator would.
pub fn panneau_cli(database_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_panneau"))
        .args(args)
        .env("PANNEAU_DATABASE_URL", database_url)
        .env_remove("PANNEAU_CONFIG")
        .env_remove("PANNEAU_NATS_URL")
        .output()
        .expect("the panneau binary runs")
}

/// Asserts that a `panneau` command succeeded and returns its standard error
/// (where the commands report what they did).
pub fn succeeded(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the command failed: {stderr}");
    stderr
}
