//! `panneau replay`: rebuilds a read model from the MariaDB log, the source of
//! truth, into a new generation, then switches every instance to it at once.
//!
//! The feeds, step by step:
//! 1. create the bucket of the next generation beside the live one;
//! 2. fold the whole log in memory (the pure `FeedProjection`) and write every
//!    document into the new bucket;
//! 3. tail the log into it (the idempotent `project`) until it has caught up;
//! 4. switch the live generation in `PANNEAU_META` (compare-and-set: two
//!    replays cannot both switch); instances move their readers and projector
//!    at once (`Generations`);
//! 5. keep tailing for a grace period, for the events live projectors applied
//!    to the old generation before they saw the switch.
//!
//! Readers serve the old generation until step 4. A replay only writes the new
//! bucket: it never creates a notification job nor sends a push.
//!
//! `--verify` folds the log in memory and compares it with the live model.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self as js, kv};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use panneau_domain::{
    Envelope, InseeCode, PublicationEvent, PublicationId, PublicationState, PublisherId,
};
use panneau_projections::feed::Gap;
use panneau_projections::{FeedDocument, FeedProjection, PublisherStats, StatsProjection};
use tokio::sync::mpsc;

use crate::bus::jetstream::{self as bus, bucket, bucket_config, generation_key, live_generation};
use crate::codec::{decode_document, encode_document};
use crate::projector::Outcome;
use crate::readmodel::kv::KvFeedStore;
use crate::readmodel::{
    FeedStore, Model, ReadModelError, feed_key, owner_key, publication_key, stats_key,
};
use crate::store::{EventStore, RecordedEvent};

/// Documents written to the new bucket in one atomic batch: the broker
/// stores (and, with `sync_interval: always`, syncs) a batch at once, where
/// single puts cost a disk sync each.
const WRITE_BATCH: usize = 1000;
/// Batches in flight at once.
const BATCHES_IN_FLIGHT: usize = 8;
/// Events a tail pass reads again before where the last one stopped: MariaDB
/// hands out positions at insert and transactions commit in another order, so
/// an event may become visible behind one already read. Applying twice is
/// harmless (`project` is idempotent).
const TAIL_MARGIN: i64 = 1_000;
/// How long the new generation keeps being tailed after the switch: longer
/// than an instance takes to see the switch.
pub const SWITCH_GRACE: Duration = Duration::from_secs(5);

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub generation: u64,
    pub events: u64,
    pub documents: u64,
    /// From the start to the switch: the rebuild itself.
    pub until_switch: Duration,
    /// Including the grace period after the switch.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Events rebuilt per second, up to the switch.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.until_switch.as_secs_f64().max(1e-9)
    }
}

