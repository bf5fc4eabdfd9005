//! Typed configuration, read once at start from an optional TOML file
//! (`PANNEAU_CONFIG`) and `PANNEAU_*` environment variables (which win), and
//! validated before anything starts. See `panneau.example.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Where secrets come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsSource {
    /// `PANNEAU_SECRET_<NAME>` variables (development).
    #[default]
    Env,
    /// One file per secret in `secrets_dir`.
    File,
    /// HashiCorp Vault (AppRole, KV v2).
    Vault,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Public and publisher API.
    pub http_addr: SocketAddr,
    /// Ops API (`/healthz`, `/readyz`, `/metrics`): keep it on a private network.
    pub ops_addr: SocketAddr,
    /// `sqlite://path` (embedded mode, the default) or `mysql://…` (cluster mode).
    /// May hold a password: never printed.
    pub database_url: Option<SecretString>,
    /// `nats://…`: cluster mode's broker.
    pub nats_url: Option<String>,
    /// Replicas of the JetStream stream and KV bucket: 1 alone, 3 in a cluster.
    pub nats_replicas: usize,
    /// Connections to MariaDB per instance (cluster mode).
    pub database_max_connections: u32,
    /// How long a command waits for a database connection before answering 503.
    pub database_acquire_timeout_ms: u64,
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info` or `panneau=debug,info`; `RUST_LOG` wins.
    pub log_level: String,
    /// Feed responses' `max-age`, seconds (lowered when a feed changes by time sooner).
    pub feed_max_age: u64,
    pub feed_stale_while_revalidate: u64,
    pub feed_stale_if_error: u64,
    /// Memory for rendered feeds, bytes; rendered publications get a quarter
    /// of it more, and in cluster mode the feed documents delivered in the
    /// last minute a sixteenth more.
    pub feed_cache_bytes: u64,
    /// Take client addresses from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// How long in-flight requests and tasks get to finish on SIGTERM.
    pub shutdown_timeout_seconds: u64,
    /// `development`, `staging`, `production`: reported with errors.
    pub environment: String,
    /// FCM: path to the service-account JSON (its `project_id` and `token_uri` are used).
    pub fcm_credentials: Option<PathBuf>,
    /// FCM HTTP v1 base URL; an `http://` URL is spoken to in cleartext HTTP/2.
    pub fcm_endpoint: String,
    /// APNs: path to the .p8 signing key, its key id, the team id and the app's bundle id.
    pub apns_key: Option<PathBuf>,
    pub apns_key_id: Option<String>,
    pub apns_team_id: Option<String>,
    pub apns_topic: Option<String>,
    /// APNs development environment instead of production.
    pub apns_sandbox: bool,
    /// Web Push: path to the VAPID private key (P-256, PEM) and the contact URI.
    pub webpush_vapid_key: Option<PathBuf>,
    pub webpush_contact: String,
    /// Pushes carry only ids, no text: no content leaves the EU through Google or Apple.
    pub push_privacy: bool,
    pub push_ttl_seconds: u64,
    /// A normal publication whose notifications could not start within this is not notified.
    pub push_stale_after_seconds: u64,
    pub push_urgent_stale_after_seconds: u64,
    /// Messages per second, all providers together (FCM's quota: 10,000 per second per project).
    pub push_rate_per_second: u32,
    pub push_concurrency: usize,
    /// How long a notification job stays with an instance that stopped reporting.
    pub push_lease_seconds: u64,
    /// Accept Web Push endpoints on http://127.0.0.1 (tests with a local fake provider only).
    pub webpush_allow_loopback: bool,
    /// Where server errors and panics are reported (a Sentry DSN; a secret).
    pub sentry_dsn: Option<SecretString>,
    /// Data residency: the region of each place that stores user data, e.g.
    /// `fr-par` (Scaleway Paris) or `gra` (OVHcloud Gravelines). Checked by
    /// `panneau check-config`: every one must be in the European Union.
    pub database_region: Option<String>,
    pub nats_region: Option<String>,
    /// Where the secrets (database password, token pepper, push credentials,
    /// backup key) come from: `env`, `file` or `vault`.
    pub secrets: SecretsSource,
    pub secrets_dir: PathBuf,
    pub vault_addr: Option<String>,
    pub vault_role_id: Option<String>,
    pub vault_secret_id: Option<SecretString>,
    /// A file holding the AppRole secret id (preferred to the variable).
    pub vault_secret_id_file: Option<PathBuf>,
    pub vault_approle_mount: String,
    /// The KV v2 mount and the path of Panneau's secrets document in it.
    pub vault_mount: String,
    pub vault_path: String,
    /// S3 buckets the backups go to (file only: a TOML array of tables).
    #[serde(default)]
    pub backup_targets: Vec<BackupTarget>,
}

