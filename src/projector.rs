//! The projectors: fold events into the feed and statistics stores.
//!
//! [`project`] is the idempotent writer shared by both modes. It reads the
//! publication's record, asks the pure `step` what the event does, writes every
//! affected board with compare-and-set (several at once), then the record. A crash in between is
//! harmless: the record still says the event was not applied, the event comes
//! again, and re-writing the same boards changes nothing.
//!
//! [`run_embedded`] feeds it from the in-process bus, after rebuilding the whole
//! read model from the SQLite log at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, future, stream};
use panneau_domain::{
    Envelope, InseeCode, PublicationEvent, PublicationState, PublisherId, Timestamp,
};
use panneau_projections::stats::creator;
use panneau_projections::{FeedChange, FeedDocument, PublisherStats, StatsStep, Step, step};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::{decode_document, encode_document};
use crate::readmodel::{
    FeedStore, Model, ReadModelError, Versioned, feed_key, owner_key, publication_key, stats_key,
};
use crate::store::{EventStore, RecordedEvent, StoreError};

/// Feed documents one event writes at once (a publication to a whole
/// department changes hundreds).
const FEEDS_IN_FLIGHT: usize = 32;

/// What projecting one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already applied (a redelivery).
    Duplicate,
    /// An earlier version of the stream is missing; nothing was written.
    Gap {
        expected: u64,
    },
}

/// Applies one event to the feed read model.
///
/// # Errors
/// `Unavailable` when the store cannot be written (retry later); `Corrupt`.
pub async fn project(
    store: &dyn FeedStore,
    envelope: &Envelope<PublicationEvent>,
) -> Result<Outcome, ReadModelError> {
    let key = publication_key(&envelope.payload.publication_id());
    loop {
        // The record decides duplicate, gap or apply before any feed is
        // touched: a lagging replica's older record would have a redelivered
        // event re-applied to the feeds over newer content, so this read asks
        // the leader.
        let stored = store.get_latest(&key).await?;
        let record: Option<PublicationState> = stored
            .as_ref()
            .map(|d| decode_document(&d.value))
            .transpose()?;
        match step(record, envelope.stream_version, &envelope.payload) {
            Step::Duplicate => return Ok(Outcome::Duplicate),
            Step::Gap { expected } => return Ok(Outcome::Gap { expected }),
            Step::Apply { record, changes } => {
                // The feeds of a department-wide alert are written side by
                // side: one after the other, the 332 of Ille-et-Vilaine took
                // 204 ms to be written, side by side 97 ms (p50, ADR 4). The
                // futures are collected first: a stream mapping over borrowed
                // changes is not `Send` for every lifetime, which the spawned
                // projector tasks need.
                let writes: Vec<_> = changes
                    .iter()
                    .map(|(commune, change)| {
                        update_board(store, commune, change, envelope.occurred_at)
                    })
                    .collect();
                stream::iter(writes)
                    .buffer_unordered(FEEDS_IN_FLIGHT)
                    .try_for_each(|()| future::ready(Ok(())))
                    .await?;
                let value = Bytes::from(encode_document(&record));
                match store.put(&key, value, stored.map(|d| d.revision)).await {
                    Ok(_) => return Ok(Outcome::Applied),
                    // Another projector applied it meanwhile: look again.
                    Err(ReadModelError::Conflict) => {}
                    Err(other) => return Err(other),
                }
            }
        }
    }
}

/// Applies one event to the statistics read model: records the publication's
/// publisher at its creation, then folds the event into the publisher's
/// document that holds this publication, with compare-and-set. Idempotent: the document holds each
/// publication's stream version.
///
/// # Errors
/// `Unavailable` when the store cannot be written (retry later); `Corrupt`.
pub async fn project_stats(
    store: &dyn FeedStore,
    envelope: &Envelope<PublicationEvent>,
) -> Result<Outcome, ReadModelError> {
    let id = envelope.payload.publication_id();
    let owner = owner_key(&id);
    let publisher = match creator(&envelope.payload) {
        Some(publisher) => {
            let value = Bytes::from(encode_document(&publisher));
            match store.put(&owner, value, None).await {
                // Already recorded (a redelivery): it never changes.
                Ok(_) | Err(ReadModelError::Conflict) => publisher,
                Err(other) => return Err(other),
            }
        }
        // Written once and never changed: only an absence needs the leader's word.
        None => match store.get(&owner).await? {
            Some(stored) => decode_document::<PublisherId>(&stored.value)?,
            None => match store.get_latest(&owner).await? {
                Some(stored) => decode_document::<PublisherId>(&stored.value)?,
                None => return Ok(Outcome::Gap { expected: 1 }),
            },
        },
    };
    let key = stats_key(&publisher, panneau_projections::stats::shard(&id));
    let _one_at_a_time = document_lock(&key).lock().await;
    let mut latest = false;
    loop {
        let stored = read(store, &key, latest).await?;
        let mut stats: PublisherStats = match &stored {
            Some(d) => decode_document(&d.value)?,
            None => PublisherStats::default(),
        };
        match stats.apply(envelope.stream_version, &envelope.payload) {
            StatsStep::Duplicate => return Ok(Outcome::Duplicate),
            StatsStep::Gap { expected } => return Ok(Outcome::Gap { expected }),
            StatsStep::Applied => {}
        }
        let value = Bytes::from(encode_document(&stats));
        match store.put(&key, value, stored.map(|d| d.revision)).await {
            Ok(_) => return Ok(Outcome::Applied),
            Err(ReadModelError::Conflict) => latest = true,
            Err(other) => return Err(other),
        }
    }
}