/// A progress bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: ProgressBar,
    terminal: bool,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    /// A bar among `bars`, which draws them together on a terminal.
    fn new(bars: &MultiProgress, phase: &str, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
        let template = match total {
            Some(_) => {
                "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, {eta} left)"
            }
            None => "{msg:>10} [{elapsed_precise}] {human_pos} ({per_sec})",
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(phase.to_owned());
        let bar = if terminal { bars.add(bar) } else { bar };
        Self {
            bar,
            terminal,
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        if !self.terminal && self.last_line.elapsed() > Duration::from_secs(2) {
            self.last_line = Instant::now();
            self.line();
        }
    }

    fn line(&self) {
        let done = self.bar.position();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match self.bar.length() {
            Some(total) => eprintln!("{}: {done}/{total} ({rate:.0}/s)", self.bar.message()),
            None => eprintln!("{}: {done} ({rate:.0}/s)", self.bar.message()),
        }
    }

    fn finish(self) {
        if self.terminal {
            self.bar.finish();
        } else {
            self.line();
        }
    }
}

/// A read model folded in memory.
#[derive(Debug)]
pub enum Folded {
    Feeds(FeedProjection),
    Stats(StatsProjection),
}

impl Folded {
    fn new(model: Model) -> Self {
        match model {
            Model::Feeds => Folded::Feeds(FeedProjection::default()),
            Model::Stats => Folded::Stats(StatsProjection::default()),
        }
    }

    fn apply(&mut self, envelope: &Envelope<PublicationEvent>) -> Result<(), Gap> {
        match self {
            Folded::Feeds(p) => p.apply(envelope),
            Folded::Stats(p) => p.apply(envelope),
        }
    }

    /// Once every event is in: boards as a fold in time order leaves them.
    fn settle(&mut self) {
        if let Folded::Feeds(p) = self {
            p.settle();
        }
    }

    /// The document of one publication, taken out of the model once its
    /// stream has been folded whole.
    fn take_finished(&mut self, id: &PublicationId) -> Option<Document> {
        match self {
            Folded::Feeds(p) => p.take_record(id).map(Document::Record),
            Folded::Stats(p) => p.take_owner(id).map(|owner| Document::Owner(*id, owner)),
        }
    }

    /// Every document left, taking the model apart.
    fn into_documents(self) -> Box<dyn Iterator<Item = Document> + Send> {
        match self {
            Folded::Feeds(p) => {
                let (records, feeds) = p.into_parts();
                Box::new(
                    records
                        .map(Document::Record)
                        .chain(feeds.map(|(code, doc)| Document::Feed(code, doc))),
                )
            }
            Folded::Stats(p) => {
                let (owners, shards) = p.into_parts();
                Box::new(owners.map(|(id, owner)| Document::Owner(id, owner)).chain(
                    shards.map(|(publisher, shard, doc)| Document::Stats(publisher, shard, doc)),
                ))
            }
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            Folded::Feeds(p) => p
                .records()
                .map(|r| publication_key(&r.id))
                .chain(p.feeds().map(|(code, _)| feed_key(code)))
                .collect(),
            Folded::Stats(p) => p
                .owners()
                .map(|(id, _)| owner_key(id))
                .chain(
                    p.shards()
                        .map(|(publisher, shard, _)| stats_key(publisher, shard)),
                )
                .collect(),
        }
    }
}

/// A document of a folded model, as the projectors store it.
#[derive(Debug)]
enum Document {
    Record(PublicationState),
    Feed(InseeCode, FeedDocument),
    Owner(PublicationId, PublisherId),
    Stats(PublisherId, u8, PublisherStats),
}

impl Document {
    fn encode(&self) -> (String, Bytes) {
        let (key, value) = match self {
            Document::Record(r) => (publication_key(&r.id), encode_document(r)),
            Document::Feed(code, doc) => (feed_key(code), encode_document(doc)),
            Document::Owner(id, owner) => (owner_key(id), encode_document(owner)),
            Document::Stats(publisher, shard, doc) => {
                (stats_key(publisher, *shard), encode_document(doc))
            }
        };
        (key, Bytes::from(value))
    }
}

/// Events handed at once from the reader to the folding thread.
const FOLD_CHUNK: usize = 1_024;

/// Folds the whole log; returns the model (unless its documents went to
/// `finished`), the last position read and the number of events.
///
/// The log is read one stream after the other (its primary key's order,
/// which MariaDB streams without sorting a million rows first), since a
/// stream's events depend only on each other; reading and decoding (this
/// task) run beside the fold (a blocking thread). With `finished`, each
/// publication's document leaves the model as soon as its stream has been
/// read whole, so the writer stores it while the fold goes on, and the rest
/// follows at the end.
///
/// # Errors
/// When the log cannot be read or has a hole, or the writer stopped.
async fn fold_log(
    model: Model,
    log: &dyn EventStore,
    total: Option<u64>,
    progress: &MultiProgress,
    finished: Option<mpsc::Sender<Document>>,
) -> anyhow::Result<(Option<Folded>, i64, u64)> {
    let (chunks, mut inbox) = mpsc::channel::<Vec<RecordedEvent>>(16);
    let folder = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Folded>> {
        let stopped = || anyhow::anyhow!("the writer of the new generation stopped");
        let mut projection = Folded::new(model);
        let mut current: Option<PublicationId> = None;
        while let Some(chunk) = inbox.blocking_recv() {
            for event in &chunk {
                if let Some(sink) = &finished {
                    let id = event.envelope.payload.publication_id();
                    if let Some(done) = current.replace(id).filter(|done| *done != id)
                        && let Some(document) = projection.take_finished(&done)
                    {
                        sink.blocking_send(document).map_err(|_| stopped())?;
                    }
                }
                projection.apply(&event.envelope).map_err(|gap| {
                    anyhow::anyhow!(
                        "event {} of {} {gap}, which the log does not hold before it",
                        event.position,
                        event.envelope.stream_id
                    )
                })?;
            }
        }
        projection.settle();
        let Some(sink) = finished else {
            return Ok(Some(projection));
        };
        for document in projection.into_documents() {
            sink.blocking_send(document).map_err(|_| stopped())?;
        }
        Ok(None)
    });
    let mut progress = Progress::new(progress, "fold", total);
    let (mut position, mut events) = (0, 0);
    let mut stream = log.read_by_stream().try_chunks(FOLD_CHUNK);
    let read: anyhow::Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| e.1)
                .context("cannot read the event log")?;
            position = chunk.iter().map(|e| e.position).fold(position, i64::max);
            events += chunk.len() as u64;
            progress.inc(chunk.len() as u64);
            // A closed channel means the fold stopped on an error, told below.
            if chunks.send(chunk).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(chunks);
    let folded = folder.await.context("the folding thread failed")?;
    read?;
    let projection = folded?;
    progress.finish();
    Ok((projection, position, events))
}

