//! A fake push provider for tests and benchmarks: a real HTTP server (HTTP/1.1
//! and cleartext HTTP/2) that speaks the FCM HTTP v1 protocol (with its OAuth2
//! token endpoint) and Web Push, answers with scripted successes and failures,
//! and records what it received.
//!
//! Scripts, by token prefix: `unregistered-` (404 UNREGISTERED), `mismatch-`
//! (403 SENDER_ID_MISMATCH), `badtoken-` (400 INVALID_ARGUMENT naming the
//! token), `badpayload-` (400 INVALID_ARGUMENT naming another field), `slow-`
//! (answers after 300 ms). Globally: a number of 429s with `Retry-After` (a
//! storm) and of 503s to answer before succeeding. Web Push: an endpoint path
//! starting with `gone-` answers 410.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One notification the provider accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub platform: &'static str,
    pub token: String,
    pub publication: String,
    pub priority: String,
    pub collapse_key: String,
    pub ttl: String,
    /// The notification carried a title or body (not privacy mode).
    pub has_text: bool,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    /// Only counts, to keep memory flat in benchmarks.
    accepted: AtomicU64,
    requests: AtomicU64,
    tokens_issued: AtomicU64,
    storm: AtomicU64,
    unavailable: AtomicU64,
    record: bool,
}

/// A running fake provider.
#[derive(Clone)]
pub struct FakePush {
    pub url: String,
    inner: Arc<Inner>,
}

fn fcm_error(status: StatusCode, name: &str, details: Value) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": name, "status": name, "details": details}});
    (status, axum::Json(body)).into_response()
}

async fn token(State(inner): State<Arc<Inner>>, body: String) -> Response {
    if !body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
        || !body.contains("assertion=")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let n = inner.tokens_issued.fetch_add(1, Ordering::Relaxed);
    axum::Json(json!({"access_token": format!("fake-access-{n}"), "expires_in": 3600, "token_type": "Bearer"}))
        .into_response()
}

async fn fcm_send(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.requests.fetch_add(1, Ordering::Relaxed);
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer fake-access-"));
    if !authorised {
        return fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", json!([]));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", json!([]));
    };
    let message = &body["message"];
    let token = message["token"].as_str().unwrap_or_default().to_owned();
    if inner
        .storm
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut response = fcm_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            json!([
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}
            ]),
        );
        response
            .headers_mut()
            .insert("retry-after", "1".parse().unwrap());
        return response;
    }
    if inner
        .unavailable
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        return fcm_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", json!([]));
    }
    let fcm = |code: &str| json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]);
    if token.starts_with("unregistered-") {
        return fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", fcm("UNREGISTERED"));
    }
    if token.starts_with("mismatch-") {
        return fcm_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            fcm("SENDER_ID_MISMATCH"),
        );
    }
    if token.starts_with("badtoken-") {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            json!([
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}
            ]),
        );
    }
    if token.starts_with("badpayload-") {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            json!([
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.android.ttl", "description": "Invalid duration"}]}
            ]),
        );
    }
    if token.starts_with("slow-") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let n = inner.accepted.fetch_add(1, Ordering::Relaxed);
    if inner.record {
        inner.received.lock().unwrap().push(Received {
            platform: "fcm",
            token,
            publication: message["data"]["publication_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            priority: message["android"]["priority"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            collapse_key: message["android"]["collapse_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ttl: message["android"]["ttl"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            has_text: message.get("notification").is_some(),
            body: body.clone(),
        });
    }
    axum::Json(json!({"name": format!("projects/fake/messages/{n}")})).into_response()
}

async fn webpush(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let vapid = header("authorization");
    if !vapid.starts_with("vapid t=")
        || header("content-encoding") != "aes128gcm"
        || header("ttl").is_empty()
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if id.starts_with("gone-") {
        return StatusCode::GONE.into_response();
    }
    inner.accepted.fetch_add(1, Ordering::Relaxed);
    if inner.record {
        inner.received.lock().unwrap().push(Received {
            platform: "webpush",
            token: id,
            publication: String::new(),
            priority: header("urgency"),
            collapse_key: header("topic"),
            ttl: header("ttl"),
            // The payload is encrypted: the provider cannot read it.
            has_text: body.windows(5).any(|w| w == b"title"),
            body: Value::Null,
        });
    }
    StatusCode::CREATED.into_response()
}

async fn stats(State(inner): State<Arc<Inner>>) -> Response {
    axum::Json(json!({
        "accepted": inner.accepted.load(Ordering::Relaxed),
        "requests": inner.requests.load(Ordering::Relaxed),
        "tokens_issued": inner.tokens_issued.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// Every recorded delivery, as `[[token, publication], …]` (when recording).
async fn received(State(inner): State<Arc<Inner>>) -> Response {
    let received = inner.received.lock().unwrap();
    let pairs: Vec<[&str; 2]> = received
        .iter()
        .map(|r| [r.token.as_str(), r.publication.as_str()])
        .collect();
    axum::Json(json!(pairs)).into_response()
}

impl FakePush {
    /// Starts on a random loopback port; `record` keeps every message (tests)
    /// or only counts them (benchmarks).
    pub async fn start(record: bool) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), record).await
    }

    pub async fn start_on(address: SocketAddr, record: bool) -> Self {
        let inner = Arc::new(Inner {
            record,
            ..Inner::default()
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/messages:send", post(fcm_send))
            .route("/webpush/{id}", post(webpush))
            .route("/stats", get(stats))
            .route("/received", get(received))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            // Without TCP_NODELAY, small HTTP/2 frames wait for delayed ACKs (40 ms).
            let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
                let _ = stream.set_nodelay(true);
            });
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, inner }
    }

    /// The next `n` FCM requests get 429 with `Retry-After: 1`.
    pub fn storm(&self, n: u64) {
        self.inner.storm.store(n, Ordering::Relaxed);
    }

    /// The next `n` FCM requests get 503.
    pub fn unavailable(&self, n: u64) {
        self.inner.unavailable.store(n, Ordering::Relaxed);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    pub fn tokens_issued(&self) -> u64 {
        self.inner.tokens_issued.load(Ordering::Relaxed)
    }

    /// How many times each (token, publication) pair was received.
    pub fn deliveries(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for r in self.received() {
            *counts.entry((r.token, r.publication)).or_default() += 1;
        }
        counts
    }

    /// A service-account file whose `token_uri` is this provider, with a fresh RSA key.
    pub fn service_account(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let key = dir.join("fcm-key.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is required to make a test service account");
        assert!(status.success());
        let account = json!({
            "type": "service_account",
            "project_id": "panneau-test",
            "private_key_id": "test",
            "private_key": std::fs::read_to_string(&key).unwrap(),
            "client_email": "fcm@panneau-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", self.url),
        });
        let path = dir.join("service-account.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&account).unwrap()).unwrap();
        path
    }

    /// A VAPID key (P-256, PKCS#8 PEM).
    pub fn vapid_key(dir: &std::path::Path) -> std::path::PathBuf {
        let key = dir.join("vapid.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is required to make a VAPID key");
        assert!(status.success());
        key
    }
}