impl Model {
    /// Applies one event to this read model (see [`project`], [`project_stats`]).
    ///
    /// # Errors
    /// As the projection it dispatches to.
    pub async fn project(
        self,
        store: &dyn FeedStore,
        envelope: &Envelope<PublicationEvent>,
    ) -> Result<Outcome, ReadModelError> {
        match self {
            Model::Feeds => project(store, envelope).await,
            Model::Stats => project_stats(store, envelope).await,
        }
    }
}

/// One read-modify-write at a time per statistics document in this process
/// (the events of one publisher would otherwise race each other's
/// compare-and-set); between instances, compare-and-set still decides.
fn document_lock(key: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    static LOCKS: std::sync::LazyLock<Vec<tokio::sync::Mutex<()>>> =
        std::sync::LazyLock::new(|| (0..256).map(|_| tokio::sync::Mutex::new(())).collect());
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    &LOCKS[usize::try_from(hash % 256).expect("below 256")]
}

/// Reads a document before a compare-and-set: the cheap read (any replica)
/// first, the leader's after a conflict, so that a lagging replica costs one
/// extra round trip instead of a loop of conflicts.
async fn read(
    store: &dyn FeedStore,
    key: &str,
    latest: bool,
) -> Result<Option<Versioned>, ReadModelError> {
    if latest {
        store.get_latest(key).await
    } else {
        store.get(key).await
    }
}

async fn update_board(
    store: &dyn FeedStore,
    commune: &InseeCode,
    change: &FeedChange,
    at: Timestamp,
) -> Result<(), ReadModelError> {
    let key = feed_key(commune);
    // The address of the store tells apart the stores of instances sharing
    // this process (tests) and the generations of a replay.
    let slot = (std::ptr::from_ref(store).cast::<()>() as usize, key.clone());
    let joined = {
        let mut writing = WRITING.lock().expect("feed writers lock poisoned");
        if let Some(batch) = writing.get_mut(&slot) {
            let (done, result) = oneshot::channel();
            batch.changes.push((change.clone(), at));
            batch.done.push(done);
            Some(result)
        } else {
            writing.insert(slot.clone(), Batch::default());
            None
        }
    };
    if let Some(result) = joined {
        return result.await.unwrap_or_else(|_| {
            Err(ReadModelError::Unavailable(
                "the writer of the feed stopped".to_owned(),
            ))
        });
    }
    // This task writes the document: its own change first, then, write after
    // write, every change that arrived meanwhile.
    let mut writer = Writer {
        slot,
        finished: false,
    };
    let mut changes = vec![(change.clone(), at)];
    let mut done: Vec<oneshot::Sender<Result<(), ReadModelError>>> = Vec::new();
    let mut own = None;
    loop {
        let result = write_board(store, &key, &changes).await;
        for waiter in done.drain(..) {
            let _ = waiter.send(match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(ReadModelError::Unavailable(error.to_string())),
            });
        }
        let failed = result.is_err();
        own.get_or_insert(result);
        let mut writing = WRITING.lock().expect("feed writers lock poisoned");
        let batch = writing
            .get_mut(&writer.slot)
            .expect("a writer's slot stays until it leaves");
        if batch.changes.is_empty() || failed {
            // Waiters left behind after a failure get an error when their
            // senders drop with the slot, and try again later.
            writing.remove(&writer.slot);
            writer.finished = true;
            break;
        }
        changes = std::mem::take(&mut batch.changes);
        done = std::mem::take(&mut batch.done);
    }
    own.expect("written at least once")
}

/// Changes to one feed document waiting for its writer.
#[derive(Default)]
struct Batch {
    changes: Vec<(FeedChange, Timestamp)>,
    done: Vec<oneshot::Sender<Result<(), ReadModelError>>>,
}