/// Writes the documents of a fold into the (new, unread) bucket `name` as
/// they come, in atomic batches: each batch is stored whole or not at all,
/// and its acknowledgement comes once it is durable. Returns how many.
async fn write_documents(
    context: js::Context,
    name: String,
    progress: MultiProgress,
    mut documents: mpsc::Receiver<Document>,
) -> anyhow::Result<u64> {
    let (context, name, progress) = (&context, name.as_str(), &progress);
    let stream_name = format!("KV_{name}");
    let mut stream = context
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("cannot open the stream {stream_name}"))?;
    let mut config = stream
        .info()
        .await
        .context("cannot read the new bucket's configuration")?
        .config
        .clone();
    config.allow_atomic_publish = true;
    context
        .update_stream(config)
        .await
        .context("the broker refuses atomic batches (nats-server 2.12 or later is needed)")?;
    let mut progress = Progress::new(progress, "write", None);
    let client = context.client();
    let mut batches = stream::poll_fn(|cx| documents.poll_recv(cx))
        .chunks(WRITE_BATCH)
        .map(|batch| {
            let client = &client;
            async move {
                let id = uuid::Uuid::now_v7().to_string();
                let last = batch.len();
                for (sequence, document) in batch.iter().enumerate() {
                    let (key, value) = document.encode();
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
                    headers.insert(
                        async_nats::header::NATS_BATCH_SEQUENCE,
                        (sequence + 1).to_string().as_str(),
                    );
                    let subject = format!("$KV.{name}.{key}");
                    if sequence + 1 < last {
                        client
                            .publish_with_headers(subject, headers, value)
                            .await
                            .context("cannot send to the broker")?;
                    } else {
                        headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
                        context
                            .publish_with_headers(subject, headers, value)
                            .await
                            .context("cannot send to the broker")?
                            .await
                            .context("the broker refused a batch of the new generation")?;
                    }
                }
                anyhow::Ok(last as u64)
            }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT);
    let mut written = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        written += batch;
        progress.inc(batch);
    }
    progress.finish();
    Ok(written)
}

/// Applies the events after `from - TAIL_MARGIN` to `target`; returns the last
/// position read and how many events changed something.
async fn tail(
    model: Model,
    log: &dyn EventStore,
    target: &dyn FeedStore,
    from: i64,
) -> anyhow::Result<(i64, u64)> {
    let mut position = from;
    let mut applied = 0;
    let mut events = log.read_after((from - TAIL_MARGIN).max(0));
    while let Some(event) = events.next().await {
        let event = event.context("cannot read the event log")?;
        match model.project(target, &event.envelope).await {
            Ok(Outcome::Applied) => applied += 1,
            // Its predecessor commits later: the next pass applies both.
            Ok(Outcome::Duplicate | Outcome::Gap { .. }) => {}
            Err(error) => return Err(error).context("cannot write the new generation"),
        }
        position = position.max(event.position);
    }
    Ok((position, applied))
}

