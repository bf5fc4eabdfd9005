//! Building and running one Panneau instance: `Application::build(config)` wires
//! the stores, projectors, cache and listeners of the configured mode;
//! `run_until_stopped(shutdown)` serves until the shutdown future resolves, then
//! drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;

use panneau_projections::Communes;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{self, AppState, CachePolicy};
use crate::bus::LocalBus;
use crate::bus::jetstream::{self, Relay, RelayNudge};
use crate::commands::CommandHandler;
use crate::config::{Config, Mode};
use crate::health::{Dependency, Health};
use crate::metrics::{ConsumerLabels, DependencyLabels, Metrics, PoolLabels};
use crate::notifier::{self, FanOut, NotifierSettings};
use crate::push::apns::ApnsGateway;
use crate::push::fcm::FcmGateway;
use crate::push::webpush::WebPushGateway;
use crate::push::{Gateways, RateLimiter};
use crate::readmodel::cache::FeedCache;
use crate::readmodel::generations::Generations;
use crate::readmodel::kv::KvFeedStore;
use crate::readmodel::{FeedStore, MemoryFeedStore, Model};
use crate::secrets::Secrets;
use crate::store::sql::{Dialect, PoolSettings, SqlStore};
use crate::store::{EventStore, StateStore};
use crate::subscription::Endpoints;
use crate::tokens::TokenHasher;
use crate::{projector, scheduler};
use secrecy::ExposeSecret;

/// The 34,969 current communes, built in (Etalab, MIT licence; see `data/`).
pub static COMMUNES: LazyLock<Arc<Communes>> = LazyLock::new(|| {
    Arc::new(
        Communes::from_tsv(include_str!("../data/communes.tsv"))
            .expect("the built-in commune list parses"),
    )
});

