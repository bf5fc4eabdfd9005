//! Prometheus metrics, served on the ops listener at `/metrics`.
//!
//! Names follow Prometheus conventions (`panneau_` prefix, base units, `_total`
//! for counters). Label values are bounded: a route is its template
//! (`/v1/communes/{code}/feed`), never a commune code, an id or a token.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: Route,
    pub method: Method,
    pub status: Status,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
    pub method: Method,
}

/// A route template as a label value, shared with the router rather than
/// copied: labels are built for every request.
#[derive(Debug, Clone)]
pub enum Route {
    /// The route the router matched.
    Matched(axum::extract::MatchedPath),
    /// A route answered before the router (`api::fast`).
    Known(&'static str),
    /// No route matched (404, 405).
    Unmatched,
}

impl Route {
    pub fn of(matched: Option<axum::extract::MatchedPath>) -> Self {
        matched.map_or(Route::Unmatched, Route::Matched)
    }

    pub fn as_str(&self) -> &str {
        match self {
            Route::Matched(path) => path.as_str(),
            Route::Known(path) => path,
            Route::Unmatched => "unmatched",
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// An HTTP method as a label value: the standard ones, every other as
/// `OTHER` (a client choosing methods must not grow the label set).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Method(http::Method);

impl Method {
    pub fn of(method: &http::Method) -> Self {
        use http::Method as M;
        let standard = [
            M::GET,
            M::HEAD,
            M::POST,
            M::PUT,
            M::PATCH,
            M::DELETE,
            M::OPTIONS,
            M::TRACE,
            M::CONNECT,
        ];
        if standard.contains(method) {
            Self(method.clone())
        } else {
            Self(M::from_bytes(b"OTHER").expect("a valid method token"))
        }
    }
}

impl EncodeLabelValue for Method {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

/// An HTTP status as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Status(pub http::StatusCode);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub platform: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabels {
    pub platform: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The series of the hottest request, the first page of a cached feed
/// answered before the router (`api::fast`), looked up once: hashing its
/// label set for every request cost more than the counting itself.
#[derive(Debug)]
struct FirstFeedPage {
    ok: Counter,
    not_modified: Counter,
    duration: Histogram,
}

impl FirstFeedPage {
    fn of(
        requests: &Family<HttpLabels, Counter>,
        duration: &Family<RouteLabels, Histogram>,
    ) -> Self {
        let route = Route::Known(crate::api::fast::FEED_ROUTE);
        let method = Method::of(&http::Method::GET);
        let counter = |status| {
            requests
                .get_or_create(&HttpLabels {
                    route: route.clone(),
                    method: method.clone(),
                    status: Status(status),
                })
                .clone()
        };
        Self {
            ok: counter(http::StatusCode::OK),
            not_modified: counter(http::StatusCode::NOT_MODIFIED),
            duration: duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                    method: method.clone(),
                })
                .clone(),
        }
    }
}

/// Every metric of one instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    first_feed_page: FirstFeedPage,
    pub feed_cache_hits: Counter,
    pub feed_cache_misses: Counter,
    pub feed_store_loads: Counter,
    pub feed_cache_entries: Gauge,
    pub feed_cache_bytes: Gauge,
    pub feed_overlay_publications: Gauge,
    pub commands: Family<CommandLabels, Counter>,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_age: FloatGauge,
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    pub consumer_redeliveries: Family<ConsumerLabels, Counter>,
    pub push_sends: Family<PushLabels, Counter>,
    pub push_tokens_disabled: Family<PlatformLabels, Counter>,
    pub push_jobs_in_progress: Gauge,
    pub push_jobs: Family<StatusLabels, Counter>,
    pub db_pool_connections: Family<PoolLabels, Gauge>,
    pub dependency_up: Family<DependencyLabels, FloatGauge>,
    pub nats_connected: Gauge,
    pub vault_token_expiry: FloatGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("panneau");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.25 ms to ~8 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            http_duration.clone(),
        );
        let feed_cache_hits = Counter::default();
        registry.register(
            "feed_cache_hits",
            "Feed and publication reads served from the cache",
            feed_cache_hits.clone(),
        );
        let feed_cache_misses = Counter::default();
        registry.register(
            "feed_cache_misses",
            "Feed and publication reads not in the cache (or stale)",
            feed_cache_misses.clone(),
        );
        let feed_store_loads = Counter::default();
        registry.register(
            "feed_store_loads",
            "Documents loaded from the feed store",
            feed_store_loads.clone(),
        );
        let feed_cache_entries = Gauge::default();
        registry.register(
            "feed_cache_entries",
            "Rendered feeds in the cache",
            feed_cache_entries.clone(),
        );
        let feed_cache_bytes = Gauge::default();
        registry.register(
            "feed_cache_bytes",
            "Bytes of rendered feeds in the cache",
            feed_cache_bytes.clone(),
        );
        let feed_overlay_publications = Gauge::default();
        registry.register(
            "feed_overlay_publications",
            "Publications shown from the event log because the feed store has not caught up with them (broker away)",
            feed_overlay_publications.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register("commands", "Commands by type and outcome", commands.clone());
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Events committed but not yet published to the broker",
            outbox_backlog.clone(),
        );
        let outbox_oldest_age = FloatGauge::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row",
            outbox_oldest_age.clone(),
        );
        let consumer_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_pending_messages",
            "Messages the consumer has not received yet (lag)",
            consumer_pending.clone(),
        );
        let consumer_ack_pending = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_ack_pending_messages",
            "Messages delivered and not acknowledged yet",
            consumer_ack_pending.clone(),
        );
        let consumer_redeliveries = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_redeliveries",
            "Messages handed back for redelivery",
            consumer_redeliveries.clone(),
        );
        let push_sends = Family::<PushLabels, Counter>::default();
        registry.register(
            "push_sends",
            "Push attempts by platform and outcome",
            push_sends.clone(),
        );
        let push_tokens_disabled = Family::<PlatformLabels, Counter>::default();
        registry.register(
            "push_tokens_disabled",
            "Device tokens disabled because the provider said they are dead",
            push_tokens_disabled.clone(),
        );
        let push_jobs_in_progress = Gauge::default();
        registry.register(
            "push_jobs_in_progress",
            "Notification jobs this instance is running",
            push_jobs_in_progress.clone(),
        );
        let push_jobs = Family::<StatusLabels, Counter>::default();
        registry.register(
            "push_jobs",
            "Notification jobs finished, by final status",
            push_jobs.clone(),
        );
        let db_pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections of this instance",
            db_pool_connections.clone(),
        );
        let dependency_up = Family::<DependencyLabels, FloatGauge>::default();
        registry.register(
            "dependency_up",
            "1 up, 0.5 degraded, 0 down, as /readyz reports",
            dependency_up.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register(
            "nats_connected",
            "1 while connected to NATS",
            nats_connected.clone(),
        );
        let vault_token_expiry = FloatGauge::default();
        registry.register(
            "vault_token_expiry_timestamp_seconds",
            "When the Vault token expires unless renewed (0 without Vault)",
            vault_token_expiry.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running release", build_info);
        Self {
            registry,
            first_feed_page: FirstFeedPage::of(&http_requests, &http_duration),
            http_requests,
            http_duration,
            feed_cache_hits,
            feed_cache_misses,
            feed_store_loads,
            feed_cache_entries,
            feed_cache_bytes,
            feed_overlay_publications,
            commands,
            outbox_backlog,
            outbox_oldest_age,
            consumer_pending,
            consumer_ack_pending,
            consumer_redeliveries,
            push_sends,
            push_tokens_disabled,
            push_jobs_in_progress,
            push_jobs,
            db_pool_connections,
            dependency_up,
            nats_connected,
            vault_token_expiry,
        }
    }

    /// Counts an answered HTTP request and the time it took.
    pub fn http_request(
        &self,
        route: &Route,
        method: &http::Method,
        status: http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                method: Method::of(method),
                status: Status(status),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: Method::of(method),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// [`Metrics::http_request`] for `GET` of a feed's first page.
    pub fn first_feed_page(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        let requests = match status {
            http::StatusCode::OK => &self.first_feed_page.ok,
            http::StatusCode::NOT_MODIFIED => &self.first_feed_page.not_modified,
            _ => {
                let route = Route::Known(crate::api::fast::FEED_ROUTE);
                return self.http_request(&route, &http::Method::GET, status, elapsed);
            }
        };
        requests.inc();
        self.first_feed_page.duration.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn command(&self, command: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }
}