/// Rebuilds a read model into a new generation and switches to it.
///
/// # Errors
/// When the log, the broker or the switch fails; the live generation is then
/// left as it was.
pub async fn replay(
    model: Model,
    log: &dyn EventStore,
    context: &js::Context,
    replicas: usize,
) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    let topology = bus::ensure_topology(context, replicas).await?;
    let live = match model {
        Model::Feeds => topology.feeds_generation,
        Model::Stats => topology.stats_generation,
    };
    let key = generation_key(model);
    let pointer = topology
        .meta
        .entry(key)
        .await
        .context("cannot read the live generation")?;
    let generation = live + 1;
    let name = bucket(model, generation);
    // A replay that failed earlier may have left this bucket half-written.
    if context.get_key_value(&name).await.is_ok() {
        context
            .delete_key_value(&name)
            .await
            .with_context(|| format!("cannot remove the leftover bucket {name}"))?;
    }
    let created = context
        .create_key_value(bucket_config(model, generation, replicas))
        .await
        .with_context(|| format!("cannot create the bucket {name}"))?;
    let target = KvFeedStore::new(created);
    eprintln!(
        "replaying the {} into generation {generation} ({name}); generation {live} stays live meanwhile",
        model.name()
    );

    let total = log
        .last_position()
        .await
        .ok()
        .and_then(|p| u64::try_from(p).ok());
    // The writer (a task of its own, on another thread than this reader of
    // the log) stores the documents while the fold produces them.
    let bars = MultiProgress::new();
    let (finished, documents) = mpsc::channel(WRITE_BATCH * BATCHES_IN_FLIGHT * 2);
    let writer = tokio::spawn(write_documents(
        context.clone(),
        name.clone(),
        bars.clone(),
        documents,
    ));
    let folded = fold_log(model, log, total, &bars, Some(finished)).await;
    // A writer that failed stopped the fold: its error is the one to tell.
    let count = writer
        .await
        .context("the writer of the new generation failed")??;
    let (_, mut position, events) = folded?;

    // Catch up with what was committed meanwhile, then switch.
    loop {
        let (last, applied) = tail(model, log, &target, position).await?;
        position = last;
        if applied == 0 {
            break;
        }
    }
    let value = Bytes::from(generation.to_string());
    let switched = match pointer {
        Some(entry) => topology
            .meta
            .update(key, value, entry.revision)
            .await
            .map(|_| ()),
        None => topology
            .meta
            .create(key, value)
            .await
            .map(|_| ())
            .map_err(|e| kv::UpdateError::with_source(kv::UpdateErrorKind::Other, e)),
    };
    switched
        .context("another replay switched the live generation meanwhile; nothing was switched")?;
    let until_switch = started.elapsed();
    eprintln!("switched: generation {generation} is live");
    let deadline = Instant::now() + SWITCH_GRACE;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        position = tail(model, log, &target, position).await?.0;
    }
    // Keep the previous generation (to compare or go back); drop older ones.
    for old in 1..live {
        let _ = context.delete_key_value(bucket(model, old)).await;
    }
    Ok(ReplayReport {
        generation,
        events,
        documents: count,
        until_switch,
        elapsed: started.elapsed(),
    })
}

/// A document of the live model that differs from the log's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    pub what: &'static str,
}

async fn compare(
    live: &dyn FeedStore,
    folded: &Folded,
    key: &str,
) -> Result<Option<Difference>, ReadModelError> {
    let stored = live.get(key).await?;
    let differs = |what| {
        Some(Difference {
            key: key.to_owned(),
            what,
        })
    };
    let projection = match folded {
        Folded::Feeds(projection) => projection,
        Folded::Stats(projection) => {
            return compare_stats(stored, projection, key).map(|what| what.and_then(differs));
        }
    };
    if let Some(code) = key.strip_prefix("feed.") {
        let expected = InseeCode::parse(code)
            .ok()
            .and_then(|c| projection.feed(&c).cloned())
            .unwrap_or_default();
        let found: FeedDocument = match stored {
            Some(d) => decode_document(&d.value)?,
            None => FeedDocument::default(),
        };
        return Ok(if found == expected {
            None
        } else {
            differs("feed differs from the log")
        });
    }
    if let Some(id) = key.strip_prefix("pub.") {
        let expected = panneau_domain::PublicationId::parse(id)
            .ok()
            .and_then(|id| projection.record(&id));
        let found: Option<PublicationState> =
            stored.map(|d| decode_document(&d.value)).transpose()?;
        return Ok(match (found, expected) {
            (None, None) => None,
            (Some(_), None) => differs("publication unknown to the log"),
            (None, Some(_)) => differs("publication missing"),
            (Some(found), Some(expected)) if found == *expected => None,
            (Some(_), Some(_)) => differs("publication differs from the log"),
        });
    }
    Ok(differs("unexpected key"))
}

