//! Cluster mode's transport: NATS JetStream.
//!
//! - [`connect`] refuses a server older than 2.12.6 (older servers cannot fsync
//!   before acknowledging, and 2.9 silently ignores consumer subject filters).
//! - [`ensure_topology`] creates or updates, idempotently, the stream
//!   `PANNEAU_EVENTS`, the KV bucket `PANNEAU_FEEDS` and the durable consumers.
//! - [`Relay`] publishes committed outbox rows with `Nats-Msg-Id = event_id`.
//! - [`run_projector`] applies the stream to a read model (feeds, statistics).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, StorageType};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use panneau_domain::{Envelope, PublicationEvent};

use crate::codec::decode_event;
use crate::metrics::{ConsumerLabels, Metrics};
use crate::projector::Outcome;
use crate::readmodel::generations::Generations;
use crate::readmodel::kv::KvFeedStore;
use crate::readmodel::{FeedStore, Model};
use crate::store::sql::{CommitHook, OutboxRow, SqlStore};
use crate::store::{EventStore, NotificationStore, RecordedEvent};

pub const STREAM: &str = "PANNEAU_EVENTS";
pub const SUBJECTS: &str = "panneau.events.>";
/// The feed read model's first generation; `panneau replay feeds` builds the
/// next ones beside it (`PANNEAU_FEEDS_G2`, …).
pub const FEEDS_BUCKET: &str = "PANNEAU_FEEDS";
/// Small shared settings: which generation of each read model is live.
pub const META_BUCKET: &str = "PANNEAU_META";
/// The key of `META_BUCKET` naming the live generation of the feeds.
pub const FEEDS_GENERATION_KEY: &str = "feeds.generation";
/// The statistics read model's first generation (`panneau replay stats`
/// builds `PANNEAU_STATS_G2`, …).
pub const STATS_BUCKET: &str = "PANNEAU_STATS";
pub const STATS_GENERATION_KEY: &str = "stats.generation";
pub const FEED_CONSUMER: &str = "feed-projector";
pub const STATS_CONSUMER: &str = "stats-projector";
pub const NOTIFIER_CONSUMER: &str = "notifier";
/// How long a consumer waits for an acknowledgement before redelivering.
/// Short, because it is also how long messages wait when the acknowledgement
/// was lost: a consumer leader frozen while messages were in flight drops
/// the negative acknowledgements asking for them again, and its successor
/// redelivers them only once this has passed. Handling one message takes
/// milliseconds, a pulled batch is through in well under a second, and a
/// redelivery of one already handled is recognised as a duplicate.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// The oldest server Panneau accepts.
pub const MINIMUM_SERVER: (u64, u64, u64) = (2, 12, 6);
/// Longer than anything the relays do between two publications of one row (a
/// publish timeout, then the grace before another instance's relay takes over),
/// so a re-publication is recognised as a duplicate by the broker.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long an outbox row may wait for the instance that committed it before
/// any other instance's relay publishes it.
pub const RELAY_GRACE: Duration = Duration::from_secs(3);
/// How long one pull request of a projector waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How often the broker signals an idle pull request is still alive. Two
/// missed in a row and the request is made again: that is how a projector
/// notices its consumer moved to another leader (a server frozen, then
/// back), so it is short.
const PULL_HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a publish may wait for its acknowledgement before its outcome is
/// treated as unknown (and the row retried with the same id).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the broker cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "NATS server {found} is too old: Panneau needs nats-server {}.{}.{} or later (JetStream must fsync \
         before acknowledging, with `jetstream {{ sync_interval: always }}`)",
        MINIMUM_SERVER.0, MINIMUM_SERVER.1, MINIMUM_SERVER.2
    )]
    ServerTooOld { found: String },
    #[error("PANNEAU_NATS_URL holds an invalid server address {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot set up JetStream ({what}): {source}")]
    Topology {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Parses `2.12.6` (or `v2.12.6-beta`) into numbers.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let text = text.trim().trim_start_matches('v');
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Connects and checks the server version.
///
/// # Errors
/// `Connect` when the server cannot be reached; `ServerTooOld`.
/// Counts the connections made to the broker by this process: a KV watch
/// subscribes again after each one (see `KvFeedStore::watch`), since the
/// consumer behind it may not have survived what broke the connection.
pub static CONNECTIONS: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

pub async fn connect(url: &str) -> Result<async_nats::Client, BusError> {
    // A cluster is given as a comma-separated list of its servers.
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::InvalidUrl {
                    url: server.to_owned(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .name("panneau")
        // A frozen server accepts the TCP connection and never says hello:
        // a reconnection that tries it moves on to the next server after this.
        .connection_timeout(Duration::from_secs(2))
        // A server that stops answering (paused, partitioned) is left for
        // another of the list after three unanswered pings, about 6 s, rather
        // than the defaults' three minutes.
        .ping_interval(Duration::from_secs(2))
        // The default backoff grows to 4 s between attempts; a broker back
        // from an outage is found within half a second instead.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100 * u64::try_from(attempts.min(5)).unwrap_or(5))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                async_nats::Event::Connected => {
                    tracing::info!("connected to NATS");
                    CONNECTIONS.send_modify(|n| *n += 1);
                }
                other => tracing::debug!(event = %other, "NATS event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let found = client.server_info().version;
    match parse_version(&found) {
        Some(version) if version >= MINIMUM_SERVER => Ok(client),
        _ => Err(BusError::ServerTooOld { found }),
    }
}

fn topology_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> BusError {
    move |e| BusError::Topology {
        what,
        source: Box::new(e),
    }
}

/// The key of `META_BUCKET` naming the live generation of a read model.
pub fn generation_key(model: Model) -> &'static str {
    match model {
        Model::Feeds => FEEDS_GENERATION_KEY,
        Model::Stats => STATS_GENERATION_KEY,
    }
}

/// The durable consumer that projects the stream into a read model.
pub fn consumer_name(model: Model) -> &'static str {
    match model {
        Model::Feeds => FEED_CONSUMER,
        Model::Stats => STATS_CONSUMER,
    }
}

/// The bucket of a generation of a read model.
pub fn bucket(model: Model, generation: u64) -> String {
    let first = match model {
        Model::Feeds => FEEDS_BUCKET,
        Model::Stats => STATS_BUCKET,
    };
    if generation <= 1 {
        first.to_owned()
    } else {
        format!("{first}_G{generation}")
    }
}

/// The settings of a read model's bucket.
pub fn bucket_config(model: Model, generation: u64, replicas: usize) -> kv::Config {
    let holds = match model {
        Model::Feeds => "one document per commune and per publication",
        Model::Stats => "one document per publisher, and the publisher of each publication",
    };
    kv::Config {
        bucket: bucket(model, generation),
        description: format!(
            "Panneau's {} read model, generation {generation}: {holds}",
            model.name()
        ),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        max_value_size: 8 * 1024 * 1024,
        ..Default::default()
    }
}

/// The live generation of a read model as `META_BUCKET` records it (1 when
/// it records none).
///
/// # Errors
/// When the bucket cannot be read.
pub async fn live_generation(meta: &kv::Store, model: Model) -> Result<u64, BusError> {
    let entry = meta
        .get(generation_key(model))
        .await
        .map_err(topology_error("the live generation in PANNEAU_META"))?;
    Ok(entry
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok())
        .unwrap_or(1))
}

