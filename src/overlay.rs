//! Feeds that keep up with the log while the broker is away.
//!
//! Commands commit to the log whatever the broker's state, and the broker
//! carries their events to the projectors. While it cannot (the whole NATS
//! cluster restarting, a stream without a leader, a relay stuck), every
//! instance reads the outbox rows left unpublished for longer than
//! [`OVERDUE`], folds each of their publications from its whole stream in the
//! log, and lays it over its cached feeds ([`FeedCache::lay_over`]): a
//! publication acknowledged during the outage is read on every instance about
//! a second later, instead of once the broker has elected its leaders again.
//!
//! A publication the broker took just before it went away may not have
//! reached the store either, nor one it took as it came back (its stream may
//! have a leader again seconds before the feed bucket does): while the broker
//! is away (the connection lost, rows waiting or publications laid over) and
//! for [`AFTERMATH`] after, rows it took in the [`LOOKBACK`] before the last
//! second whose record the store has not shown since are laid over too: the
//! broker is seen away only a second after a stream loses its leader, when its
//! first rows are overdue. Not while it is up and merely busy: under a burst
//! of commands the relays and the projectors may lag a second behind, and
//! folding their backlog from the log would only slow them down. Rows waiting
//! while some relay had a row acknowledged in the last [`BUSY`] are such a lag.
//!
//! The cache lifts a publication once the store shows it (its record reaches
//! the version laid over). One no longer waiting in the outbox that the store
//! still does not show after [`LIFT_AFTER`] is lifted anyway, and the pages it
//! touched are read again from the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use panneau_domain::{PublicationId, StreamId};
use panneau_projections::PendingPublication;
use tokio_util::sync::CancellationToken;

use crate::readmodel::cache::{FeedCache, MAX_LAID};
use crate::store::sql::SqlStore;
use crate::store::{EventStore, StoreError};

