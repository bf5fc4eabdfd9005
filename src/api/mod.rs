//! The HTTP edge: the public and publisher API on one listener, the ops API on
//! another. Handlers parse input into domain types, call the command handler or
//! the feed cache, and map outcomes to the contract of `../shared/API.md`.
//!
//! Never depends on `push`: a request never sends a notification.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use panneau_domain::RequestId;
use panneau_projections::Communes;
use tracing::Instrument;
use uuid::Uuid;

use crate::commands::CommandHandler;
use crate::metrics::Metrics;
use crate::readmodel::cache::FeedCache;
use crate::store::{DeviceStore, EventStore, NotificationStore, StateStore};

pub mod devices;
pub mod error;
pub mod extract;
pub mod fast;
pub mod openapi;
pub mod ops;
pub mod public;
pub mod publisher;
pub mod views;

use error::{ApiError, ErrorCause, error_chain};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// HTTP caching settings of the public read path.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// `max-age` of feed responses, in seconds (lowered when a feed changes by time sooner).
    pub max_age: u64,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// The `Cache-Control` of a body that stays right for `max_age`, made once.
    full_max_age: HeaderValue,
}

impl CachePolicy {
    pub fn new(max_age: u64, stale_while_revalidate: u64, stale_if_error: u64) -> Self {
        Self {
            max_age,
            stale_while_revalidate,
            stale_if_error,
            full_max_age: cache_control(max_age, stale_while_revalidate, stale_if_error),
        }
    }

    /// `Cache-Control` for a body that stays right `max_age` seconds.
    pub fn cache_control(&self, max_age: u64) -> HeaderValue {
        if max_age == self.max_age {
            self.full_max_age.clone()
        } else {
            cache_control(max_age, self.stale_while_revalidate, self.stale_if_error)
        }
    }
}

fn cache_control(max_age: u64, stale_while_revalidate: u64, stale_if_error: u64) -> HeaderValue {
    HeaderValue::try_from(format!(
        "public, max-age={max_age}, stale-while-revalidate={stale_while_revalidate}, stale-if-error={stale_if_error}"
    ))
    .expect("digits and ASCII make a valid header value")
}

/// Everything handlers share, behind one `Arc`: axum clones the state for
/// every request, and one reference count costs less than fifteen.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub cache: Arc<FeedCache>,
    pub communes: Arc<Communes>,
    pub commands: CommandHandler,
    pub log: Arc<dyn EventStore>,
    pub state: Arc<dyn StateStore>,
    /// The publisher statistics read model.
    pub stats: Arc<dyn crate::readmodel::FeedStore>,
    pub views: Arc<views::ViewCounter>,
    pub devices: Arc<dyn DeviceStore>,
    pub jobs: Arc<dyn NotificationStore>,
    /// Device registrations per client address.
    pub registrations: Arc<views::PerClientLimit>,
    /// Where Web Push subscriptions may point.
    pub webpush_endpoints: crate::subscription::Endpoints,
    pub metrics: Arc<Metrics>,
    /// How bearer tokens are hashed (with the server's pepper, when there is one).
    pub token_hasher: crate::tokens::TokenHasher,
    pub cache_policy: CachePolicy,
    /// Take the client address from `X-Forwarded-For` (behind a trusted proxy only).
    pub trust_forwarded_for: bool,
    /// Valid tokens seen recently, by hash, so a busy publisher does not cost a
    /// database read per command. A revocation takes effect within [`TOKEN_CACHE_TTL`].
    pub tokens: moka::future::Cache<[u8; 32], crate::store::TokenRecord>,
}

/// How long a validated token is trusted without asking the database again.
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The cache of validated tokens.
pub fn token_cache() -> moka::future::Cache<[u8; 32], crate::store::TokenRecord> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TOKEN_CACHE_TTL)
        .build()
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The client's address, for rate limits.
    pub fn client_ip(&self, request: &axum::http::request::Parts) -> Option<IpAddr> {
        if self.trust_forwarded_for
            && let Some(ip) = request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Some(ip);
        }
        request
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    }
}

/// The public and publisher API.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(public::routes())
        .merge(publisher::routes())
        .merge(devices::routes())
        .merge(openapi::routes())
        .fallback(|| async { ApiError::not_found("no such resource") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
        .layer(middleware::from_fn_with_state(metrics, request_context))
}

/// Gives every request an id (the client's `X-Request-Id` when it is sensible),
/// echoes it, logs the request once it is answered (with the cause of any
/// refusal or server error), counts it, and reports server errors to Sentry once.
pub async fn request_context(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let echoed = request_id(request.headers());
    let route = crate::metrics::Route::of(request.extensions().get::<MatchedPath>().cloned());
    let method = request.method().clone();
    let request_id = RequestId::parse(visible(&echoed)).expect("checked when made");
    request.extensions_mut().insert(request_id);
    let span = request_span(&echoed, &method, &route);
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    metrics.http_request(&route, &method, response.status(), elapsed);
    answered(&route, elapsed, &span, echoed, response)
}

/// The header echoing a request's id, made once: a sensible id from the
/// client is echoed as it came (no copy), else a UUIDv7 is formatted on the
/// stack.
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|value| value.to_str().is_ok_and(RequestId::is_valid))
        .cloned()
        .unwrap_or_else(|| {
            let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
            let text = Uuid::now_v7().hyphenated().encode_lower(&mut text);
            HeaderValue::from_str(text).expect("a UUID is a valid header value")
        })
}

/// The text of a request id made by [`request_id`].
fn visible(echoed: &HeaderValue) -> &str {
    echoed
        .to_str()
        .expect("the request id is visible ASCII, checked when made")
}

/// The span of a request: its id, method and route on every log line.
pub(crate) fn request_span(
    echoed: &HeaderValue,
    method: &axum::http::Method,
    route: &crate::metrics::Route,
) -> tracing::Span {
    tracing::info_span!("request", request_id = visible(echoed), %method, route = route.as_str())
}

/// Logs an answered request, counted by the caller (with the cause of any
/// refusal or server error, reported to Sentry once for a server error), and
/// echoes its id.
pub(crate) fn answered(
    route: &crate::metrics::Route,
    elapsed: std::time::Duration,
    span: &tracing::Span,
    mut echoed: HeaderValue,
    mut response: Response,
) -> Response {
    let request_id = visible(&echoed);
    let status = response.status();
    let latency_ms = elapsed.as_secs_f64() * 1_000.0;
    let _entered = span.enter();
    if let Some(cause) = response.extensions_mut().remove::<ErrorCause>() {
        if status.is_server_error() {
            let chain = error_chain(cause.0.as_ref());
            tracing::error!(status = status.as_u16(), latency_ms, cause = %chain, "request failed");
            crate::telemetry::report_server_error(
                &chain,
                request_id,
                route.as_str(),
                status.as_u16(),
            );
        } else {
            tracing::warn!(status = status.as_u16(), latency_ms, cause = %error_chain(cause.0.as_ref()), "request refused");
        }
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, "request");
    }
    // A request id is unique to its response: over HTTP/2, HPACK would add
    // each one to the connection's table of headers, pushing out the
    // repeated ones (Cache-Control, Content-Type, Vary) for nothing. Marked
    // sensitive, it is sent as a literal that is never indexed.
    echoed.set_sensitive(true);
    response.headers_mut().insert(X_REQUEST_ID.clone(), echoed);
    response
}

/// The request id the middleware gave this request.
pub fn request_id_of(extensions: &axum::http::Extensions) -> Option<RequestId> {
    extensions.get::<RequestId>().cloned()
}
