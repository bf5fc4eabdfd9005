//! The public API's HTTP server: HTTP/1.1 and HTTP/2 (cleartext, prior
//! knowledge) on one listener, as `axum::serve` does, with one difference in
//! how HTTP/2 streams are run.
//!
//! hyper hands each HTTP/2 request (a stream) to an executor, and
//! `axum::serve`'s executor spawns a task for it. A cached feed is answered
//! without waiting for anything, so that task was a round trip through the
//! scheduler for a few microseconds of work, and at saturation its place in
//! the queue, behind every other connection's streams, was most of the
//! request's latency. [`RunFirst`] runs the stream at once, in the
//! connection's task, and spawns it only if it has to wait (a cache miss, a
//! request body, the database). Measured in `bench/` (docs/BENCHMARKS.md,
//! "Read path"): over HTTP/2, more requests per second and a shorter p99.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::fast::Api;

/// Runs a future once where it is handed over, and spawns it on the tokio
/// runtime only if it is not finished.
///
/// No wake-up is lost by polling first with a waker that does nothing: a
/// spawned task is always polled, and that poll sees whatever happened since.
/// A panic while running is contained as a spawned task's would be: the
/// future is dropped (hyper then resets the stream) and the caller goes on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunFirst;

impl<F> hyper::rt::Executor<F> for RunFirst
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut future = Box::pin(future);
        let mut cx = Context::from_waker(Waker::noop());
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(_)) => {}
            Ok(Poll::Pending) => {
                tokio::spawn(future);
            }
            Err(_) => tracing::error!("a request's handler panicked; its stream is reset"),
        }
    }
}

/// Serves `api` on `listener` until `stop` is cancelled, then stops
/// accepting and lets the open connections finish their requests. A failed
/// accept (out of file descriptors, say) is logged and retried.
pub async fn serve(listener: TcpListener, api: Api, stop: CancellationToken) {
    let builder = auto::Builder::new(RunFirst);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::error!(%error, "cannot accept a connection; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Responses go out as soon as they are written: an HTTP/2 response is
        // several frames, and Nagle's algorithm would hold the last of them
        // for the client's delayed acknowledgement (tens of ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let service = api.clone().map_request(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            request
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors about one connection, not the listener: the next accept may succeed.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn a_future_that_need_not_wait_has_run_when_execute_returns() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        RunFirst.execute(async move { flag.store(true, Ordering::SeqCst) });
        assert!(ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_future_that_waits_is_spawned_and_finishes_when_woken() {
        let (go, wait) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel();
        RunFirst.execute(async move {
            wait.await.unwrap();
            done.send(()).unwrap();
        });
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("the waiting future finished once woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_panic_is_contained_and_the_next_future_still_runs() {
        RunFirst.execute(async { panic!("a handler's bug") });
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        RunFirst.execute(async move { flag.store(true, Ordering::SeqCst) });
        assert!(ran.load(Ordering::SeqCst));
    }
}
