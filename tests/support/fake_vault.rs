//! A stand-in for HashiCorp Vault: a real HTTP server answering the endpoints
//! Panneau uses (AppRole login, token renew-self, KV v2 read) with bodies shaped
//! as Vault documents them, and able to go down and come back.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

struct Inner {
    role_id: String,
    secret_id: String,
    lease_seconds: u64,
    secrets: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Tokens issued, with the instant their lease ends.
    tokens: Mutex<HashMap<String, std::time::Instant>>,
    logins: AtomicU64,
    renewals: AtomicU64,
}

/// A running stand-in.
pub struct FakeVault {
    pub address: SocketAddr,
    inner: Arc<Inner>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn envelope(auth: Value, data: Value) -> Value {
    json!({
        "request_id": "00000000-0000-0000-0000-000000000000",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
    })
}

fn errors(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"errors": [message]}))).into_response()
}

fn auth(token: &str, lease: u64) -> Value {
    json!({
        "client_token": token,
        "accessor": "accessor",
        "policies": ["default", "panneau"],
        "token_policies": ["default", "panneau"],
        "metadata": {"role_name": "panneau"},
        "lease_duration": lease,
        "renewable": true,
        "entity_id": "entity",
        "token_type": "service",
        "orphan": true,
    })
}

async fn login(
    State(inner): State<Arc<Inner>>,
    Path(_mount): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // Vault reads the body as JSON whatever its content type.
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, "failed to parse JSON input");
    };
    if body["role_id"] != inner.role_id.as_str() || body["secret_id"] != inner.secret_id.as_str() {
        return errors(StatusCode::BAD_REQUEST, "invalid role or secret ID");
    }
    let n = inner.logins.fetch_add(1, Ordering::Relaxed);
    let token = format!("hvs.fake-token-{n}");
    inner
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), lease_end(inner.lease_seconds));
    axum::Json(envelope(auth(&token, inner.lease_seconds), Value::Null)).into_response()
}

fn lease_end(seconds: u64) -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(seconds)
}

/// The request's token, if Vault issued it and its lease has not ended (Vault
/// answers 403 to an expired token, as to an unknown one).
fn token_of(inner: &Inner, headers: &HeaderMap) -> Option<String> {
    let token = headers.get("x-vault-token")?.to_str().ok()?.to_owned();
    let tokens = inner.tokens.lock().unwrap();
    let alive = tokens
        .get(&token)
        .is_some_and(|end| *end > std::time::Instant::now());
    alive.then_some(token)
}

async fn renew_self(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let Some(token) = token_of(&inner, &headers) else {
        return errors(StatusCode::FORBIDDEN, "permission denied");
    };
    inner.renewals.fetch_add(1, Ordering::Relaxed);
    inner
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), lease_end(inner.lease_seconds));
    axum::Json(envelope(auth(&token, inner.lease_seconds), Value::Null)).into_response()
}

async fn kv_read(
    State(inner): State<Arc<Inner>>,
    Path((_mount, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if token_of(&inner, &headers).is_none() {
        return errors(StatusCode::FORBIDDEN, "permission denied");
    }
    let secrets = inner.secrets.lock().unwrap();
    let Some(document) = secrets.get(&path) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"errors": []}))).into_response();
    };
    let data = json!({
        "data": document,
        "metadata": {
            "created_time": "2026-11-28T09:00:00.000000000Z",
            "custom_metadata": null,
            "deletion_time": "",
            "destroyed": false,
            "version": 1,
        },
    });
    axum::Json(envelope(Value::Null, data)).into_response()
}

impl FakeVault {
    /// A Vault whose KV document `path` holds `secrets`, issuing tokens that
    /// live `lease_seconds`.
    pub async fn start(path: &str, secrets: &[(&str, &str)], lease_seconds: u64) -> Self {
        let mut documents = HashMap::new();
        documents.insert(
            path.to_owned(),
            secrets
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let inner = Arc::new(Inner {
            role_id: "panneau-role".into(),
            secret_id: "s3cr3t-approle-secret-id".into(),
            lease_seconds,
            secrets: Mutex::new(documents),
            tokens: Mutex::new(HashMap::new()),
            logins: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut vault = Self {
            address,
            inner,
            server: None,
        };
        vault.serve(listener);
        vault
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/v1/auth/{mount}/login", post(login))
            .route("/v1/auth/token/renew-self", post(renew_self))
            .route("/v1/{mount}/data/{path}", get(kv_read))
            .with_state(self.inner.clone());
        self.server = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn role_id(&self) -> &str {
        &self.inner.role_id
    }

    pub fn secret_id(&self) -> &str {
        &self.inner.secret_id
    }

    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    /// Vault becomes unreachable (connections refused).
    pub fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Vault comes back on the same address.
    pub async fn come_back(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.go_down();
    }
}