type Tasks = Vec<(&'static str, JoinHandle<()>)>;

/// A built instance, listeners bound, background tasks running.
pub struct Application {
    http: TcpListener,
    ops: TcpListener,
    api: api::fast::Api,
    ops_router: axum::Router,
    tasks: Tasks,
    stop_tasks: CancellationToken,
    shutdown_timeout: Duration,
    store: SqlStore,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("http", &self.http.local_addr().ok())
            .field("ops", &self.ops.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// What a mode provides to the common part of an instance.
struct Backend {
    store: SqlStore,
    feeds: Arc<dyn FeedStore>,
    stats: Arc<dyn FeedStore>,
    nats: Option<async_nats::Client>,
    /// Durable consumers whose lag the metrics report.
    consumers: Vec<(&'static str, async_nats::jetstream::consumer::PullConsumer)>,
}

/// The push gateways the configuration asks for, with keys from the secrets
/// when they hold them (else from the files the configuration names).
///
/// # Errors
/// When a configured gateway cannot be set up (a missing key file, say).
pub fn gateways(config: &Config, secrets: &Secrets) -> anyhow::Result<Gateways> {
    let mut gateways = Gateways::default();
    if let Some(json) = secrets.get("fcm_credentials") {
        gateways.fcm = Some(Arc::new(FcmGateway::from_json(
            json.expose_secret(),
            &config.fcm_endpoint,
        )?));
    } else if let Some(credentials) = &config.fcm_credentials {
        gateways.fcm = Some(Arc::new(FcmGateway::new(
            credentials,
            &config.fcm_endpoint,
        )?));
    }
    if let (Some(key_id), Some(team), Some(topic)) = (
        &config.apns_key_id,
        &config.apns_team_id,
        &config.apns_topic,
    ) {
        let gateway = match (secrets.get("apns_key"), &config.apns_key) {
            (Some(pem), _) => ApnsGateway::from_pem(
                pem.expose_secret().as_bytes(),
                key_id,
                team,
                topic,
                config.apns_sandbox,
            )?,
            (None, Some(path)) => ApnsGateway::new(path, key_id, team, topic, config.apns_sandbox)?,
            (None, None) => anyhow::bail!(
                "APNs is configured but its key is neither PANNEAU_APNS_KEY nor the apns_key secret"
            ),
        };
        gateways.apns = Some(Arc::new(gateway));
    }
    let endpoints = webpush_endpoints(config);
    if let Some(pem) = secrets.get("webpush_vapid_key") {
        gateways.webpush = Some(Arc::new(WebPushGateway::from_pem(
            pem.expose_secret(),
            &config.webpush_contact,
            endpoints,
        )?));
    } else if let Some(key) = &config.webpush_vapid_key {
        gateways.webpush = Some(Arc::new(WebPushGateway::new(
            key,
            &config.webpush_contact,
            endpoints,
        )?));
    }
    Ok(gateways)
}

fn webpush_endpoints(config: &Config) -> Endpoints {
    if config.webpush_allow_loopback {
        Endpoints::AlsoLoopback
    } else {
        Endpoints::PushServices
    }
}

fn notifier_settings(config: &Config) -> NotifierSettings {
    NotifierSettings {
        privacy: config.push_privacy,
        ttl: Duration::from_secs(config.push_ttl_seconds),
        stale_after: Duration::from_secs(config.push_stale_after_seconds),
        urgent_stale_after: Duration::from_secs(config.push_urgent_stale_after_seconds),
        rate_per_second: config.push_rate_per_second,
        concurrency: config.push_concurrency,
        lease: Duration::from_secs(config.push_lease_seconds),
        ..NotifierSettings::default()
    }
}

/// Opens the SQL store and applies migrations. A MariaDB that cannot be reached
/// does not stop the instance: it serves reads and answers commands with 503
/// until the database returns.
async fn open_store(config: &Config, secrets: &Secrets) -> anyhow::Result<SqlStore> {
    let url = secrets.database_url(&config.database_url());
    let settings = PoolSettings {
        max_connections: config.database_max_connections,
        acquire_timeout: Duration::from_millis(config.database_acquire_timeout_ms),
    };
    let store = SqlStore::connect(&url, &settings)
        .await
        .context("cannot open the database (PANNEAU_DATABASE_URL)")?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match store.migrate().await {
            Ok(()) => return Ok(store),
            Err(error) if error.is_unavailable() && matches!(config.mode(), Mode::Cluster) => {
                tracing::warn!(error = %error, "the database cannot be reached at start; serving reads, commands get 503");
                return Ok(store);
            }
            // Instances starting together may race on the migrations table.
            Err(error) if attempts < 3 => {
                tracing::warn!(error = %error, "migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("cannot migrate the database"),
        }
    }
}

impl Application {
    /// # Errors
    /// When a store cannot be opened, NATS is unreachable or too old, or a
    /// listener cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::install_crypto();
        let communes = COMMUNES.clone();
        let metrics = Arc::new(Metrics::new());
        let secrets = Secrets::load(&config, metrics.clone())
            .await
            .context("cannot read the secrets (PANNEAU_SECRETS)")?;
        let gateways = gateways(&config, &secrets).context("cannot set up the push gateways")?;
        let wake_fanout = Arc::new(Notify::new());
        let health = Arc::new(Health::default());
        let stop_tasks = CancellationToken::new();
        let mut tasks: Tasks = Vec::new();

        let backend = match config.mode() {
            Mode::Embedded { .. } => {
                let bus = LocalBus::new(4096);
                let store = open_store(&config, &secrets)
                    .await?
                    .with_commit_hook(Arc::new(bus.clone()));
                let feeds = Arc::new(MemoryFeedStore::default());
                let stats = Arc::new(MemoryFeedStore::default());
                // Subscribe before reading the log so that nothing committed in between is missed.
                let committed = bus.subscribe();
                let for_stats = bus.subscribe();
                let for_notifier = bus.subscribe();
                let log: Arc<dyn EventStore> = Arc::new(store.clone());
                for (model, target, received, task) in [
                    (Model::Feeds, feeds.clone(), committed, "feed projector"),
                    (Model::Stats, stats.clone(), for_stats, "stats projector"),
                ] {
                    let position = projector::catch_up(model, log.as_ref(), target.as_ref(), 0)
                        .await
                        .with_context(|| {
                            format!("cannot rebuild the {} from the event log", model.name())
                        })?;
                    tracing::info!(
                        position,
                        documents = target.len(),
                        "{} rebuilt from the event log",
                        model.name()
                    );
                    tasks.push((
                        task,
                        tokio::spawn(projector::run_embedded(
                            model,
                            log.clone(),
                            target,
                            received,
                            position,
                            stop_tasks.clone(),
                        )),
                    ));
                }
                tasks.push((
                    "notifier",
                    tokio::spawn(notifier::run_embedded(
                        log,
                        Arc::new(store.clone()),
                        for_notifier,
                        wake_fanout.clone(),
                        stop_tasks.clone(),
                    )),
                ));
                Backend {
                    store,
                    feeds,
                    stats,
                    nats: None,
                    consumers: Vec::new(),
                }
            }
            Mode::Cluster => {
                let nudge = Arc::new(RelayNudge::default());
                let store = open_store(&config, &secrets)
                    .await?
                    .with_commit_hook(nudge.clone());
                let nats_url = config
                    .nats_url
                    .as_deref()
                    .context("PANNEAU_NATS_URL is required in cluster mode")?;
                let client = jetstream::connect(nats_url).await?;
                let js = async_nats::jetstream::new(client.clone());
                // A broker cluster that is still electing its leaders times
                // requests out for a while (longer on a loaded machine): keep
                // trying for two minutes.
                let mut attempts = 0;
                let topology = loop {
                    match jetstream::ensure_topology(&js, config.nats_replicas).await {
                        Ok(topology) => break topology,
                        Err(error) if attempts < 24 => {
                            attempts += 1;
                            tracing::warn!(error = %error, attempts, "cannot set up JetStream yet; retrying");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                };
                let mut models: Vec<Arc<dyn FeedStore>> = Vec::new();
                for (model, generation, bucket, consumer, names) in [
                    (
                        Model::Feeds,
                        topology.feeds_generation,
                        topology.feeds,
                        topology.feed_consumer.clone(),
                        ["feed generation follower", "feed projector"],
                    ),
                    (
                        Model::Stats,
                        topology.stats_generation,
                        topology.stats,
                        topology.stats_consumer.clone(),
                        ["stats generation follower", "stats projector"],
                    ),
                ] {
                    let generations = Arc::new(Generations::new(
                        generation,
                        Arc::new(KvFeedStore::new(bucket)),
                    ));
                    tasks.push((
                        names[0],
                        tokio::spawn(jetstream::follow_generation(
                            model,
                            js.clone(),
                            topology.meta.clone(),
                            generations.clone(),
                            stop_tasks.clone(),
                        )),
                    ));
                    let store: Arc<dyn FeedStore> = generations;
                    tasks.push((
                        names[1],
                        tokio::spawn(jetstream::run_projector(
                            model,
                            consumer,
                            store.clone(),
                            metrics.clone(),
                            stop_tasks.clone(),
                        )),
                    ));
                    models.push(store);
                }
                let (feeds, stats) = (models[0].clone(), models[1].clone());
                tasks.push((
                    "notifier",
                    tokio::spawn(jetstream::run_notifier(
                        topology.notifier_consumer.clone(),
                        Arc::new(store.clone()),
                        Arc::new(store.clone()),
                        wake_fanout.clone(),
                        metrics.clone(),
                        stop_tasks.clone(),
                    )),
                ));
                let relay = Relay {
                    store: store.clone(),
                    js,
                    nudge,
                };
                tasks.push(("outbox relay", tokio::spawn(relay.run(stop_tasks.clone()))));
                Backend {
                    store,
                    feeds,
                    stats,
                    nats: Some(client),
                    consumers: vec![
                        (jetstream::FEED_CONSUMER, topology.feed_consumer),
                        (jetstream::STATS_CONSUMER, topology.stats_consumer),
                        (jetstream::NOTIFIER_CONSUMER, topology.notifier_consumer),
                    ],
                }
            }
        };

        let Backend {
            store,
            feeds,
            stats,
            nats,
            consumers,
        } = backend;
        let log: Arc<dyn EventStore> = Arc::new(store.clone());
        let state: Arc<dyn StateStore> = Arc::new(store.clone());
        let mut cache = FeedCache::new(
            feeds.clone(),
            communes.clone(),
            config.feed_cache_bytes,
            metrics.clone(),
        );
        if nats.is_some() {
            // The bucket's replicas elect their leaders seconds apart after a
            // broker restart: a sixteenth of the budget keeps the documents
            // its watch delivered in the last minute.
            cache = cache.keeping_recent_documents(config.feed_cache_bytes / 16);
        }
        let cache = Arc::new(cache);
        let follower = cache.clone();
        let changes = feeds.watch();
        let token = stop_tasks.clone();
        tasks.push((
            "cache follower",
            tokio::spawn(async move { follower.follow(changes, token).await }),
        ));
        if let Some(client) = &nats {
            tasks.push((
                "feed overlay",
                tokio::spawn(crate::overlay::run(
                    store.clone(),
                    cache.clone(),
                    client.clone(),
                    stop_tasks.clone(),
                )),
            ));
        }
        let commands = CommandHandler::new(log.clone(), metrics.clone());
        tasks.push((
            "scheduler",
            tokio::spawn(scheduler::run(
                log.clone(),
                commands.clone(),
                stop_tasks.clone(),
            )),
        ));
        // Fan-out jobs are shared through the store: an instance that could
        // send to no device must not claim one, or its devices would be
        // counted failed while another instance could have reached them.
        if gateways.is_empty() {
            tracing::info!("no push gateway configured: this instance takes no fan-out work");
        } else {
            let settings = notifier_settings(&config);
            let fanout = FanOut {
                store: Arc::new(store.clone()),
                metrics: metrics.clone(),
                gateways,
                rate: Arc::new(RateLimiter::new(settings.rate_per_second)),
                settings,
                owner: Uuid::now_v7(),
            };
            tasks.push((
                "fan-out",
                tokio::spawn(fanout.run(wake_fanout, stop_tasks.clone())),
            ));
        }
        if let Some(vault) = secrets.vault.clone() {
            tasks.push((
                "vault token",
                tokio::spawn(vault.keep_renewed(stop_tasks.clone())),
            ));
        }
        let views = Arc::new(api::views::ViewCounter::default());
        tasks.push((
            "view counter",
            tokio::spawn(views.clone().run(state.clone(), stop_tasks.clone())),
        ));
        tasks.push((
            "health monitor",
            tokio::spawn(monitor_health(
                health.clone(),
                metrics.clone(),
                store.clone(),
                nats,
                consumers,
                stop_tasks.clone(),
            )),
        ));
        health.set_read_model(Dependency::Up);

        let app_state = AppState::new(api::Shared {
            cache: cache.clone(),
            communes,
            commands,
            log,
            state,
            stats,
            views,
            devices: Arc::new(store.clone()),
            jobs: Arc::new(store.clone()),
            registrations: Arc::new(api::devices::registration_limit()),
            webpush_endpoints: webpush_endpoints(&config),
            metrics: metrics.clone(),
            token_hasher: TokenHasher::new(secrets.get("token_pepper").cloned()),
            cache_policy: CachePolicy::new(
                config.feed_max_age,
                config.feed_stale_while_revalidate,
                config.feed_stale_if_error,
            ),
            trust_forwarded_for: config.trust_forwarded_for,
            tokens: api::token_cache(),
        });
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on PANNEAU_HTTP_ADDR={}", config.http_addr))?;
        let ops = TcpListener::bind(config.ops_addr)
            .await
            .with_context(|| format!("cannot listen on PANNEAU_OPS_ADDR={}", config.ops_addr))?;
        Ok(Self {
            http,
            ops,
            api: api::fast::Api::new(api::router(app_state.clone()), app_state),
            ops_router: api::ops::router(api::ops::OpsState {
                health,
                cache,
                metrics,
            }),
            tasks,
            stop_tasks,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_seconds),
            store,
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
        let http = crate::serve::serve(self.http, self.api, http_stop);
        let ops = axum::serve(self.ops, self.ops_router)
            .with_graceful_shutdown(async move { ops_stop.cancelled().await });
        let http = tokio::spawn(http);
        let ops = tokio::spawn(ops.into_future());
        shutdown.await;
        tracing::info!("shutting down");
        stop.cancel();
        let drain = async {
            let (http, ops) = tokio::join!(http, ops);
            http.context("the HTTP server panicked")?;
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
        self.store.close().await;
        Ok(())
    }
}

/// Keeps `/readyz` and the gauges honest: every second, pings the database and
/// reads the broker connection state; every five, samples the outbox backlog and
/// the consumers' lag.
async fn monitor_health(
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    store: SqlStore,
    nats: Option<async_nats::Client>,
    mut consumers: Vec<(&'static str, async_nats::jetstream::consumer::PullConsumer)>,
    shutdown: CancellationToken,
) {
    let level = |d: Dependency| match d {
        Dependency::Up => 1.0,
        Dependency::Degraded => 0.5,
        Dependency::Down => 0.0,
    };
    let mut tick: u64 = 0;
    loop {
        let database = match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(true) => Dependency::Up,
            _ => Dependency::Down,
        };
        health.set_database(database);
        if let Some(client) = &nats {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            health.set_bus(if connected {
                Dependency::Up
            } else {
                Dependency::Down
            });
            // Without the broker the cache still serves what it holds.
            health.set_read_model(if connected {
                Dependency::Up
            } else {
                Dependency::Degraded
            });
            metrics.nats_connected.set(i64::from(connected));
        }
        for (name, state) in [
            ("database", health.database()),
            ("bus", health.bus()),
            ("read_model", health.read_model()),
        ] {
            metrics
                .dependency_up
                .get_or_create(&DependencyLabels { dependency: name })
                .set(level(state));
        }
        let (size, idle) = store.pool_usage();
        metrics
            .db_pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(idle));
        metrics
            .db_pool_connections
            .get_or_create(&PoolLabels { state: "active" })
            .set(i64::from(size.saturating_sub(idle)));
        if tick.is_multiple_of(5)
            && database == Dependency::Up
            && store.dialect() == Dialect::MariaDb
            && let Ok((backlog, oldest)) = store.outbox_backlog().await
        {
            metrics
                .outbox_backlog
                .set(i64::try_from(backlog).unwrap_or(i64::MAX));
            let age = oldest.map_or(0, |t| t.micros_until(crate::now()));
            metrics.outbox_oldest_age.set(age as f64 / 1e6);
        }
        if tick.is_multiple_of(5) {
            for (name, consumer) in &mut consumers {
                if let Ok(Ok(info)) =
                    tokio::time::timeout(Duration::from_secs(2), consumer.info()).await
                {
                    let labels = ConsumerLabels { consumer: name };
                    metrics
                        .consumer_pending
                        .get_or_create(&labels)
                        .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                    metrics
                        .consumer_ack_pending
                        .get_or_create(&labels)
                        .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                }
            }
        }
        tick += 1;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
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