/// How long a committed event may wait for the broker before it is laid over
/// the feeds. The relay publishes within milliseconds when the broker is up.
pub const OVERDUE: Duration = Duration::from_secs(1);
/// Rows wait for relays that are merely behind when one of them had a row
/// acknowledged this recently: a relay marks the rows it published a batch at
/// a time, and a batch under load takes up to about a second.
const BUSY: Duration = Duration::from_secs(2);
/// How often the outbox is looked at.
const EVERY: Duration = Duration::from_millis(500);
/// How long a publication published to the broker may stay laid over feeds
/// that do not show it.
const LIFT_AFTER: Duration = Duration::from_secs(30);
/// How long after the broker was last away the rows it takes are checked
/// against the store (a restarted cluster elects the leaders of the event
/// stream and of the feed bucket seconds apart).
const AFTERMATH: Duration = Duration::from_secs(30);
/// How far back the rows the broker took are checked against the store.
const LOOKBACK: Duration = Duration::from_secs(10);
/// The streams asked for at once.
const PAGE: u32 = 1024;
/// The longest one query may take (a frozen database server answers nothing).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Lays overdue publications over `cache` until `shutdown` (cluster mode).
pub async fn run(
    store: SqlStore,
    cache: Arc<FeedCache>,
    broker: async_nats::Client,
    shutdown: CancellationToken,
) {
    let mut published_since = HashMap::new();
    let mut active = false;
    let mut last_away: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let connected = broker.connection_state() == async_nats::connection::State::Connected;
        if !connected {
            last_away = Some(Instant::now());
        }
        let after_outage = last_away.is_some_and(|at| at.elapsed() < AFTERMATH);
        let looked = look(&store, &cache, &mut published_since, after_outage);
        match looked.await {
            Ok(true) => last_away = Some(Instant::now()),
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "cannot look for overdue outbox rows"),
        }
        let laid = cache.overlay_len();
        if laid > 0 && !active {
            tracing::warn!(
                publications = laid,
                "the broker is behind the event log: the publications it has not delivered are laid over the feeds"
            );
        } else if laid == 0 && active {
            tracing::info!("the feed store has caught up with the event log");
        }
        active = laid > 0;
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// One look at the outbox: the rows still waiting for the broker, and those
/// it took in the [`LOOKBACK`] up to a second ago that the store has not
/// shown (when rows wait, or `after_outage`). Whether the broker seems away:
/// rows waiting while no relay gets any acknowledged, or publications laid
/// over.
async fn look(
    store: &SqlStore,
    cache: &FeedCache,
    published_since: &mut HashMap<PublicationId, Instant>,
    after_outage: bool,
) -> Result<bool, Error> {
    let until = crate::now().plus_micros(-micros(OVERDUE));
    let mut overdue = Vec::new();
    loop {
        let after = overdue
            .last()
            .map_or("", |(stream, _): &(String, u64)| stream);
        let page = bounded(store.overdue_streams(OVERDUE, after, PAGE)).await?;
        let more = page.len() == PAGE as usize;
        overdue.extend(page);
        if !more || overdue.len() >= MAX_LAID {
            break;
        }
    }
    // Rows also wait for relays that are merely behind: while one had a row
    // acknowledged within BUSY, the broker is up and busy, and folding the
    // backlog from the log (and then looking back over every row it took)
    // would only slow everything down. Under a burst of commands on two
    // cores that once cut the write rate by half.
    let busy_since = crate::now().plus_micros(-micros(BUSY));
    if !overdue.is_empty() && bounded(store.published_after(busy_since)).await? {
        overdue.clear();
    }
    let taken = if !after_outage && overdue.is_empty() {
        Vec::new()
    } else {
        let since = until.plus_micros(-micros(LOOKBACK));
        bounded(store.published_between(since, until)).await?
    };
    let unshown: Vec<_> = taken
        .into_iter()
        .filter_map(publication_row)
        .filter(|(_, id, version)| {
            cache
                .known_version(*id)
                .is_none_or(|known| known < *version)
        })
        .collect();
    let laid = cache.overlay_versions();
    if overdue.is_empty() && unshown.is_empty() && laid.is_empty() {
        published_since.clear();
        return Ok(false);
    }
    let mut waiting = HashSet::with_capacity(overdue.len());
    let mut pending = Vec::new();
    let overdue = overdue.into_iter().filter_map(publication_row);
    let candidates = overdue.map(|row| (row, true));
    let candidates = candidates.chain(unshown.into_iter().map(|row| (row, false)));
    for ((stream, id, version), unpublished) in candidates {
        if unpublished {
            waiting.insert(id);
        }
        if cache
            .known_version(id)
            .is_some_and(|known| known >= version)
        {
            continue;
        }
        let events = bounded(store.read_stream(&stream)).await?;
        if let Some(publication) = PendingPublication::fold(events.iter().map(|e| &e.envelope)) {
            pending.push(publication);
        }
        // Folded a few at a time: a long backlog shows as it is read.
        if pending.len() == 64 {
            cache.lay_over(std::mem::take(&mut pending), &[]).await;
        }
    }
    let now = Instant::now();
    published_since.retain(|id, _| laid.contains_key(id) && !waiting.contains(id));
    let mut caught_up = Vec::new();
    for id in laid.keys().filter(|id| !waiting.contains(id)) {
        let since = published_since.entry(*id).or_insert(now);
        if now.duration_since(*since) >= LIFT_AFTER {
            caught_up.push(*id);
        }
    }
    if !pending.is_empty() || !caught_up.is_empty() {
        cache.lay_over(pending, &caught_up).await;
    }
    Ok(!waiting.is_empty() || cache.overlay_len() > 0)
}

/// An outbox row's stream, as a publication's: its id and the version.
fn publication_row((stream, version): (String, u64)) -> Option<(StreamId, PublicationId, u64)> {
    let stream = StreamId::parse(stream).ok()?;
    let id = stream.publication_id()?;
    Some((stream, id, version))
}

async fn bounded<T>(query: impl Future<Output = Result<T, StoreError>>) -> Result<T, Error> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(format!("no answer from the database in {QUERY_TIMEOUT:?}").into()),
    }
}
