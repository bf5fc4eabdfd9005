//! Firebase Cloud Messaging, HTTP v1 API: a small client of our own (the `fcm`
//! crate speaks the legacy API Google shut down in July 2024).
//!
//! Authentication: OAuth2 access tokens for the service account in
//! `PANNEAU_FCM_CREDENTIALS`, obtained and cached until expiry by `gcp_auth`
//! (which honours the file's `token_uri`). Requests go to
//! `{PANNEAU_FCM_ENDPOINT}/v1/projects/{project_id}/messages:send` over HTTP/2;
//! an `http://` endpoint (a local fake provider) is spoken to in cleartext
//! HTTP/2 with prior knowledge.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gcp_auth::TokenProvider;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use super::{PushGateway, PushMessage, SendOutcome, retry_after, unanswered};
use crate::store::Target;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// The whole exchange, connection included; past it the outcome is unknown.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Past it no connection was made: nothing was sent, so it can be retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// FCM's answers are a few hundred bytes; an error body beyond this is cut.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why the FCM gateway cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("PANNEAU_FCM_CREDENTIALS: cannot read the service account ({0})")]
    Credentials(#[source] gcp_auth::Error),
    #[error("PANNEAU_FCM_CREDENTIALS: the service account has no project_id")]
    NoProject,
    #[error("cannot load the system's root certificates to reach FCM: {0}")]
    RootCertificates(#[source] std::io::Error),
    #[error("PANNEAU_FCM_ENDPOINT is not a valid URL: {0}")]
    Endpoint(#[source] http::uri::InvalidUri),
}

/// The FCM HTTP v1 gateway.
///
/// It speaks HTTP/2 through hyper-util's pooled client rather than reqwest:
/// per notification reqwest parsed the URL again from its redirect layer and
/// wrapped each request and answer, which cost more than the request itself at
/// fan-out rates (ADR 13).
pub struct FcmGateway {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Parsed once; a clone shares its bytes.
    uri: http::Uri,
    auth: Arc<dyn TokenProvider>,
}

impl std::fmt::Debug for FcmGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmGateway")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl FcmGateway {
    /// # Errors
    /// `FcmSetupError` naming what is wrong.
    pub fn new(credentials: &Path, endpoint: &str) -> Result<Self, FcmSetupError> {
        let account = gcp_auth::CustomServiceAccount::from_file(credentials)
            .map_err(FcmSetupError::Credentials)?;
        Self::with_account(account, endpoint)
    }

    /// The same, from the service-account JSON itself (a secret from Vault).
    ///
    /// # Errors
    /// `FcmSetupError` naming what is wrong.
    pub fn from_json(credentials: &str, endpoint: &str) -> Result<Self, FcmSetupError> {
        let account = gcp_auth::CustomServiceAccount::from_json(credentials)
            .map_err(FcmSetupError::Credentials)?;
        Self::with_account(account, endpoint)
    }

    fn with_account(
        account: gcp_auth::CustomServiceAccount,
        endpoint: &str,
    ) -> Result<Self, FcmSetupError> {
        let project = account
            .project_id()
            .ok_or(FcmSetupError::NoProject)?
            .to_owned();
        let endpoint = endpoint.trim_end_matches('/');
        let uri: http::Uri = format!("{endpoint}/v1/projects/{project}/messages:send")
            .parse()
            .map_err(FcmSetupError::Endpoint)?;
        let tls = if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            // A local fake provider, in cleartext: no certificate is ever checked.
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        } else {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(FcmSetupError::RootCertificates)?
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = tls.https_or_http().enable_http2().wrap_connector(tcp);
        // HTTP/2 only: TLS with ALPN h2 towards Google, prior knowledge in cleartext.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .pool_max_idle_per_host(8)
            .build(connector);
        Ok(Self {
            client,
            uri,
            auth: Arc::new(account),
        })
    }

    /// One exchange: the status, `Retry-After`, and the answer's body.
    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Option<Duration>, Bytes), Unanswered> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(Unanswered::Request)?;
        let status = response.status();
        let after = retry_after(response.headers());
        // Read to the end, success included, so the stream closes cleanly
        // rather than being reset.
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Ok((status, after, body))
    }
}