fn compare_stats(
    stored: Option<crate::readmodel::Versioned>,
    projection: &StatsProjection,
    key: &str,
) -> Result<Option<&'static str>, ReadModelError> {
    if let Some(id) = key.strip_prefix("owner.") {
        let expected = PublicationId::parse(id)
            .ok()
            .and_then(|id| projection.owner(&id));
        let found: Option<PublisherId> = stored.map(|d| decode_document(&d.value)).transpose()?;
        return Ok(match (found, expected) {
            (None, None) => None,
            (Some(found), Some(expected)) if found == *expected => None,
            (None, Some(_)) => Some("publisher of a publication missing"),
            (Some(_), _) => Some("publisher of a publication differs from the log"),
        });
    }
    if let Some((id, shard)) = key.strip_prefix("stats.").and_then(|k| k.split_once('.')) {
        let expected = uuid::Uuid::parse_str(id)
            .ok()
            .zip(shard.parse::<u8>().ok())
            .and_then(|(id, shard)| projection.shard(&PublisherId::new(id), shard).cloned())
            .unwrap_or_default();
        let found: PublisherStats = match stored {
            Some(d) => decode_document(&d.value)?,
            None => PublisherStats::default(),
        };
        return Ok((found != expected).then_some("statistics differ from the log"));
    }
    Ok(Some("unexpected key"))
}

/// Compares the live model with the log. Differences that disappear once the
/// live projectors catch up (events committed during the check) are not
/// reported.
///
/// # Errors
/// When the log or the live model cannot be read.
pub async fn verify(
    model: Model,
    log: &dyn EventStore,
    live: &dyn FeedStore,
) -> anyhow::Result<(u64, Vec<Difference>)> {
    let total = log
        .last_position()
        .await
        .ok()
        .and_then(|p| u64::try_from(p).ok());
    let bars = MultiProgress::new();
    let (projection, mut position, _) = fold_log(model, log, total, &bars, None).await?;
    let mut projection = projection.context("the fold kept no model")?;
    let mut keys: BTreeSet<String> = live
        .keys()
        .await
        .context("cannot list the live model")?
        .into_iter()
        .collect();
    keys.extend(projection.keys());
    let compared = keys.len() as u64;
    let progress = Progress::new(&bars, "compare", Some(compared));
    let mut pending: Vec<String> = keys.into_iter().collect();
    let mut differences = Vec::new();
    for round in 0..5 {
        differences = stream::iter(pending.iter())
            .map(|key| compare(live, &projection, key))
            .buffer_unordered(64)
            .inspect(|_| {
                if round == 0 {
                    progress.bar.inc(1);
                }
            })
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect::<Vec<_>>()
            .await
            .context("cannot read the live model")?;
        if differences.is_empty() {
            break;
        }
        // Perhaps only behind: fold what was committed since, give the
        // projectors a moment, and look at those keys again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut newer = log.read_after(position);
        while let Some(event) = newer.next().await {
            let event = event.context("cannot read the event log")?;
            projection.apply(&event.envelope).ok();
            position = event.position;
        }
        projection.settle();
        pending = differences.iter().map(|d| d.key.clone()).collect();
    }
    progress.finish();
    differences.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((compared, differences))
}

/// The live bucket of a read model, for `verify`.
///
/// # Errors
/// When the broker cannot be read.
pub async fn live_model(context: &js::Context, model: Model) -> anyhow::Result<(u64, KvFeedStore)> {
    let meta = context
        .get_key_value(bus::META_BUCKET)
        .await
        .context("no PANNEAU_META bucket: has an instance ever started on this broker?")?;
    let generation = live_generation(&meta, model).await?;
    let name = bucket(model, generation);
    let live = context
        .get_key_value(&name)
        .await
        .with_context(|| format!("cannot open {name}"))?;
    Ok((generation, KvFeedStore::new(live)))
}

/// Refuses a replay outside the cluster mode.
///
/// # Errors
/// Always, naming why.
pub fn embedded_refusal() -> anyhow::Result<()> {
    bail!(
        "panneau replay rebuilds the cluster mode's read model (set PANNEAU_DATABASE_URL=mysql://… and PANNEAU_NATS_URL); \
         the embedded mode rebuilds its read models from the SQLite log at every start"
    )
}