/// The feed documents being written by this process, with the changes that
/// arrived while they were: the projector handles many events at once, and
/// after a broker outage the backlog of a few busy communes raced in
/// compare-and-set conflicts for seconds. Now the writer of a document takes
/// every waiting change into its next write, one write for many events; between
/// instances, compare-and-set still decides.
static WRITING: std::sync::LazyLock<std::sync::Mutex<HashMap<(usize, String), Batch>>> =
    std::sync::LazyLock::new(Default::default);

/// Frees a document's slot if its writer is dropped midway (shutdown): the
/// waiting changes' handlers get an error and their events come again.
struct Writer {
    slot: (usize, String),
    finished: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished
            && let Ok(mut writing) = WRITING.lock()
        {
            writing.remove(&self.slot);
        }
    }
}

/// Applies `changes` to one feed document with compare-and-set.
async fn write_board(
    store: &dyn FeedStore,
    key: &str,
    changes: &[(FeedChange, Timestamp)],
) -> Result<(), ReadModelError> {
    let mut latest = false;
    loop {
        let stored = read(store, key, latest).await?;
        let mut board: FeedDocument = match &stored {
            Some(d) => decode_document(&d.value)?,
            None => FeedDocument::default(),
        };
        let before = board.clone();
        for (change, at) in changes {
            board.apply(change, *at);
        }
        if stored.is_some() && board == before {
            return Ok(());
        }
        let value = Bytes::from(encode_document(&board));
        match store.put(key, value, stored.map(|d| d.revision)).await {
            Ok(_) => return Ok(()),
            Err(ReadModelError::Conflict) => latest = true,
            Err(other) => return Err(other),
        }
    }
}

/// Why the embedded projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("cannot read the event log")]
    Log(#[from] StoreError),
    #[error("cannot write the read model")]
    ReadModel(#[from] ReadModelError),
    #[error(
        "event {position} of {stream} waits for version {expected}, which the log does not hold"
    )]
    Hole {
        position: i64,
        stream: String,
        expected: u64,
    },
}

/// Applies every event recorded after `position`; returns the last position seen.
///
/// # Errors
/// `ProjectorError` when the log or the read model fails.
pub async fn catch_up(
    model: Model,
    log: &dyn EventStore,
    feeds: &dyn FeedStore,
    mut position: i64,
) -> Result<i64, ProjectorError> {
    let mut events = log.read_after(position);
    while let Some(event) = events.next().await {
        let event = event?;
        apply_recorded(model, feeds, &event).await?;
        position = event.position;
    }
    Ok(position)
}

async fn apply_recorded(
    model: Model,
    feeds: &dyn FeedStore,
    event: &RecordedEvent,
) -> Result<(), ProjectorError> {
    match model.project(feeds, &event.envelope).await? {
        Outcome::Applied | Outcome::Duplicate => Ok(()),
        // In position order a stream cannot have a hole unless the log lost rows.
        Outcome::Gap { expected } => Err(ProjectorError::Hole {
            position: event.position,
            stream: event.envelope.stream_id.to_string(),
            expected,
        }),
    }
}

