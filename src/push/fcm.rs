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
use gcp_auth::TokenProvider;
use serde_json::{Value, json};

use super::{PushGateway, PushMessage, SendOutcome, retry_after, unsent_or_unknown};
use crate::store::Target;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";

/// Why the FCM gateway cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("PANNEAU_FCM_CREDENTIALS: cannot read the service account ({0})")]
    Credentials(#[source] gcp_auth::Error),
    #[error("PANNEAU_FCM_CREDENTIALS: the service account has no project_id")]
    NoProject,
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("PANNEAU_FCM_ENDPOINT is not a valid URL: {0}")]
    Endpoint(#[source] url::ParseError),
}

/// The FCM HTTP v1 gateway.
pub struct FcmGateway {
    client: reqwest::Client,
    /// Parsed once: parsing it for every send cost more than building the body.
    url: reqwest::Url,
    auth: Arc<dyn TokenProvider>,
}

impl std::fmt::Debug for FcmGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmGateway")
            .field("url", &self.url)
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
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(8)
            .http2_adaptive_window(true);
        if endpoint.starts_with("http://") {
            client = client.http2_prior_knowledge();
        }
        Ok(Self {
            client: client.build().map_err(FcmSetupError::Client)?,
            url: reqwest::Url::parse(&format!("{endpoint}/v1/projects/{project}/messages:send"))
                .map_err(FcmSetupError::Endpoint)?,
            auth: Arc::new(account),
        })
    }
}

/// The v1 request body. Urgent publications go at high priority; the
/// publication id is the collapse key; a TTL is set.
pub fn request_body(token: &str, message: &PushMessage) -> Value {
    let ttl = message.ttl.as_secs();
    let expiration = crate::now().as_unix_micros() / 1_000_000 + i64::try_from(ttl).unwrap_or(0);
    let mut body = json!({
        "message": {
            "token": token,
            "data": {
                "kind": "publication",
                "publication_id": message.publication.to_string(),
            },
            "android": {
                "priority": if message.urgent { "HIGH" } else { "NORMAL" },
                "ttl": format!("{ttl}s"),
                "collapse_key": message.collapse_key(),
            },
            "apns": {
                "headers": {
                    "apns-priority": if message.urgent { "10" } else { "5" },
                    "apns-collapse-id": message.collapse_key(),
                    "apns-expiration": expiration.to_string(),
                }
            }
        }
    });
    if !message.privacy {
        body["message"]["notification"] = json!({"title": message.title, "body": message.body});
    }
    body
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
        let response = self
            .client
            .post(self.url.clone())
            .bearer_auth(access.as_str())
            .json(&request_body(&target.token, message))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return unsent_or_unknown("FCM", &error),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        interpret(status, after, &body)
    }
}

#[cfg(test)]
mod tests {
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
        let body = request_body("tok", &message);
        assert_eq!(body["message"]["android"]["priority"], "HIGH");
        assert_eq!(body["message"]["android"]["ttl"], "3600s");
        assert_eq!(
            body["message"]["android"]["collapse_key"],
            "01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69"
        );
        assert_eq!(body["message"]["apns"]["headers"]["apns-priority"], "10");
        assert_eq!(body["message"]["notification"]["title"], "Alerte");
        let private = request_body(
            "tok",
            &PushMessage {
                privacy: true,
                urgent: false,
                ..message
            },
        );
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