/// Why a request got no answer.
#[derive(Debug)]
enum Unanswered {
    Request(hyper_util::client::legacy::Error),
    TimedOut,
}

impl Unanswered {
    fn outcome(&self) -> SendOutcome {
        match self {
            Self::Request(error) => {
                // hyper-util's error says only "client error (Connect)": the cause is below.
                let mut reason = error.to_string();
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                unanswered("FCM", error.is_connect(), &reason)
            }
            Self::TimedOut => {
                let reason = format!("no answer within {} s", TIMEOUT.as_secs());
                unanswered("FCM", false, &reason)
            }
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    data: Data<'a>,
    android: Android<'a>,
    apns: Apns<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
}

#[derive(Serialize)]
struct Data<'a> {
    kind: &'static str,
    publication_id: &'a str,
}

#[derive(Serialize)]
struct Android<'a> {
    priority: &'static str,
    ttl: &'a str,
    collapse_key: &'a str,
}

#[derive(Serialize)]
struct Apns<'a> {
    headers: ApnsHeaders<'a>,
}

#[derive(Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-priority")]
    priority: &'static str,
    #[serde(rename = "apns-collapse-id")]
    collapse_id: &'a str,
    #[serde(rename = "apns-expiration")]
    expiration: &'a str,
}

#[derive(Serialize)]
struct Notification<'a> {
    title: &'a str,
    body: &'a str,
}

/// The v1 request body, as JSON. Urgent publications go at high priority; the
/// publication id is the collapse key; a TTL is set.
pub fn request_body(token: &str, message: &PushMessage) -> Vec<u8> {
    let ttl = message.ttl.as_secs();
    let expiration = crate::now().as_unix_micros() / 1_000_000 + i64::try_from(ttl).unwrap_or(0);
    let publication = message.collapse_key();
    let ttl = format!("{ttl}s");
    let expiration = expiration.to_string();
    let body = Body {
        message: Message {
            token,
            data: Data {
                kind: "publication",
                publication_id: &publication,
            },
            android: Android {
                priority: if message.urgent { "HIGH" } else { "NORMAL" },
                ttl: &ttl,
                collapse_key: &publication,
            },
            apns: Apns {
                headers: ApnsHeaders {
                    priority: if message.urgent { "10" } else { "5" },
                    collapse_id: &publication,
                    expiration: &expiration,
                },
            },
            notification: (!message.privacy).then_some(Notification {
                title: &message.title,
                body: &message.body,
            }),
        },
    };
    serde_json::to_vec(&body).expect("a body of strings always serializes")
}

/// What an FCM answer means, as Google documents it: `UNREGISTERED` (404) and
/// `SENDER_ID_MISMATCH` (403) disable the token; `INVALID_ARGUMENT` (400) only
/// when the error names the token (a payload bug must never wipe the audience);
/// 401 and 5xx never disable; 429 and 5xx are retried, honouring `Retry-After`.
pub fn interpret(status: u16, retry_after: Option<Duration>, body: &Value) -> SendOutcome {
    let error = &body["error"];
    let codes: Vec<&str> = error["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["errorCode"].as_str()).collect())
        .unwrap_or_default();
    let names_the_token = error["details"].as_array().is_some_and(|details| {
        details.iter().any(|d| {
            d["fieldViolations"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|f| f["field"].as_str() == Some("message.token"))
            })
        })
    }) || codes.contains(&"UNREGISTERED");
    let reason = || {
        format!(
            "FCM {status} {}",
            error["status"]
                .as_str()
                .or_else(|| codes.first().copied())
                .unwrap_or("")
        )
    };
    match status {
        200..=299 => SendOutcome::Delivered,
        404 if codes.contains(&"UNREGISTERED") || error["status"] == "NOT_FOUND" => {
            SendOutcome::InvalidToken {
                registered_before: None,
            }
        }
        403 if codes.contains(&"SENDER_ID_MISMATCH") => SendOutcome::InvalidToken {
            registered_before: None,
        },
        400 if names_the_token => SendOutcome::InvalidToken {
            registered_before: None,
        },
        // Our OAuth token was refused, or Google is unwell: never the device's fault.
        401 | 429 | 500..=599 => SendOutcome::Retry {
            after: retry_after,
            reason: reason(),
        },
        _ => SendOutcome::Failed { reason: reason() },
    }
}