/// One S3 bucket the encrypted backups are copied to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupTarget {
    pub name: String,
    pub endpoint: String,
    pub region: String,
}

/// Regions of the providers Panneau deploys to that are in the European Union.
/// UK (`uk`, `eu-west-2`) and Switzerland (`eu-central-2`) are not.
pub const EU_REGIONS: &[&str] = &[
    // Scaleway
    "fr-par",
    "nl-ams",
    "pl-waw",
    // OVHcloud (public cloud and object storage names)
    "gra",
    "sbg",
    "rbx",
    "par",
    "waw",
    "de",
    "eu-west-gra",
    "eu-west-sbg",
    "eu-west-rbx",
    "eu-west-par",
    "eu-west-lim",
    "eu-central-waw",
    "eu-south-mil",
    // Generic S3-style EU names
    "eu-west-1",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
];

/// A place that stores user data outside the EU, or whose region is not declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencyProblem {
    pub setting: String,
    pub problem: String,
}

impl std::fmt::Display for ResidencyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

#[derive(Serialize)]
struct Defaults {
    http_addr: &'static str,
    ops_addr: &'static str,
    nats_replicas: usize,
    database_max_connections: u32,
    database_acquire_timeout_ms: u64,
    log_format: LogFormat,
    log_level: &'static str,
    feed_max_age: u64,
    feed_stale_while_revalidate: u64,
    feed_stale_if_error: u64,
    feed_cache_bytes: u64,
    trust_forwarded_for: bool,
    shutdown_timeout_seconds: u64,
    environment: &'static str,
    fcm_endpoint: &'static str,
    apns_sandbox: bool,
    webpush_contact: &'static str,
    push_privacy: bool,
    push_ttl_seconds: u64,
    push_stale_after_seconds: u64,
    push_urgent_stale_after_seconds: u64,
    push_rate_per_second: u32,
    push_concurrency: usize,
    push_lease_seconds: u64,
    webpush_allow_loopback: bool,
    secrets: SecretsSource,
    secrets_dir: &'static str,
    vault_approle_mount: &'static str,
    vault_mount: &'static str,
    vault_path: &'static str,
}

const DEFAULTS: Defaults = Defaults {
    http_addr: "127.0.0.1:8080",
    ops_addr: "127.0.0.1:9090",
    nats_replicas: 1,
    database_max_connections: 16,
    database_acquire_timeout_ms: 3_000,
    log_format: LogFormat::Auto,
    log_level: "info",
    feed_max_age: 30,
    feed_stale_while_revalidate: 60,
    feed_stale_if_error: 86_400,
    feed_cache_bytes: 512 * 1024 * 1024,
    trust_forwarded_for: false,
    shutdown_timeout_seconds: 20,
    environment: "development",
    fcm_endpoint: "https://fcm.googleapis.com",
    apns_sandbox: false,
    webpush_contact: "mailto:contact@panneau.invalid",
    push_privacy: false,
    push_ttl_seconds: 86_400,
    push_stale_after_seconds: 7_200,
    push_urgent_stale_after_seconds: 86_400,
    push_rate_per_second: 9_000,
    push_concurrency: 256,
    push_lease_seconds: 60,
    webpush_allow_loopback: false,
    secrets: SecretsSource::Env,
    secrets_dir: "/run/secrets/panneau",
    vault_approle_mount: "approle",
    vault_mount: "secret",
    vault_path: "panneau",
};

/// The embedded database used when no `database_url` is set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://panneau.db";

/// Where the data lives, decided from `database_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Embedded { sqlite_url: String },
    Cluster,
}

