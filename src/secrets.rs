//! Where secrets come from: HashiCorp Vault in production (AppRole login, KV v2,
//! token renewal before expiry), environment variables or files in development.
//!
//! Secrets are held as `SecretString`, which cannot be printed by accident, and
//! never appear in logs, errors or metrics: only their names do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};

use crate::config::{Config, SecretsSource};
use crate::metrics::Metrics;

/// The secrets Panneau uses, by name (the key in Vault's KV document, the file
/// name, or the suffix of `PANNEAU_SECRET_`).
pub const NAMES: [&str; 6] = [
    "database_password",
    "token_pepper",
    "fcm_credentials",
    "apns_key",
    "webpush_vapid_key",
    "backup_key",
];

/// Why secrets cannot be read. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Vault at {address} cannot be reached or answered badly: {reason}")]
    Unavailable { address: String, reason: String },
    #[error("Vault refused the AppRole login (check PANNEAU_VAULT_ROLE_ID and the secret id)")]
    LoginRefused,
    #[error("the secret {0} is required but missing")]
    Missing(&'static str),
    #[error("cannot read the secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{setting} is required with PANNEAU_SECRETS=vault")]
    Setting { setting: &'static str },
}

/// A source of secrets.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret called `name`, if the source has it.
    ///
    /// # Errors
    /// `SecretError` when the source cannot be read.
    async fn get(&self, name: &str) -> Result<Option<SecretString>, SecretError>;
}

/// `PANNEAU_SECRET_<NAME>` variables (development).
#[derive(Debug, Default)]
pub struct EnvSecrets;

#[async_trait]
impl SecretSource for EnvSecrets {
    async fn get(&self, name: &str) -> Result<Option<SecretString>, SecretError> {
        let variable = format!("PANNEAU_SECRET_{}", name.to_ascii_uppercase());
        Ok(std::env::var(variable)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from))
    }
}

/// One file per secret in a directory (Docker and Kubernetes secrets).
#[derive(Debug)]
pub struct FileSecrets {
    pub dir: PathBuf,
}

#[async_trait]
impl SecretSource for FileSecrets {
    async fn get(&self, name: &str) -> Result<Option<SecretString>, SecretError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(SecretString::from(
                text.trim_end_matches('\n').to_owned(),
            ))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SecretError::File {
                path: path.display().to_string(),
                reason: error.kind().to_string(),
            }),
        }
    }
}

