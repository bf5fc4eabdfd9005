//! The hottest request, the first page of a commune's feed already in the
//! cache, answered before the router.
//!
//! Profiles of that request (docs/profiles/read-path.txt) found two thirds of
//! its instructions in the router, its extractors and the layers around the
//! handler, for a handler that looks up a cache and copies a few headers.
//! Here it costs a path check and the same lookup. Everything else, a cache
//! miss included, goes through the router as before; both ways answer with the
//! same status, headers and body, and are counted and logged alike (the
//! request id, metrics and log line come from the same functions).

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures_util::future::{BoxFuture, Either};
use panneau_domain::InseeCode;
use tower::{Service, ServiceExt};

use super::{AppState, answered, public, request_id, request_span};
use crate::metrics::Route;

/// The route the feed handler is registered under (its metrics label).
pub const FEED_ROUTE: &str = "/v1/communes/{code}/feed";

/// The public API: the router, behind the shortcut for cached feeds.
#[derive(Clone, Debug)]
pub struct Api {
    router: Router,
    app: AppState,
}

impl Api {
    pub fn new(router: Router, app: AppState) -> Self {
        Self { router, app }
    }
}

impl Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        BoxFuture<'static, Result<Response, Infallible>>,
        axum::routing::future::RouteFuture<Infallible>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match first_feed_page(&request, &self.app) {
            Some(commune) => {
                let (app, router) = (self.app.clone(), self.router.clone());
                Either::Left(Box::pin(async move {
                    Ok(answer(app, router, commune, request).await)
                }))
            }
            None => Either::Right(self.router.call(request)),
        }
    }
}

/// The commune of `GET /v1/communes/{code}/feed` without a query, when it is a
/// known commune: what the shortcut may answer. Anything else (a cursor, a
/// malformed or unknown code, another method) is the router's to answer.
fn first_feed_page(request: &Request, app: &AppState) -> Option<InseeCode> {
    if request.method() != Method::GET || request.uri().query().is_some() {
        return None;
    }
    let code = request
        .uri()
        .path()
        .strip_prefix("/v1/communes/")?
        .strip_suffix("/feed")?;
    let commune = InseeCode::parse(code).ok()?;
    app.cache.communes().get(&commune).map(|_| commune)
}

/// Serves the cached page, or hands the request to the router when the page
/// is not cached (or is stale), which loads it.
async fn answer(app: AppState, router: Router, commune: InseeCode, request: Request) -> Response {
    let started = Instant::now();
    let Some(rendered) = app.cache.cached_feed(commune).await else {
        return match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    };
    let echoed = request_id(request.headers());
    let route = Route::Known(FEED_ROUTE);
    let span = request_span(&echoed, &Method::GET, &route);
    let response = public::serve(&rendered, request.headers(), &app);
    let elapsed = started.elapsed();
    app.metrics.first_feed_page(response.status(), elapsed);
    answered(&route, elapsed, &span, echoed, response)
}
