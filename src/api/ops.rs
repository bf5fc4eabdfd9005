//! The ops API, on its own listener (private network only): liveness, readiness
//! and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::health::{Dependency, Health};
use crate::metrics::Metrics;
use crate::readmodel::cache::FeedCache;

#[derive(Clone)]
pub struct OpsState {
    pub health: Arc<Health>,
    pub cache: Arc<FeedCache>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState").finish_non_exhaustive()
    }
}

pub fn router(state: OpsState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            super::request_context,
        ))
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

/// OpenMetrics text, which Prometheus scrapes.
async fn metrics_text(State(ops): State<OpsState>) -> Response {
    let (entries, bytes) = ops.cache.usage().await;
    ops.metrics
        .feed_cache_entries
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
    ops.metrics
        .feed_cache_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    let mut response = ops.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
