//! Sending push notifications: the `PushGateway` trait and its implementations
//! (FCM HTTP v1, APNs through `a2`, Web Push), and what their answers mean.
//!
//! Only the notifier uses this module: a request never sends a notification.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use panneau_domain::{Platform, PublicationId};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::Target;

pub mod apns;
pub mod fcm;
pub mod webpush;

/// What is sent for one publication.
#[derive(Debug, Clone)]
pub struct PushMessage {
    pub publication: PublicationId,
    pub title: String,
    /// An excerpt of the body.
    pub body: String,
    /// Urgent publications go out at high priority.
    pub urgent: bool,
    /// Only ids leave Panneau: the app fetches the text from our API, so no
    /// content transits through Google or Apple (data residency).
    pub privacy: bool,
    /// After this, the push service may drop an undelivered notification.
    pub ttl: Duration,
}

impl PushMessage {
    /// The collapse key: one notification per publication on a phone.
    pub fn collapse_key(&self) -> String {
        self.publication.to_string()
    }
}

/// What a push service said about one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// The token is dead and is disabled: when `registered_before` is given, only
    /// if the token was registered before that instant (APNs `410` timestamp).
    InvalidToken {
        registered_before: Option<panneau_domain::Timestamp>,
    },
    /// Try again later (429, 5xx, no connection), after at least `after` when
    /// the service said so (`Retry-After`). Only for a request the service
    /// answered, or one that never reached it: a request that may have been
    /// delivered is never sent again (see [`unsent_or_unknown`]).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Will not work by retrying, and is not the token's fault (a payload or
    /// credentials problem): counted, the token kept.
    Failed {
        reason: String,
    },
}

/// A push service.
#[async_trait]
pub trait PushGateway: Send + Sync + 'static {
    async fn send(&self, target: &Target, message: &PushMessage) -> SendOutcome;
}

/// The gateways configured, by platform.
#[derive(Clone, Default)]
pub struct Gateways {
    pub fcm: Option<Arc<dyn PushGateway>>,
    pub apns: Option<Arc<dyn PushGateway>>,
    pub webpush: Option<Arc<dyn PushGateway>>,
}

impl std::fmt::Debug for Gateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateways")
            .field("fcm", &self.fcm.is_some())
            .field("apns", &self.apns.is_some())
            .field("webpush", &self.webpush.is_some())
            .finish()
    }
}

impl Gateways {
    /// No push service is configured: the instance sends nothing.
    pub fn is_empty(&self) -> bool {
        self.fcm.is_none() && self.apns.is_none() && self.webpush.is_none()
    }

    pub fn for_platform(&self, platform: Platform) -> Option<&Arc<dyn PushGateway>> {
        match platform {
            Platform::Fcm => self.fcm.as_ref(),
            Platform::Apns => self.apns.as_ref(),
            Platform::Webpush => self.webpush.as_ref(),
        }
    }
}

/// Keeps a send rate under a provider's quota (FCM: 600,000 messages per minute
/// per project): a token bucket refilled continuously, one second deep.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Waits until one more message may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let (tokens, last) = &mut *state;
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second)
                    .min(self.per_second);
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - *tokens) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Capped exponential backoff with full jitter, never shorter than what the
/// service asked for.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(60),
            max_attempts: 10,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.cap);
        let jittered = exponential.mul_f64(fastrand::f64());
        jittered
            .max(asked.unwrap_or_default())
            .min(self.cap.max(asked.unwrap_or_default()))
    }
}

/// What a request that got no answer means. If it never reached the service
/// (no connection could be made), it is retried; otherwise (a timeout, a
/// connection lost while waiting for the answer) the service may have taken
/// it, and sending it again could notify the device twice: it counts as
/// failed. At most once per device, as promised (ADR 5).
pub fn unsent_or_unknown(service: &str, error: &reqwest::Error) -> SendOutcome {
    unanswered(service, error.is_connect(), error)
}

/// The same, for any client: `never_sent` when no connection could be made.
pub fn unanswered(service: &str, never_sent: bool, error: &dyn std::fmt::Display) -> SendOutcome {
    if never_sent {
        SendOutcome::Retry {
            after: None,
            reason: format!("{service} unreachable: {error}"),
        }
    } else {
        SendOutcome::Failed {
            reason: format!("{service} outcome unknown, not sent again: {error}"),
        }
    }
}

/// Reads `Retry-After` (seconds, or an HTTP date, which counts as "a while").
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    Some(
        value
            .trim()
            .parse::<u64>()
            .map_or(Duration::from_secs(30), Duration::from_secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_may_have_reached_the_service_is_never_retried() {
        crate::install_crypto();
        // No server on the port: the request never left, so it is retried.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let error = client
            .post(format!("http://127.0.0.1:{closed_port}/send"))
            .body("{}")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(
            unsent_or_unknown("FCM", &error),
            SendOutcome::Retry { .. }
        ));

        // A server that takes the request and never answers: the request may
        // have been delivered, so it is not sent again.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let (socket, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let error = client
            .post(format!("http://127.0.0.1:{silent_port}/send"))
            .body("{}")
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout());
        match unsent_or_unknown("FCM", &error) {
            SendOutcome::Failed { reason } => {
                assert!(reason.contains("not sent again"), "{reason}")
            }
            other => panic!("a timed-out request must not be retried: {other:?}"),
        }
        holder.abort();
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_attempts: 5,
        };
        for attempt in 1..20 {
            assert!(backoff.delay(attempt, None) <= Duration::from_secs(5));
        }
        assert!(backoff.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        // A service asking for longer than the cap is obeyed.
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_spreads_sends_over_time() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        // 10 at once (a full bucket), then 20 at 10 per second.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1_900) && elapsed <= Duration::from_millis(2_100),
            "{elapsed:?}"
        );
    }
}
