//! Building and running one Panneau instance: `Application::build(config)` wires
//! the stores, projector, cache and listeners; `run_until_stopped(shutdown)`
//! serves until the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, bail};
use panneau_projections::Communes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, CachePolicy};
use crate::bus::LocalBus;
use crate::commands::CommandHandler;
use crate::config::{Config, Mode};
use crate::health::{Dependency, Health};
use crate::readmodel::cache::FeedCache;
use crate::readmodel::{FeedStore, MemoryFeedStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{EventStore, StateStore};
use crate::{projector, scheduler};

/// The 34,969 current communes, built in (Etalab, MIT licence; see `data/`).
pub static COMMUNES: LazyLock<Arc<Communes>> = LazyLock::new(|| {
    Arc::new(
        Communes::from_tsv(include_str!("../data/communes.tsv"))
            .expect("the built-in commune list parses"),
    )
});

/// A built instance, listeners bound, background tasks running.
pub struct Application {
    http: TcpListener,
    ops: TcpListener,
    router: axum::Router,
    ops_router: axum::Router,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    stop_tasks: CancellationToken,
    shutdown_timeout: Duration,
    sqlite: Option<SqliteStore>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("http", &self.http.local_addr().ok())
            .field("ops", &self.ops.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// # Errors
    /// When a store cannot be opened or a listener cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let Mode::Embedded { sqlite_url } = config.mode() else {
            bail!(
                "cluster mode (a MariaDB PANNEAU_DATABASE_URL) is not available in this build yet"
            );
        };
        let communes = COMMUNES.clone();
        let health = Arc::new(Health::default());
        let stop_tasks = CancellationToken::new();
        let bus = LocalBus::new(4096);
        let sqlite = SqliteStore::connect(&sqlite_url)
            .await
            .with_context(|| format!("cannot open the embedded database {sqlite_url}"))?;
        sqlite
            .migrate()
            .await
            .context("cannot migrate the embedded database")?;
        let sqlite = sqlite.with_commit_hook(Arc::new(bus.clone()));
        let log: Arc<dyn EventStore> = Arc::new(sqlite.clone());
        let state: Arc<dyn StateStore> = Arc::new(sqlite.clone());
        let feeds = Arc::new(MemoryFeedStore::default());
        let cache = Arc::new(FeedCache::new(
            feeds.clone(),
            communes.clone(),
            config.feed_cache_bytes,
        ));

        // Subscribe before reading the log so that nothing committed in between is missed.
        let committed = bus.subscribe();
        let position = projector::catch_up(log.as_ref(), feeds.as_ref(), 0)
            .await
            .context("cannot rebuild the feeds from the event log")?;
        tracing::info!(
            position,
            documents = feeds.len(),
            "feeds rebuilt from the event log"
        );
        health.set_read_model(Dependency::Up);

        let mut tasks = Vec::new();
        let changes = feeds.watch();
        let follower = cache.clone();
        let token = stop_tasks.clone();
        tasks.push((
            "cache follower",
            tokio::spawn(async move { follower.follow(changes, token).await }),
        ));
        let feed_store: Arc<dyn FeedStore> = feeds.clone();
        tasks.push((
            "feed projector",
            tokio::spawn(projector::run_embedded(
                log.clone(),
                feed_store,
                committed,
                position,
                stop_tasks.clone(),
            )),
        ));
        let commands = CommandHandler::new(log.clone());
        tasks.push((
            "scheduler",
            tokio::spawn(scheduler::run(
                log.clone(),
                commands.clone(),
                stop_tasks.clone(),
            )),
        ));
        let views = Arc::new(api::views::ViewCounter::default());
        tasks.push((
            "view counter",
            tokio::spawn(views.clone().run(state.clone(), stop_tasks.clone())),
        ));

        let app_state = AppState {
            cache: cache.clone(),
            communes,
            commands,
            log,
            state,
            views,
            cache_policy: CachePolicy {
                max_age: config.feed_max_age,
                stale_while_revalidate: config.feed_stale_while_revalidate,
                stale_if_error: config.feed_stale_if_error,
            },
            trust_forwarded_for: config.trust_forwarded_for,
        };
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on PANNEAU_HTTP_ADDR={}", config.http_addr))?;
        let ops = TcpListener::bind(config.ops_addr)
            .await
            .with_context(|| format!("cannot listen on PANNEAU_OPS_ADDR={}", config.ops_addr))?;
        Ok(Self {
            http,
            ops,
            router: api::router(app_state),
            ops_router: api::ops::router(api::ops::OpsState { health, cache }),
            tasks,
            stop_tasks,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_seconds),
            sqlite: Some(sqlite),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests and background tasks finish (within the shutdown timeout).
    ///
    /// # Errors
    /// When a listener fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let http_stop = stop.clone();
        let ops_stop = stop.clone();
        let http = axum::serve(
            self.http,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await });
        let ops = axum::serve(self.ops, self.ops_router)
            .with_graceful_shutdown(async move { ops_stop.cancelled().await });
        let http = tokio::spawn(http.into_future());
        let ops = tokio::spawn(ops.into_future());
        shutdown.await;
        tracing::info!("shutting down");
        stop.cancel();
        let drain = async {
            let (http, ops) = tokio::join!(http, ops);
            http.context("the HTTP server panicked")?
                .context("the HTTP server failed")?;
            ops.context("the ops server panicked")?
                .context("the ops server failed")?;
            self.stop_tasks.cancel();
            for (name, task) in self.tasks {
                match task.await {
                    Ok(()) => tracing::info!(task = name, "task stopped"),
                    Err(error) => tracing::error!(task = name, %error, "task failed"),
                }
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(self.shutdown_timeout, drain).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("shutdown timed out; stopping anyway"),
        }
        if let Some(sqlite) = self.sqlite {
            sqlite.close().await;
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
