//! The ops API, on its own listener (private network only): liveness, readiness
//! and metrics.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::health::{Dependency, Health};
use crate::readmodel::cache::FeedCache;

#[derive(Clone)]
pub struct OpsState {
    pub health: Arc<Health>,
    pub cache: Arc<FeedCache>,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState").finish_non_exhaustive()
    }
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(axum::middleware::from_fn(super::request_context))
}

#[derive(Debug, Serialize)]
struct Readiness {
    database: Dependency,
    bus: Dependency,
    read_model: Dependency,
}

/// 200 while reads can be served (even if the write side is down), 503 otherwise.
async fn readyz(State(ops): State<OpsState>) -> Response {
    let readiness = Readiness {
        database: ops.health.database(),
        bus: ops.health.bus(),
        read_model: ops.health.read_model(),
    };
    let status = if readiness.read_model == Dependency::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response =
        (status, serde_json::to_vec(&readiness).expect("serialises")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Prometheus text format.
async fn metrics(State(ops): State<OpsState>) -> Response {
    let counters = &ops.cache.counters;
    let (entries, bytes) = ops.cache.usage();
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "panneau_feed_cache_hits_total",
        "counter",
        "Feed and publication reads served from the cache.",
        counters.hits.load(Ordering::Relaxed),
    );
    metric(
        "panneau_feed_cache_misses_total",
        "counter",
        "Reads that were not in the cache.",
        counters.misses.load(Ordering::Relaxed),
    );
    metric(
        "panneau_feed_store_loads_total",
        "counter",
        "Documents loaded from the feed store.",
        counters.loads.load(Ordering::Relaxed),
    );
    metric(
        "panneau_feed_cache_entries",
        "gauge",
        "Rendered feeds in the cache.",
        entries,
    );
    metric(
        "panneau_feed_cache_bytes",
        "gauge",
        "Bytes of rendered feeds in the cache.",
        bytes,
    );
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