/// The embedded projector: applies committed events as the in-process bus
/// delivers them, and catches up from the log whenever it missed some.
pub async fn run_embedded(
    model: Model,
    log: Arc<dyn EventStore>,
    feeds: Arc<dyn FeedStore>,
    mut bus: broadcast::Receiver<Arc<RecordedEvent>>,
    mut position: i64,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = bus.recv() => received,
        };
        let result = match received {
            Ok(event) if event.position <= position => Ok(()),
            Ok(event) if event.position == position + 1 => {
                apply_recorded(model, feeds.as_ref(), &event)
                    .await
                    .map(|()| position = event.position)
            }
            // A position was skipped (a rolled-back append) or the bus lagged:
            // the log is the truth, read what was missed from it.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up(model, log.as_ref(), feeds.as_ref(), position)
                    .await
                    .map(|p| position = p)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Err(error) = result {
            tracing::error!(error = %error, position, model = model.name(), "projector failed; catching up from the log");
            tokio::time::sleep(Duration::from_secs(1)).await;
            match catch_up(model, log.as_ref(), feeds.as_ref(), position).await {
                Ok(p) => position = p,
                Err(error) => {
                    tracing::error!(error = %error, model = model.name(), "projector catch-up failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_util::stream::BoxStream;
    use panneau_domain::{
        Actor, Attachments, Body, Category, CommuneSet, Content, EventId, Priority, PublicationId,
        PublicationPublished, PublisherId, StreamId, Title, TokenId, VisibilityWindow,
    };
    use uuid::Uuid;

    use super::*;
    use crate::readmodel::{Change, MemoryFeedStore};

    /// A store whose writes take a while and are counted.
    #[derive(Default)]
    struct Slow {
        inner: MemoryFeedStore,
        feed_puts: AtomicUsize,
        /// Feed writes under way, and the most there ever were at once.
        writing: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    #[async_trait]
    impl FeedStore for Slow {
        async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
            self.inner.get(key).await
        }

        async fn put(
            &self,
            key: &str,
            value: Bytes,
            expected: Option<u64>,
        ) -> Result<u64, ReadModelError> {
            let feed = key.starts_with("feed.");
            if feed {
                self.feed_puts.fetch_add(1, Ordering::Relaxed);
                let now = self.writing.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_at_once.fetch_max(now, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            if feed {
                self.writing.fetch_sub(1, Ordering::SeqCst);
            }
            self.inner.put(key, value, expected).await
        }

        async fn keys(&self) -> Result<Vec<String>, ReadModelError> {
            self.inner.keys().await
        }

        fn watch(&self) -> BoxStream<'static, Change> {
            self.inner.watch()
        }
    }

    fn published(n: u128, commune: &str) -> Envelope<PublicationEvent> {
        published_to(n, &[commune])
    }

    fn published_to(n: u128, communes: &[&str]) -> Envelope<PublicationEvent> {
        let id =
            PublicationId::new(Uuid::from_u128((0x0193_6f5e_0000_7c3b_9a6e << 48) | n)).unwrap();
        let when = Timestamp::from_unix_micros(1_790_000_000_000_000 + i64::try_from(n).unwrap());
        let payload = PublicationEvent::Published(PublicationPublished {
            id,
            publisher: PublisherId::new(Uuid::from_u128(1)),
            author: TokenId::new(Uuid::from_u128(2)),
            content: Content {
                communes: CommuneSet::new(
                    communes
                        .iter()
                        .map(|c| InseeCode::parse(c).unwrap())
                        .collect(),
                )
                .unwrap(),
                title: Title::parse("Marché de Noël").unwrap(),
                body: Body::parse("Place de la mairie, samedi de 10 h à 18 h.").unwrap(),
                category: Category::Event,
                priority: Priority::Normal,
                window: VisibilityWindow::default(),
                attachments: Attachments::default(),
            },
            notify: true,
            published_at: when,
        });
        Envelope {
            event_id: EventId::new(Uuid::now_v7()),
            stream_id: StreamId::publication(id),
            stream_version: 1,
            event_type: payload.event_type(),
            schema_version: payload.schema_version(),
            occurred_at: when,
            recorded_at: when,
            actor: Actor::System {
                component: "test".into(),
            },
            request_id: None,
            payload,
        }
    }

    /// A backlog for one commune, projected concurrently, is written in a few
    /// batched writes of its feed, and every publication is on it.
    #[tokio::test]
    async fn concurrent_events_for_one_feed_share_its_writes() {
        let store = Slow::default();
        let events: Vec<_> = (1..=40).map(|n| published(n, "35238")).collect();
        let outcomes =
            futures_util::future::join_all(events.iter().map(|e| project(&store, e))).await;
        assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Applied))));
        let feed = store.inner.get("feed.35238").await.unwrap().unwrap();
        let board: FeedDocument = decode_document(&feed.value).unwrap();
        assert_eq!(
            board.entries().len(),
            40,
            "every publication is on the feed"
        );
        let puts = store.feed_puts.load(Ordering::Relaxed);
        assert!(
            puts <= 5,
            "40 events for one feed cost {puts} writes of it (one at a time would cost 40)"
        );
    }

    /// A publication to many communes has its feeds written side by side,
    /// a bounded number at once, and is on every one of them; its record
    /// (written last) says it was applied.
    #[tokio::test]
    async fn the_feeds_of_one_event_are_written_side_by_side() {
        let store = Slow::default();
        let communes: Vec<String> = (1..=100).map(|n| format!("35{n:03}")).collect();
        let communes: Vec<&str> = communes.iter().map(String::as_str).collect();
        let event = published_to(1, &communes);
        assert_eq!(project(&store, &event).await.unwrap(), Outcome::Applied);
        for commune in &communes {
            let feed = store
                .inner
                .get(&format!("feed.{commune}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("the feed of {commune} was written"));
            let board: FeedDocument = decode_document(&feed.value).unwrap();
            assert_eq!(board.entries().len(), 1, "the publication is on {commune}");
        }
        let most = store.most_at_once.load(Ordering::SeqCst);
        assert!(
            most > 1 && most <= FEEDS_IN_FLIGHT,
            "{most} feeds were written at once (more than one, at most {FEEDS_IN_FLIGHT})"
        );
        assert_eq!(project(&store, &event).await.unwrap(), Outcome::Duplicate);
    }
}