#[async_trait]
impl PushGateway for FcmGateway {
    async fn send(&self, target: &Target, message: &PushMessage) -> SendOutcome {
        let access = match self.auth.token(&[SCOPE]).await {
            Ok(token) => token,
            Err(error) => {
                return SendOutcome::Retry {
                    after: Some(Duration::from_secs(5)),
                    reason: format!("cannot get an FCM access token: {error}"),
                };
            }
        };
        let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {}", access.as_str())) else {
            return SendOutcome::Retry {
                after: Some(Duration::from_secs(5)),
                reason: "the FCM access token is not a valid header value".to_owned(),
            };
        };
        // Never indexed by HPACK, never printed.
        bearer.set_sensitive(true);
        let mut request =
            http::Request::new(Full::new(Bytes::from(request_body(&target.token, message))));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, bearer);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let answered = tokio::time::timeout(TIMEOUT, self.exchange(request))
            .await
            .unwrap_or(Err(Unanswered::TimedOut));
        match answered {
            Ok((status, after, body)) => {
                // A success's body (the message name) tells nothing more.
                let body = if status.is_success() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or(Value::Null)
                };
                interpret(status.as_u16(), after, &body)
            }
            Err(unanswered) => unanswered.outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(status: &str, details: Value) -> Value {
        json!({"error": {"code": 0, "message": "…", "status": status, "details": details}})
    }

    #[test]
    fn unregistered_and_sender_mismatch_disable_the_token() {
        let unregistered = error(
            "NOT_FOUND",
            json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]),
        );
        assert_eq!(
            interpret(404, None, &unregistered),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
        let mismatch = error(
            "PERMISSION_DENIED",
            json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "SENDER_ID_MISMATCH"}]),
        );
        assert_eq!(
            interpret(403, None, &mismatch),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
    }

    #[test]
    fn invalid_argument_disables_only_when_it_names_the_token() {
        let bad_token = error(
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}]),
        );
        assert_eq!(
            interpret(400, None, &bad_token),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
        let bad_payload = error(
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.android.ttl", "description": "Invalid duration"}]}]),
        );
        assert!(matches!(
            interpret(400, None, &bad_payload),
            SendOutcome::Failed { .. }
        ));
        assert!(matches!(
            interpret(400, None, &error("INVALID_ARGUMENT", json!([]))),
            SendOutcome::Failed { .. }
        ));
    }

    #[test]
    fn quota_auth_and_server_errors_are_retried_never_disabled() {
        let after = Some(Duration::from_secs(7));
        for status in [401, 429, 500, 503] {
            match interpret(status, after, &error("X", json!([]))) {
                SendOutcome::Retry { after: a, .. } => assert_eq!(a, after, "{status}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        assert_eq!(
            interpret(200, None, &json!({"name": "projects/p/messages/1"})),
            SendOutcome::Delivered
        );
    }

    #[test]
    fn urgent_messages_go_at_high_priority_with_collapse_key_and_ttl() {
        let message = PushMessage {
            publication: panneau_domain::PublicationId::parse(
                "01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69",
            )
            .unwrap(),
            title: "Alerte".into(),
            body: "Orages".into(),
            urgent: true,
            privacy: false,
            ttl: Duration::from_secs(3600),
        };
        let body: Value = serde_json::from_slice(&request_body("tok", &message)).unwrap();
        assert_eq!(body["message"]["android"]["priority"], "HIGH");
        assert_eq!(body["message"]["android"]["ttl"], "3600s");
        assert_eq!(
            body["message"]["android"]["collapse_key"],
            "01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69"
        );
        assert_eq!(body["message"]["apns"]["headers"]["apns-priority"], "10");
        assert_eq!(body["message"]["notification"]["title"], "Alerte");
        let private: Value = serde_json::from_slice(&request_body(
            "tok",
            &PushMessage {
                privacy: true,
                urgent: false,
                ..message
            },
        ))
        .unwrap();
        assert!(
            private["message"].get("notification").is_none(),
            "no text in privacy mode"
        );
        assert_eq!(private["message"]["android"]["priority"], "NORMAL");
        assert_eq!(
            private["message"]["data"]["publication_id"],
            "01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69"
        );
    }
}