/// What the instance uses on the broker.
#[derive(Debug)]
pub struct Topology {
    /// The live generation of the feeds, and its bucket.
    pub feeds_generation: u64,
    pub feeds: kv::Store,
    /// The live generation of the statistics, and its bucket.
    pub stats_generation: u64,
    pub stats: kv::Store,
    pub meta: kv::Store,
    pub feed_consumer: PullConsumer,
    pub stats_consumer: PullConsumer,
    pub notifier_consumer: PullConsumer,
}

fn durable(name: &str, description: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(description.to_owned()),
        ack_policy: AckPolicy::Explicit,
        // Handlers take milliseconds and are idempotent: a message pulled by an
        // instance that died goes to another one after this, so feeds converge
        // within seconds of a crash (a redelivery costs nothing).
        ack_wait: ACK_WAIT,
        deliver_policy: DeliverPolicy::All,
        filter_subject: SUBJECTS.to_owned(),
        max_ack_pending: 1_000,
        ..Default::default()
    }
}

/// Creates or updates the stream, the bucket and the consumers (idempotent, so
/// every instance runs it at start).
///
/// # Errors
/// `Topology` naming what could not be set up.
pub async fn ensure_topology(js: &Context, replicas: usize) -> Result<Topology, BusError> {
    js.create_or_update_stream(stream::Config {
        name: STREAM.to_owned(),
        description: Some("Panneau's committed events, relayed from the MariaDB outbox".to_owned()),
        subjects: vec![SUBJECTS.to_owned()],
        storage: StorageType::File,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        duplicate_window: DUPLICATE_WINDOW,
        // The log of record is MariaDB; the stream keeps enough for consumers to
        // catch up after an outage (and replays read MariaDB).
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(topology_error("stream PANNEAU_EVENTS"))?;
    let meta = js
        .create_or_update_key_value(kv::Config {
            bucket: META_BUCKET.to_owned(),
            description: "Panneau: which generation of each read model is live".to_owned(),
            history: 10,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(topology_error("bucket PANNEAU_META"))?;
    let feeds_generation = live_generation(&meta, Model::Feeds).await?;
    let feeds = js
        .create_or_update_key_value(bucket_config(Model::Feeds, feeds_generation, replicas))
        .await
        .map_err(topology_error("the live feed bucket"))?;
    let stats_generation = live_generation(&meta, Model::Stats).await?;
    let stats = js
        .create_or_update_key_value(bucket_config(Model::Stats, stats_generation, replicas))
        .await
        .map_err(topology_error("the live statistics bucket"))?;
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(topology_error("stream PANNEAU_EVENTS"))?;
    let feed_consumer: PullConsumer = stream
        .create_consumer(durable(
            FEED_CONSUMER,
            "Feed projector, shared by every instance",
        ))
        .await
        .map_err(topology_error("consumer feed-projector"))?;
    let stats_consumer: PullConsumer = stream
        .create_consumer(durable(
            STATS_CONSUMER,
            "Statistics projector, shared by every instance",
        ))
        .await
        .map_err(topology_error("consumer stats-projector"))?;
    let notifier_consumer: PullConsumer = stream
        .create_consumer(durable(
            NOTIFIER_CONSUMER,
            "Notification projector: one job per notifying publication",
        ))
        .await
        .map_err(topology_error("consumer notifier"))?;
    Ok(Topology {
        feeds_generation,
        feeds,
        stats_generation,
        stats,
        meta,
        feed_consumer,
        stats_consumer,
        notifier_consumer,
    })
}

/// The subject an event is published on.
pub fn subject(stream_id: &str) -> String {
    format!("panneau.events.{stream_id}")
}

/// Wakes the local relay after a commit, so events reach the broker at once.
#[derive(Debug, Default)]
pub struct RelayNudge(pub Notify);

impl CommitHook for RelayNudge {
    fn committed(&self, _: &[RecordedEvent]) {
        self.0.notify_one();
    }
}

/// Publishes outbox rows. Runs on every instance; safe to run on all at once
/// (the broker deduplicates by event id, and each stream's rows go out in
/// version order, each only after the previous one was acknowledged).
pub struct Relay {
    pub store: SqlStore,
    pub js: Context,
    pub nudge: Arc<RelayNudge>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

/// One row could not be published; later rows of its stream wait.
#[derive(Debug, thiserror::Error)]
#[error("publishing event {event_id} failed: {reason}")]
pub struct PublishFailed {
    event_id: Uuid,
    reason: String,
}

impl Relay {
    /// Publishes until `shutdown`: at once after a local commit, every second
    /// for rows other instances left behind.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let wait = if failures == 0 {
                Duration::from_secs(1)
            } else {
                // Capped low: once the broker is back (a restarted cluster
                // elects its stream leaders within seconds), the backlog drains
                // at the next attempt. An attempt against a broker that is down
                // costs one request.
                Duration::from_millis(100 * 2u64.pow(failures.min(2)))
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.nudge.0.notified(), if failures == 0 => {}
                () = tokio::time::sleep(wait) => {}
            }
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(error = %error, failures, "outbox relay will retry");
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                if let Err(error) = self.store.prune_outbox(Duration::from_secs(3600)).await {
                    tracing::debug!(error = %error, "cannot prune the outbox");
                }
            }
        }
    }

    /// Publishes everything pending for this instance.
    async fn drain(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        loop {
            let rows = self.store.pending_outbox(RELAY_GRACE, 1024).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut streams: Vec<Vec<OutboxRow>> = Vec::new();
            for row in rows {
                match streams.last_mut() {
                    Some(current) if current[0].stream_id == row.stream_id => current.push(row),
                    _ => streams.push(vec![row]),
                }
            }
            let results: Vec<(Vec<Uuid>, Option<PublishFailed>)> =
                futures_util::stream::iter(streams)
                    .map(|rows| self.publish_stream(rows))
                    .buffer_unordered(256)
                    .collect()
                    .await;
            let mut acknowledged = Vec::new();
            let mut failure = None;
            for (ids, failed) in results {
                acknowledged.extend(ids);
                failure = failure.or(failed);
            }
            self.store.mark_published(&acknowledged).await?;
            if let Some(failure) = failure {
                return Err(Box::new(failure));
            }
        }
    }

    /// Publishes one stream's rows in version order, each after the previous
    /// one's acknowledgement; stops at the first failure.
    async fn publish_stream(&self, rows: Vec<OutboxRow>) -> (Vec<Uuid>, Option<PublishFailed>) {
        let mut acknowledged = Vec::with_capacity(rows.len());
        for row in rows {
            match self.publish(&row).await {
                Ok(()) => acknowledged.push(row.event_id),
                Err(reason) => {
                    return (
                        acknowledged,
                        Some(PublishFailed {
                            event_id: row.event_id,
                            reason,
                        }),
                    );
                }
            }
        }
        (acknowledged, None)
    }

    async fn publish(&self, row: &OutboxRow) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", row.event_id.to_string().as_str());
        let publish = async {
            self.js
                .publish_with_headers(
                    subject(&row.stream_id),
                    headers,
                    row.envelope.clone().into(),
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        // A timeout means "unknown": the row stays pending and is published again
        // with the same id, which the broker recognises.
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("no acknowledgement in time".to_owned()),
        }
    }
}

/// Messages one instance's projector works on at once.
const PROJECTOR_CONCURRENCY: usize = 32;

/// What to do with a message once handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or nothing to do): acknowledge.
    Done,
    /// Not now: hand it back to be delivered again after this delay.
    Later(Duration),
}