/// HashiCorp Vault: AppRole login, one KV v2 document holding Panneau's secrets,
/// and a token renewed before it expires.
pub struct VaultSecrets {
    client: tokio::sync::RwLock<VaultClient>,
    address: String,
    approle_mount: String,
    role_id: String,
    secret_id: SecretString,
    mount: String,
    path: String,
    /// The token's expiry (Unix seconds) and the length of its lease (seconds).
    lease: Mutex<(f64, f64)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for VaultSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSecrets")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A Vault client error, described without anything it may carry.
fn describe(error: &vaultrs::error::ClientError) -> String {
    match error {
        vaultrs::error::ClientError::APIError { code, .. } => format!("HTTP {code}"),
        vaultrs::error::ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => format!("HTTP {code}"),
        vaultrs::error::ClientError::RestClientError { .. } => "connection failed".into(),
        _ => "unexpected answer".into(),
    }
}

impl VaultSecrets {
    /// Logs in with AppRole.
    ///
    /// # Errors
    /// `Setting` for missing settings, `LoginRefused`, `Unavailable`.
    pub async fn login(config: &Config, metrics: Arc<Metrics>) -> Result<Self, SecretError> {
        let address = config.vault_addr.clone().ok_or(SecretError::Setting {
            setting: "PANNEAU_VAULT_ADDR",
        })?;
        let role_id = config.vault_role_id.clone().ok_or(SecretError::Setting {
            setting: "PANNEAU_VAULT_ROLE_ID",
        })?;
        let secret_id = match (&config.vault_secret_id, &config.vault_secret_id_file) {
            (Some(id), _) => id.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|s| SecretString::from(s.trim().to_owned()))
                .map_err(|e| SecretError::File {
                    path: file.display().to_string(),
                    reason: e.kind().to_string(),
                })?,
            (None, None) => {
                return Err(SecretError::Setting {
                    setting: "PANNEAU_VAULT_SECRET_ID_FILE",
                });
            }
        };
        let settings = VaultClientSettingsBuilder::default()
            .address(&address)
            .timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|_| SecretError::Setting {
                setting: "PANNEAU_VAULT_ADDR",
            })?;
        let client = VaultClient::new(settings).map_err(|e| SecretError::Unavailable {
            address: address.clone(),
            reason: describe(&e),
        })?;
        let vault = Self {
            client: tokio::sync::RwLock::new(client),
            address,
            approle_mount: config.vault_approle_mount.clone(),
            role_id,
            secret_id,
            mount: config.vault_mount.clone(),
            path: config.vault_path.clone(),
            lease: Mutex::new((0.0, 0.0)),
            metrics,
        };
        vault.authenticate().await?;
        Ok(vault)
    }

    async fn authenticate(&self) -> Result<(), SecretError> {
        let mut client = self.client.write().await;
        let auth = vaultrs::auth::approle::login(
            &*client,
            &self.approle_mount,
            &self.role_id,
            self.secret_id.expose_secret(),
        )
        .await
        .map_err(|e| match e {
            vaultrs::error::ClientError::APIError {
                code: 400 | 403, ..
            } => SecretError::LoginRefused,
            other => SecretError::Unavailable {
                address: self.address.clone(),
                reason: describe(&other),
            },
        })?;
        client.set_token(&auth.client_token);
        self.set_expiry(auth.lease_duration);
        Ok(())
    }

    fn set_expiry(&self, lease_seconds: u64) {
        let at = unix_now() + lease_seconds as f64;
        *self.lease.lock().expect("lease lock poisoned") = (at, lease_seconds as f64);
        self.metrics.vault_token_expiry.set(at);
    }

    fn seconds_left(&self) -> f64 {
        self.lease.lock().expect("lease lock poisoned").0 - unix_now()
    }

    /// Renew when less than a third of the lease is left.
    fn renew_threshold(&self) -> f64 {
        self.lease.lock().expect("lease lock poisoned").1 / 3.0
    }

    /// Renews the token when a third of its lease is left (logging in again once
    /// it has expired), until `shutdown`. While Vault is down the instance keeps
    /// running with the secrets it read at start; the expiry metric lets
    /// Alertmanager warn before the token runs out.
    pub async fn keep_renewed(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let spare = self.seconds_left() - self.renew_threshold();
            let wait = Duration::from_secs_f64(spare.clamp(0.5, 60.0));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if self.seconds_left() > self.renew_threshold() {
                continue;
            }
            let renewed = {
                let client = self.client.read().await;
                vaultrs::token::renew_self(&*client, None).await
            };
            match renewed {
                Ok(auth) => {
                    self.set_expiry(auth.lease_duration);
                    tracing::debug!(lease_seconds = auth.lease_duration, "Vault token renewed");
                }
                Err(error) if self.seconds_left() <= 0.0 => match self.authenticate().await {
                    Ok(()) => tracing::info!("logged in to Vault again"),
                    Err(login) => {
                        tracing::error!(error = %login, renewal = %describe(&error), "Vault token expired and login failed")
                    }
                },
                Err(error) => {
                    tracing::error!(reason = %describe(&error), seconds_left = self.seconds_left(), "cannot renew the Vault token");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    }
}

#[async_trait]
impl SecretSource for VaultSecrets {
    async fn get(&self, name: &str) -> Result<Option<SecretString>, SecretError> {
        let client = self.client.read().await;
        let document: Result<HashMap<String, String>, _> =
            vaultrs::kv2::read(&*client, &self.mount, &self.path).await;
        match document {
            Ok(mut document) => Ok(document.remove(name).map(SecretString::from)),
            Err(vaultrs::error::ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(error) => Err(SecretError::Unavailable {
                address: self.address.clone(),
                reason: describe(&error),
            }),
        }
    }
}

/// The secrets read at start.
#[derive(Default)]
pub struct Secrets {
    values: HashMap<&'static str, SecretString>,
    /// Kept to renew its token, when the source is Vault.
    pub vault: Option<Arc<VaultSecrets>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.values.keys().collect();
        f.debug_struct("Secrets").field("present", &names).finish()
    }
}

impl Secrets {
    /// Reads every known secret from the configured source. With Vault, an
    /// unreachable Vault or a refused login stops the start with a clear error.
    ///
    /// # Errors
    /// `SecretError`.
    pub async fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Self, SecretError> {
        let (source, vault): (Box<dyn SecretSource>, Option<Arc<VaultSecrets>>) =
            match config.secrets {
                SecretsSource::Env => (Box::new(EnvSecrets), None),
                SecretsSource::File => (
                    Box::new(FileSecrets {
                        dir: config.secrets_dir.clone(),
                    }),
                    None,
                ),
                SecretsSource::Vault => {
                    let vault = Arc::new(VaultSecrets::login(config, metrics).await?);
                    (Box::new(VaultRef(vault.clone())), Some(vault))
                }
            };
        let mut values = HashMap::new();
        for name in NAMES {
            if let Some(value) = source.get(name).await? {
                values.insert(name, value);
            }
        }
        let secrets = Self { values, vault };
        if config.secrets == SecretsSource::Vault && config.mode() == crate::config::Mode::Cluster {
            secrets.require("database_password")?;
        }
        Ok(secrets)
    }

    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.values.get(name)
    }

    /// # Errors
    /// `Missing` when the secret is absent.
    pub fn require(&self, name: &'static str) -> Result<&SecretString, SecretError> {
        self.values.get(name).ok_or(SecretError::Missing(name))
    }

    /// The database URL with the password from the secrets, if there is one.
    pub fn database_url(&self, url: &str) -> String {
        let Some(password) = self.get("database_password") else {
            return url.to_owned();
        };
        match url::Url::parse(url) {
            Ok(mut parsed) if !url.starts_with("sqlite:") => {
                if parsed.set_password(Some(password.expose_secret())).is_err() {
                    return url.to_owned();
                }
                parsed.to_string()
            }
            _ => url.to_owned(),
        }
    }
}

struct VaultRef(Arc<VaultSecrets>);

#[async_trait]
impl SecretSource for VaultRef {
    async fn get(&self, name: &str) -> Result<Option<SecretString>, SecretError> {
        self.0.get(name).await
    }
}
