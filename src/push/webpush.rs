//! Web Push (RFC 8030) with VAPID (RFC 8292) and payload encryption (RFC 8291),
//! built with `web-push-native` and sent with our HTTP client.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use web_push_native::jwt_simple::algorithms::ES256KeyPair;
use web_push_native::{Auth, WebPushBuilder};

use super::{PushGateway, PushMessage, SendOutcome, retry_after, unsent_or_unknown};
use crate::store::Target;
use crate::subscription::{Endpoints, WebPushSubscription};

/// Why the Web Push gateway cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebPushSetupError {
    #[error("PANNEAU_WEBPUSH_VAPID_KEY: cannot read {0}")]
    Key(String),
    #[error("PANNEAU_WEBPUSH_VAPID_KEY: not a P-256 private key in PEM")]
    BadKey,
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The Web Push gateway.
pub struct WebPushGateway {
    client: reqwest::Client,
    vapid: ES256KeyPair,
    contact: String,
    endpoints: Endpoints,
}

impl std::fmt::Debug for WebPushGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushGateway")
            .field("contact", &self.contact)
            .finish_non_exhaustive()
    }
}

impl WebPushGateway {
    /// # Errors
    /// `WebPushSetupError` when the VAPID key is missing or unusable.
    pub fn new(
        vapid_key: &Path,
        contact: &str,
        endpoints: Endpoints,
    ) -> Result<Self, WebPushSetupError> {
        let pem = std::fs::read_to_string(vapid_key)
            .map_err(|e| WebPushSetupError::Key(format!("{}: {e}", vapid_key.display())))?;
        Self::from_pem(&pem, contact, endpoints)
    }

    /// The same, from the key itself (a secret from Vault).
    ///
    /// # Errors
    /// `WebPushSetupError` when the key is unusable.
    pub fn from_pem(
        pem: &str,
        contact: &str,
        endpoints: Endpoints,
    ) -> Result<Self, WebPushSetupError> {
        let vapid = ES256KeyPair::from_pem(pem).map_err(|_| WebPushSetupError::BadKey)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(WebPushSetupError::Client)?;
        Ok(Self {
            client,
            vapid,
            contact: contact.to_owned(),
            endpoints,
        })
    }
}

/// The encrypted payload: ids only in privacy mode, text otherwise.
pub fn payload(message: &PushMessage) -> Vec<u8> {
    let body = if message.privacy {
        serde_json::json!({"kind": "publication", "publication_id": message.publication.to_string()})
    } else {
        serde_json::json!({
            "kind": "publication",
            "publication_id": message.publication.to_string(),
            "title": message.title,
            "body": message.body,
        })
    };
    serde_json::to_vec(&body).expect("JSON serialises")
}

/// What a push service's answer means (RFC 8030 and the services' documentation):
/// 404 and 410 mean the subscription is gone; 429 and 5xx are retried; the rest
/// is a problem of ours.
pub fn interpret(status: u16, retry_after: Option<Duration>) -> SendOutcome {
    match status {
        200..=299 => SendOutcome::Delivered,
        404 | 410 => SendOutcome::InvalidToken {
            registered_before: None,
        },
        429 | 500..=599 => SendOutcome::Retry {
            after: retry_after,
            reason: format!("push service answered {status}"),
        },
        _ => SendOutcome::Failed {
            reason: format!("push service answered {status}"),
        },
    }
}

#[async_trait]
impl PushGateway for WebPushGateway {
    async fn send(&self, target: &Target, message: &PushMessage) -> SendOutcome {
        let subscription = match WebPushSubscription::parse(&target.token, self.endpoints) {
            Ok(subscription) => subscription,
            Err(_) => {
                return SendOutcome::InvalidToken {
                    registered_before: None,
                };
            }
        };
        let Ok(endpoint) = subscription.endpoint.parse::<http::Uri>() else {
            return SendOutcome::InvalidToken {
                registered_before: None,
            };
        };
        let request =
            WebPushBuilder::new(endpoint, subscription.p256dh, Auth::from(subscription.auth))
                .with_valid_duration(message.ttl)
                .with_vapid(&self.vapid, &self.contact)
                .build(payload(message));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                return SendOutcome::Failed {
                    reason: format!("cannot build the Web Push request: {error}"),
                };
            }
        };
        let (parts, body) = request.into_parts();
        let mut outgoing = self
            .client
            .post(parts.uri.to_string())
            .headers(parts.headers)
            .header("Urgency", if message.urgent { "high" } else { "normal" })
            .header("Topic", message.publication.as_uuid().simple().to_string());
        outgoing = outgoing.body(body);
        match outgoing.send().await {
            Ok(response) => interpret(response.status().as_u16(), retry_after(response.headers())),
            Err(error) => unsent_or_unknown("push service", &error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_subscriptions_are_disabled_and_throttling_retried() {
        assert_eq!(interpret(201, None), SendOutcome::Delivered);
        assert_eq!(
            interpret(410, None),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
        assert_eq!(
            interpret(404, None),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
        assert!(matches!(
            interpret(429, Some(Duration::from_secs(2))),
            SendOutcome::Retry { after: Some(_), .. }
        ));
        assert!(matches!(interpret(413, None), SendOutcome::Failed { .. }));
    }
}