/// Consumes a durable pull consumer until `shutdown`, `concurrency` messages at
/// once, decoding each event and acknowledging it as `handle` says. An event
/// that does not decode is terminated and reported loudly, never skipped silently.
pub async fn consume<F, Fut>(
    consumer: PullConsumer,
    name: &'static str,
    concurrency: usize,
    metrics: &Metrics,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(Envelope<PublicationEvent>) -> Fut,
    Fut: std::future::Future<Output = Disposition>,
{
    loop {
        // Short pull requests with frequent heartbeats: after the whole broker
        // restarts, a lost pull is noticed in about a second rather than the
        // thirty of the defaults.
        let messages = match consumer
            .stream()
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(consumer = name, error = %error, "cannot pull; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let handle = &handle;
        messages
            .take_until(shutdown.cancelled())
            .take_while(|next| {
                let ok = next.is_ok();
                if let Err(error) = next {
                    tracing::warn!(consumer = name, error = %error, "lost the pull subscription");
                }
                std::future::ready(ok)
            })
            .for_each_concurrent(concurrency, |next| async move {
                let Ok(message) = next else { return };
                let kind = match decode_event(&message.payload) {
                    Ok(envelope) => match handle(envelope).await {
                        Disposition::Done => AckKind::Ack,
                        Disposition::Later(delay) => {
                            metrics.consumer_redeliveries.get_or_create(&ConsumerLabels { consumer: name }).inc();
                            AckKind::Nak(Some(delay))
                        }
                    },
                    Err(error) => {
                        tracing::error!(consumer = name, error = %error, subject = %message.subject, "undecodable event on the bus");
                        AckKind::Term
                    }
                };
                if let Err(error) = message.ack_with(kind).await {
                    tracing::warn!(consumer = name, error = %error, "cannot acknowledge; the message will come again");
                }
            })
            .await;
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Applies the event stream to the feed read model through the shared durable
/// consumer. A redelivered event is acknowledged without effect; an event whose
/// predecessor has not been applied yet is handed back for later.
pub async fn run_projector(
    model: Model,
    consumer: PullConsumer,
    feeds: Arc<dyn FeedStore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let feeds = feeds.as_ref();
    let handle = |envelope: Envelope<PublicationEvent>| async move {
        match model.project(feeds, &envelope).await {
            Ok(Outcome::Applied | Outcome::Duplicate) => Disposition::Done,
            Ok(Outcome::Gap { expected }) => {
                tracing::debug!(stream = %envelope.stream_id, expected, "waiting for an earlier event");
                Disposition::Later(Duration::from_millis(100))
            }
            Err(error) => {
                // Soon: the broker's leaders come back within seconds of each
                // other, and each event waits only for its own documents.
                tracing::warn!(error = %error, stream = %envelope.stream_id, "cannot project; will retry");
                Disposition::Later(Duration::from_millis(300))
            }
        }
    };
    consume(
        consumer,
        consumer_name(model),
        PROJECTOR_CONCURRENCY,
        &metrics,
        shutdown,
        handle,
    )
    .await;
}

/// Creates notification jobs from the event stream (see `notifier::on_event`).
pub async fn run_notifier(
    consumer: PullConsumer,
    log: Arc<dyn EventStore>,
    jobs: Arc<dyn NotificationStore>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (log, jobs, wake) = (log.as_ref(), jobs.as_ref(), wake.as_ref());
    let handle = |envelope: Envelope<PublicationEvent>| async move {
        match crate::notifier::on_event(log, jobs, &envelope).await {
            Ok(()) => {
                wake.notify_one();
                Disposition::Done
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot record a notification job; will retry");
                Disposition::Later(Duration::from_secs(1))
            }
        }
    };
    consume(consumer, NOTIFIER_CONSUMER, 8, &metrics, shutdown, handle).await;
}

/// Follows the live generation of a read model: when `panneau replay`
/// switches it, this instance's readers and projector move to the new bucket
/// at once (see `Generations`).
pub async fn follow_generation(
    model: Model,
    js: Context,
    meta: kv::Store,
    generations: Arc<Generations>,
    shutdown: CancellationToken,
) {
    loop {
        // Bounded as the feed watch is: an attempt made while the bucket
        // has no leader is otherwise answered only by the client's 10 s
        // request timeout, and a replay's switch would wait that long.
        let subscribe = tokio::time::timeout(
            crate::readmodel::kv::SUBSCRIBE_TIMEOUT,
            meta.watch(generation_key(model)),
        );
        let mut watch = match subscribe.await {
            Ok(Ok(watch)) => watch,
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "cannot watch the live generation; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Err(_) if shutdown.is_cancelled() => return,
            Err(_) => {
                tracing::debug!("watching the live generation timed out; retrying");
                continue;
            }
        };
        // A switch made while this instance was not watching.
        if let Ok(generation) = live_generation(&meta, model).await {
            switch(model, &js, &generations, generation).await;
        }
        loop {
            let entry = tokio::select! {
                () = shutdown.cancelled() => return,
                entry = watch.next() => entry,
            };
            match entry {
                Some(Ok(entry)) => {
                    let generation = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                    if let Some(generation) = generation {
                        switch(model, &js, &generations, generation).await;
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(error = %error, "generation watch interrupted; resubscribing");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn switch(model: Model, js: &Context, generations: &Generations, generation: u64) {
    if generation <= generations.generation() {
        return;
    }
    loop {
        match js.get_key_value(bucket(model, generation)).await {
            Ok(bucket) => {
                if generations.switch(generation, Arc::new(KvFeedStore::new(bucket))) {
                    tracing::info!(
                        generation,
                        model = model.name(),
                        "now serving generation {generation}"
                    );
                }
                return;
            }
            Err(error) => {
                tracing::warn!(generation, model = model.name(), error = %error, "cannot open the new generation; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_compared_numerically() {
        assert_eq!(parse_version("2.12.6"), Some((2, 12, 6)));
        assert_eq!(parse_version("v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.12.10-beta.1"), Some((2, 12, 10)));
        assert!(parse_version("2.9.10").unwrap() < MINIMUM_SERVER);
        assert!(parse_version("2.12.10").unwrap() > MINIMUM_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }
}