impl Config {
    /// The database URL in force (the embedded default when none is set).
    pub fn database_url(&self) -> String {
        self.database_url.as_ref().map_or_else(
            || DEFAULT_DATABASE_URL.to_owned(),
            |u| u.expose_secret().to_owned(),
        )
    }
}

/// A setting that is missing or wrong, named as the operator writes it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Read(Box<figment::Error>),
    #[error("{setting}: {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
}

impl Config {
    /// Reads the file named by `PANNEAU_CONFIG` (if any), then `PANNEAU_*` variables.
    ///
    /// # Errors
    /// `ConfigError` naming the setting at fault.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(DEFAULTS));
        if let Some(path) = std::env::var_os("PANNEAU_CONFIG") {
            figment = figment.merge(Toml::file_exact(PathBuf::from(path)));
        }
        figment = figment.merge(Env::prefixed("PANNEAU_").ignore(&["config"]));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Read(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// # Errors
    /// `Invalid` for values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, problem: &str| ConfigError::Invalid {
            setting,
            problem: problem.to_owned(),
        };
        if self.http_addr == self.ops_addr && self.http_addr.port() != 0 {
            return Err(invalid(
                "PANNEAU_OPS_ADDR",
                "must differ from PANNEAU_HTTP_ADDR",
            ));
        }
        if self.feed_cache_bytes < 1024 * 1024 {
            return Err(invalid(
                "PANNEAU_FEED_CACHE_BYTES",
                "at least 1048576 (1 MiB)",
            ));
        }
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("sqlite:")
                || url.starts_with("mysql://")
                || url.starts_with("mariadb://"))
            {
                return Err(invalid(
                    "PANNEAU_DATABASE_URL",
                    "expected sqlite://PATH or mysql://USER@HOST/DB",
                ));
            }
            if url.starts_with("sqlite:") && self.nats_url.is_some() {
                return Err(invalid(
                    "PANNEAU_NATS_URL",
                    "cluster mode needs a MariaDB PANNEAU_DATABASE_URL",
                ));
            }
        }
        if let Some(nats) = &self.nats_url
            && !(nats.starts_with("nats://") || nats.starts_with("tls://"))
        {
            return Err(invalid("PANNEAU_NATS_URL", "expected nats://HOST:PORT"));
        }
        Ok(())
    }

    /// Data residency: every endpoint that stores user data must be declared in an
    /// EU region. The embedded mode keeps its data in a local file, whose host
    /// the operator places.
    pub fn residency(&self) -> Vec<ResidencyProblem> {
        let mut problems = Vec::new();
        let mut check = |setting: String, region: Option<&str>| match region {
            None => problems.push(ResidencyProblem {
                setting,
                problem: "region not declared; user data must stay in the EU (e.g. fr-par, gra)"
                    .into(),
            }),
            Some(region) if !EU_REGIONS.contains(&region.trim().to_ascii_lowercase().as_str()) => {
                problems.push(ResidencyProblem {
                    setting,
                    problem: format!(
                        "region {region} is not an EU region Panneau knows ({})",
                        EU_REGIONS.join(", ")
                    ),
                });
            }
            Some(_) => {}
        };
        if self.mode() == Mode::Cluster {
            check(
                "PANNEAU_DATABASE_REGION".into(),
                self.database_region.as_deref(),
            );
            check("PANNEAU_NATS_REGION".into(), self.nats_region.as_deref());
        }
        for target in &self.backup_targets {
            check(
                format!("backup_targets.{}.region", target.name),
                Some(&target.region),
            );
        }
        problems
    }

    pub fn mode(&self) -> Mode {
        match &self.database_url {
            Some(url) if !url.expose_secret().starts_with("sqlite:") => Mode::Cluster,
            Some(url) => Mode::Embedded {
                sqlite_url: url.expose_secret().to_owned(),
            },
            None => Mode::Embedded {
                sqlite_url: DEFAULT_DATABASE_URL.to_owned(),
            },
        }
    }

    /// Defaults only (for tests and tools).
    pub fn defaults() -> Self {
        Figment::from(Serialized::defaults(DEFAULTS))
            .extract()
            .expect("the defaults are a valid configuration")
    }
}
