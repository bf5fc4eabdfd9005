//! Apple Push Notification service through `a2`, with token (.p8) authentication.
//! `a2` signs the provider JWT once and reuses it for 55 minutes (Apple accepts
//! 20 to 60).
//!
//! `a2` cannot be aimed at a local server, so the tests cover everything above
//! the client and [`interpret`], the mapping of Apple's answers.

use std::path::Path;

use a2::request::notification::{
    DefaultNotificationBuilder, NotificationBuilder, NotificationOptions,
};
use a2::{ClientConfig, CollapseId, Endpoint, ErrorReason, Priority, Response};
use async_trait::async_trait;
use panneau_domain::Timestamp;

use super::{PushGateway, PushMessage, SendOutcome};
use crate::store::Target;

/// Why the APNs gateway cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    #[error("PANNEAU_APNS_KEY: cannot read {0}")]
    Key(String),
    #[error("PANNEAU_APNS_KEY: not a usable .p8 key ({0})")]
    Client(#[source] a2::Error),
}

/// The APNs gateway.
pub struct ApnsGateway {
    client: a2::Client,
    topic: String,
}

impl std::fmt::Debug for ApnsGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsGateway")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ApnsGateway {
    /// # Errors
    /// `ApnsSetupError` when the key cannot be read or used.
    pub fn new(
        key: &Path,
        key_id: &str,
        team_id: &str,
        topic: &str,
        sandbox: bool,
    ) -> Result<Self, ApnsSetupError> {
        let pem = std::fs::read(key)
            .map_err(|e| ApnsSetupError::Key(format!("{}: {e}", key.display())))?;
        Self::from_pem(&pem, key_id, team_id, topic, sandbox)
    }

    /// The same, from the key itself (a secret from Vault).
    ///
    /// # Errors
    /// `ApnsSetupError` when the key cannot be used.
    pub fn from_pem(
        pem: &[u8],
        key_id: &str,
        team_id: &str,
        topic: &str,
        sandbox: bool,
    ) -> Result<Self, ApnsSetupError> {
        let endpoint = if sandbox {
            Endpoint::Sandbox
        } else {
            Endpoint::Production
        };
        let client = a2::Client::token(pem, key_id, team_id, ClientConfig::new(endpoint))
            .map_err(ApnsSetupError::Client)?;
        Ok(Self {
            client,
            topic: topic.to_owned(),
        })
    }
}

/// What an APNs answer means, as Apple documents it: 410 `Unregistered` disables
/// the token only if it was registered before Apple's timestamp; a malformed or
/// foreign token (`BadDeviceToken`, `DeviceTokenNotForTopic`) is disabled; 429
/// and 5xx are retried; provider-token and payload problems are ours, never the
/// device's.
pub fn interpret(response: &Response) -> SendOutcome {
    let reason = response.error.as_ref().map(|e| &e.reason);
    let describe = || format!("APNs {} {:?}", response.code, reason);
    match (response.code, reason) {
        (200, _) => SendOutcome::Delivered,
        (410, _) | (_, Some(ErrorReason::Unregistered)) => SendOutcome::InvalidToken {
            registered_before: response.error.as_ref().and_then(|e| e.timestamp).map(|ms| {
                Timestamp::from_unix_micros(
                    i64::try_from(ms)
                        .unwrap_or(i64::MAX / 1_000)
                        .saturating_mul(1_000),
                )
            }),
        },
        (400, Some(ErrorReason::BadDeviceToken | ErrorReason::DeviceTokenNotForTopic)) => {
            SendOutcome::InvalidToken {
                registered_before: None,
            }
        }
        (429 | 500..=599, _) => SendOutcome::Retry {
            after: None,
            reason: describe(),
        },
        _ => SendOutcome::Failed { reason: describe() },
    }
}

#[async_trait]
impl PushGateway for ApnsGateway {
    async fn send(&self, target: &Target, message: &PushMessage) -> SendOutcome {
        let collapse = message.collapse_key();
        let expiration = u64::try_from(crate::now().as_unix_micros() / 1_000_000).unwrap_or(0)
            + message.ttl.as_secs();
        let options = NotificationOptions {
            apns_priority: Some(if message.urgent {
                Priority::High
            } else {
                Priority::Normal
            }),
            apns_collapse_id: CollapseId::new(&collapse).ok(),
            apns_expiration: Some(expiration),
            apns_topic: Some(&self.topic),
            ..Default::default()
        };
        let builder = if message.privacy {
            // No text leaves: the app's notification service extension fetches it.
            DefaultNotificationBuilder::new()
                .set_loc_key("NEW_PUBLICATION")
                .set_mutable_content()
        } else {
            DefaultNotificationBuilder::new()
                .set_title(&message.title)
                .set_body(&message.body)
                .set_sound("default")
        };
        let mut payload = builder.build(&target.token, options);
        let id = message.publication.to_string();
        if payload.add_custom_data("publication_id", &id).is_err() {
            return SendOutcome::Failed {
                reason: "cannot encode the APNs payload".into(),
            };
        }
        match self.client.send(payload).await {
            Ok(response) => interpret(&response),
            Err(a2::Error::ResponseError(response)) => interpret(&response),
            // Retried only when no connection could be made: a request that
            // may have reached Apple is not sent again (at most once).
            Err(a2::Error::ClientError(error)) if error.is_connect() => SendOutcome::Retry {
                after: None,
                reason: format!("APNs unreachable: {error}"),
            },
            Err(error) => SendOutcome::Failed {
                reason: format!("APNs outcome unknown, not sent again: {error}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use a2::ErrorBody;

    use super::*;

    fn response(code: u16, reason: Option<ErrorReason>, timestamp: Option<u64>) -> Response {
        Response {
            error: reason.map(|reason| ErrorBody { reason, timestamp }),
            apns_id: None,
            code,
        }
    }

    #[test]
    fn gone_tokens_are_disabled_only_if_registered_before_apples_timestamp() {
        let outcome = interpret(&response(
            410,
            Some(ErrorReason::Unregistered),
            Some(1_790_000_000_000),
        ));
        assert_eq!(
            outcome,
            SendOutcome::InvalidToken {
                registered_before: Some(Timestamp::from_unix_micros(1_790_000_000_000_000))
            }
        );
    }

    #[test]
    fn bad_tokens_are_disabled_but_our_own_problems_never_disable() {
        assert_eq!(
            interpret(&response(400, Some(ErrorReason::BadDeviceToken), None)),
            SendOutcome::InvalidToken {
                registered_before: None
            }
        );
        for (code, reason) in [
            (403, ErrorReason::ExpiredProviderToken),
            (403, ErrorReason::InvalidProviderToken),
            (400, ErrorReason::PayloadEmpty),
            (413, ErrorReason::PayloadTooLarge),
        ] {
            assert!(matches!(
                interpret(&response(code, Some(reason), None)),
                SendOutcome::Failed { .. }
            ));
        }
    }

    #[test]
    fn throttling_and_outages_are_retried() {
        assert!(matches!(
            interpret(&response(429, Some(ErrorReason::TooManyRequests), None)),
            SendOutcome::Retry { .. }
        ));
        assert!(matches!(
            interpret(&response(503, Some(ErrorReason::ServiceUnavailable), None)),
            SendOutcome::Retry { .. }
        ));
        assert_eq!(
            interpret(&response(200, None, None)),
            SendOutcome::Delivered
        );
    }
}
