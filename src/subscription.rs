//! A browser's Web Push subscription (the `token` of a `webpush` device): the
//! push service endpoint and the keys to encrypt for it (RFC 8291).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// A parsed and checked subscription.
#[derive(Debug, Clone)]
pub struct WebPushSubscription {
    pub endpoint: String,
    pub p256dh: web_push_native::p256::PublicKey,
    pub auth: [u8; 16],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    endpoint: String,
    #[serde(rename = "expirationTime", default)]
    _expiration: Option<serde_json::Value>,
    keys: RawKeys,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    p256dh: String,
    auth: String,
}

fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// The push services browsers use. Panneau only posts to these, so a forged
/// subscription cannot make it call an arbitrary (internal) address.
pub const PUSH_SERVICE_HOSTS: [&str; 4] = [
    "fcm.googleapis.com",
    "push.services.mozilla.com",
    "push.apple.com",
    "notify.windows.com",
];

/// Where subscriptions may point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `https://` on the browsers' push services (production).
    PushServices,
    /// Also `http://127.0.0.1` (a local fake provider in tests).
    AlsoLoopback,
}

impl WebPushSubscription {
    /// Parses the JSON of `PushSubscription.toJSON()`.
    ///
    /// # Errors
    /// A message saying what is wrong (for a 400 on the `token` field).
    pub fn parse(json: &str, endpoints: Endpoints) -> Result<Self, &'static str> {
        let raw: Raw = serde_json::from_str(json)
            .map_err(|_| "a webpush token is the JSON of the browser's PushSubscription: {\"endpoint\",\"keys\":{\"p256dh\",\"auth\"}}")?;
        let uri = raw
            .endpoint
            .parse::<http::Uri>()
            .map_err(|_| "the push subscription's endpoint is not a URL")?;
        let host = uri.host().unwrap_or_default();
        let push_service = uri.scheme_str() == Some("https")
            && PUSH_SERVICE_HOSTS
                .iter()
                .any(|known| host == *known || host.ends_with(&format!(".{known}")));
        let loopback = endpoints == Endpoints::AlsoLoopback
            && uri.scheme_str() == Some("http")
            && host == "127.0.0.1";
        if !(push_service || loopback) {
            return Err(
                "the push subscription's endpoint must be an https:// URL of a browser push service",
            );
        }
        let p256dh = decode(&raw.keys.p256dh)
            .and_then(|b| web_push_native::p256::PublicKey::from_sec1_bytes(&b).ok())
            .ok_or("keys.p256dh must be a base64url P-256 public key")?;
        let auth: [u8; 16] = decode(&raw.keys.auth)
            .and_then(|b| b.try_into().ok())
            .ok_or("keys.auth must be 16 bytes, base64url")?;
        Ok(Self {
            endpoint: raw.endpoint,
            p256dh,
            auth,
        })
    }
}
