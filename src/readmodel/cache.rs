//! Rendered feeds and publications, held in moka, ready to be written to a socket.
//!
//! A feed is rendered once per change to its document: JSON, gzip and brotli,
//! with an ETag. An entry is fresh until its feed next changes by time (a
//! `visible_from` or `visible_until` passing), and is re-rendered from the change
//! feed of the store when its document changes. Concurrent misses for one key
//! cost one load: loads and refreshes of a key run one at a time, under moka's
//! per-key compute lock.
//!
//! While the store has not caught up with the log (the broker is away), the
//! publications the log holds beyond it are laid over the feeds (see
//! [`FeedCache::lay_over`]): a cached first page is read back, the pending
//! publications folded in, and every page down to its horizon served again.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use panneau_domain::{InseeCode, PublicationId, PublicationState, Status, Timestamp};
use panneau_projections::{
    Communes, FeedDocument, FeedEntry, PAGE_SIZE, PendingPublication, SortKey, page_board,
    render_known_page, render_page,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Change, ReadModelError, SharedFeedStore, Versioned, feed_key, publication_key};
use crate::codec::decode_document;
use crate::metrics::Metrics;
use crate::now;

/// A body in the three encodings clients ask for, and its validator.
#[derive(Debug)]
pub struct Rendered {
    /// Revision of the document it was rendered from.
    pub revision: u64,
    pub identity: Bytes,
    pub gzip: Bytes,
    pub brotli: Bytes,
    /// The entity tag of the identity body, without quotes; encoded bodies use
    /// it with a `-gzip` or `-br` suffix.
    pub etag: Box<str>,
    /// The `ETag` header of each body (identity, gzip, brotli), made once
    /// rather than for every response.
    pub etag_headers: Box<[http::HeaderValue; 3]>,
    /// When the content changes by time alone; the entry expires then.
    pub fresh_until: Option<Instant>,
    /// For a page rendered over a cached page rather than from a document
    /// (publications laid over it while the store is away): that page.
    base: Option<Arc<Rendered>>,
}

impl Rendered {
    fn new(revision: u64, json: Vec<u8>, next_change: Option<Timestamp>, now: Timestamp) -> Self {
        let digest = Sha256::digest(&json);
        let etag: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(json.len() / 3),
            flate2::Compression::best(),
        );
        gz.write_all(&json).expect("writing to a Vec cannot fail");
        let gzip = gz.finish().expect("writing to a Vec cannot fail");
        let mut brotli = Vec::with_capacity(json.len() / 4);
        {
            // Quality 6: within 1 % of quality 9's size on a 15 KB feed, in 0.13 ms
            // instead of 3 ms (quality 9 zeroes tens of megabytes of hash tables for
            // every body, which made refilling a cold cache CPU-bound; see
            // docs/BENCHMARKS.md, read storm and scale).
            let mut writer = brotli::CompressorWriter::new(&mut brotli, 4096, 6, 20);
            writer
                .write_all(&json)
                .expect("writing to a Vec cannot fail");
        }
        let fresh_until =
            next_change.map(|at| Instant::now() + Duration::from_micros(now.micros_until(at)));
        // `Bytes` keeps a vector's whole allocation: hold exactly the bodies, not
        // the slack of their buffers (a third of a full cache's memory otherwise).
        let (mut json, mut gzip) = (json, gzip);
        json.shrink_to_fit();
        gzip.shrink_to_fit();
        brotli.shrink_to_fit();
        Self {
            revision,
            identity: Bytes::from(json),
            gzip: Bytes::from(gzip),
            brotli: Bytes::from(brotli),
            etag_headers: Box::new(["", "-gzip", "-br"].map(|suffix| {
                http::HeaderValue::from_str(&format!("\"{etag}{suffix}\""))
                    .expect("a hex entity tag is a valid header value")
            })),
            etag: etag.into_boxed_str(),
            fresh_until,
            base: None,
        }
    }

    fn weight(&self) -> u32 {
        let bytes = self.identity.len() + self.gzip.len() + self.brotli.len() + 128;
        let base = self.base.as_ref().map_or(0, |b| b.weight());
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .saturating_add(base)
    }

    /// The same page, to be read again from the store before it is served
    /// again (and served as it is if the store cannot be read).
    fn expired(&self) -> Rendered {
        Rendered {
            revision: self.revision,
            identity: self.identity.clone(),
            gzip: self.gzip.clone(),
            brotli: self.brotli.clone(),
            etag: self.etag.clone(),
            etag_headers: self.etag_headers.clone(),
            fresh_until: Some(Instant::now()),
            base: self.base.clone(),
        }
    }

    /// Seconds this body stays right, capped at `max`.
    pub fn max_age(&self, max: u64) -> u64 {
        self.fresh_until.map_or(max, |until| {
            until
                .saturating_duration_since(Instant::now())
                .as_secs()
                .min(max)
        })
    }
}

/// What `GET /v1/publications/{id}` finds.
#[derive(Debug)]
pub enum PublicationLookup {
    Visible(Rendered),
    Retracted {
        revision: u64,
    },
    /// Unknown, or not shown yet (scheduled, or before its `visible_from`).
    NotFound {
        revision: u64,
        shown_from: Option<Instant>,
    },
}

impl PublicationLookup {
    fn revision(&self) -> u64 {
        match self {
            PublicationLookup::Visible(r) => r.revision,
            PublicationLookup::Retracted { revision }
            | PublicationLookup::NotFound { revision, .. } => *revision,
        }
    }

    fn fresh_until(&self) -> Option<Instant> {
        match self {
            PublicationLookup::Visible(r) => r.fresh_until,
            PublicationLookup::Retracted { .. } => None,
            PublicationLookup::NotFound { shown_from, .. } => *shown_from,
        }
    }
}

fn is_fresh(fresh_until: Option<Instant>) -> bool {
    fresh_until.is_none_or(|until| Instant::now() < until)
}

/// The publications laid over the feeds.
#[derive(Debug, Default)]
struct Overlay {
    laid: HashMap<PublicationId, Arc<PendingPublication>>,
    /// The latest version of each publication whose record the store showed
    /// lately, and when: a publication the broker took is laid over only if
    /// the store has not shown it a second later, and one lifted is not laid
    /// again while the outbox still lists it (its row is marked published
    /// after the broker's acknowledgement, which the projectors may beat).
    shown: HashMap<PublicationId, (u64, Instant)>,
    /// When `shown` was last rid of its old entries.
    pruned: Option<Instant>,
}

impl Overlay {
    fn forget_old_records(&mut self) {
        self.shown.retain(|_, (_, when)| when.elapsed() < SHOWN_FOR);
        self.pruned = Some(Instant::now());
    }
}

/// The most publications laid over the feeds at once. An outage at the rate
/// town halls publish stays far below it; a bulk import into a cluster whose
/// broker is slow would not, and its feeds wait for the broker instead.
pub const MAX_LAID: usize = 10_000;

/// How long a publication the store showed is remembered as shown.
const SHOWN_FOR: Duration = Duration::from_secs(60);

/// How long a document the change feed delivered is kept to answer later
/// pages while the store cannot be read.
const RECENT_FOR: Duration = Duration::from_secs(60);

/// The cache the public API reads from.
pub struct FeedCache {
    store: SharedFeedStore,
    communes: Arc<Communes>,
    feeds: Cache<InseeCode, Arc<Rendered>>,
    /// The feed documents the change feed delivered in the last minute: the
    /// later pages of a feed that changed are answered from them while the
    /// store cannot be read (as when the broker has just come back and its
    /// replicas have no leader yet), where the first page alone would only
    /// tell its own twenty publications. Only where the store is replicated
    /// (cluster mode; see [`FeedCache::keeping_recent_documents`]).
    recent: Option<Cache<InseeCode, Versioned>>,
    publications: Cache<PublicationId, Arc<PublicationLookup>>,
    /// Publications the log holds at a version the store does not show yet.
    overlay: RwLock<Overlay>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for FeedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedCache")
            .field("feeds", &self.feeds.entry_count())
            .field("publications", &self.publications.entry_count())
            .finish_non_exhaustive()
    }
}

impl FeedCache {
    /// A cache holding at most `capacity_bytes` of rendered bodies.
    pub fn new(
        store: SharedFeedStore,
        communes: Arc<Communes>,
        capacity_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let feeds = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_: &InseeCode, v: &Arc<Rendered>| v.weight())
            .build();
        let publications = Cache::builder()
            .max_capacity(capacity_bytes / 4)
            .weigher(
                |_: &PublicationId, v: &Arc<PublicationLookup>| match v.as_ref() {
                    PublicationLookup::Visible(r) => r.weight(),
                    _ => 64,
                },
            )
            .build();
        Self {
            store,
            communes,
            feeds,
            recent: None,
            publications,
            overlay: RwLock::default(),
            metrics,
        }
    }

    /// Also keeps the feed documents the change feed delivered in the last
    /// minute, at most `capacity_bytes` of them, to answer later pages while
    /// the store cannot be read (a replicated store electing its leaders).
    #[must_use]
    pub fn keeping_recent_documents(mut self, capacity_bytes: u64) -> Self {
        self.recent = Some(
            Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_: &InseeCode, v: &Versioned| {
                    u32::try_from(v.value.len() + 64).unwrap_or(u32::MAX)
                })
                .time_to_live(RECENT_FOR)
                .build(),
        );
        self
    }

    /// The feed document the change feed delivered last, in the last minute.
    async fn recent_document(&self, commune: InseeCode) -> Option<Versioned> {
        self.recent.as_ref()?.get(&commune).await
    }

    pub fn communes(&self) -> &Communes {
        &self.communes
    }

    /// The first page of a commune's feed, rendered.
    ///
    /// An entry past its `fresh_until` (the feed changed by time) is rendered
    /// again from the store; if the store cannot be read, the stale page is
    /// served rather than nothing.
    ///
    /// # Errors
    /// `Unavailable` when it is not cached and the store cannot be read.
    pub async fn feed(&self, commune: InseeCode) -> Result<Arc<Rendered>, ReadModelError> {
        let cached = self.feeds.get(&commune).await;
        let floor = self.store.floor();
        if let Some(hit) = &cached
            && usable(hit, floor)
        {
            self.metrics.feed_cache_hits.inc();
            return Ok(hit.clone());
        }
        self.metrics.feed_cache_misses.inc();
        let result = self
            .feeds
            .entry(commune)
            .and_try_compute_with(|existing| async move {
                if existing.as_ref().is_some_and(|e| usable(e.value(), floor)) {
                    return Ok(Op::Nop);
                }
                let key = feed_key(&commune);
                let mut document = self.load(&key).await?;
                // A replica behind the page already cached (after a broker
                // restart) would take the feed back: ask the leader.
                let cached_revision = existing.map(|e| e.value().revision);
                if cached_revision > document.as_ref().map(|d| d.revision) {
                    document = self.store.get_latest(&key).await?;
                }
                Ok::<_, ReadModelError>(Op::Put(Arc::new(self.render_feed(commune, document)?)))
            })
            .await;
        match (result, cached) {
            (Ok(result), _) => entry_value(result),
            (Err(error), Some(stale)) => {
                tracing::warn!(error = %error, commune = %commune, "serving a stale feed");
                Ok(stale)
            }
            (Err(error), None) => Err(error),
        }
    }

    /// The first page of a commune's feed if it is cached and fresh: what
    /// `feed` answers without reading the store, and `None` where it would.
    pub async fn cached_feed(&self, commune: InseeCode) -> Option<Arc<Rendered>> {
        let hit = self.feeds.get(&commune).await?;
        if !usable(&hit, self.store.floor()) {
            return None;
        }
        self.metrics.feed_cache_hits.inc();
        Some(hit)
    }

    /// A later page of a commune's feed (after `cursor`), rendered on demand.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be read.
    pub async fn feed_page(
        &self,
        commune: InseeCode,
        cursor: SortKey,
    ) -> Result<Vec<u8>, ReadModelError> {
        let view = self
            .communes
            .get(&commune)
            .expect("callers check the commune exists");
        let now = now();
        let key = feed_key(&commune);
        let document = match self.load(&key).await {
            // A replica behind the cached first page (after a broker restart)
            // would leave out what that page's document had: ask the leader.
            Ok(document)
                if self.cached_revision(commune).await > document.as_ref().map(|d| d.revision) =>
            {
                match self.store.get_latest(&key).await {
                    Ok(latest) => latest,
                    // The change feed may have delivered a newer one.
                    Err(_) => match self.recent_document(commune).await {
                        Some(recent)
                            if Some(recent.revision) > document.as_ref().map(|d| d.revision) =>
                        {
                            Some(recent)
                        }
                        _ => document,
                    },
                }
            }
            Ok(document) => document,
            Err(error) => {
                // The store is away: the document the change feed delivered
                // last tells the whole board, if it is not behind the cached
                // first page; else the pages down to the horizon of that page
                // are still known (publications laid over it since come
                // first in a feed).
                if let Some(page) = self.recent_page(commune, cursor, now).await {
                    return Ok(page);
                }
                let Some(page) = self.known_page(commune, cursor, now).await else {
                    return Err(error);
                };
                return Ok(page);
            }
        };
        let mut doc: FeedDocument = match &document {
            Some(d) => decode_document(&d.value)?,
            None => FeedDocument::default(),
        };
        self.overlay_board(commune, &mut doc, now);
        Ok(render_page(view, &doc, now, Some(cursor), PAGE_SIZE).json)
    }

    /// The revision of the document the cached first page was rendered from.
    async fn cached_revision(&self, commune: InseeCode) -> Option<u64> {
        let hit = self.feeds.get(&commune).await?;
        Some(hit.base.as_ref().map_or(hit.revision, |base| base.revision))
    }

    /// The page after `cursor` rendered from the document the change feed
    /// delivered last, with the pending publications laid over it, if that
    /// document is as recent as the cached first page.
    async fn recent_page(
        &self,
        commune: InseeCode,
        cursor: SortKey,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        let document = self.recent_document(commune).await?;
        if self.cached_revision(commune).await > Some(document.revision) {
            return None;
        }
        let mut doc: FeedDocument = decode_document(&document.value)
            .inspect_err(|error| tracing::error!(%error, commune = %commune, "a feed document does not decode"))
            .ok()?;
        self.overlay_board(commune, &mut doc, now);
        let view = self.communes.get(&commune)?;
        Some(render_page(view, &doc, now, Some(cursor), PAGE_SIZE).json)
    }

    /// The page after `cursor` as far as the cached first page and the
    /// pending publications tell, without the store.
    async fn known_page(
        &self,
        commune: InseeCode,
        cursor: SortKey,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        let hit = self.feeds.get(&commune).await?;
        let base = hit.base.clone().unwrap_or(hit);
        let (mut doc, horizon) = page_board(&base.identity).ok()?;
        self.overlay_board(commune, &mut doc, now);
        let view = self.communes.get(&commune)?;
        render_known_page(view, &doc, now, Some(cursor), PAGE_SIZE, horizon).map(|page| page.json)
    }

    /// A publication as the public API shows it (stale rather than nothing when
    /// the store cannot be read, as for feeds).
    ///
    /// # Errors
    /// `Unavailable` when it is not cached and the store cannot be read.
    pub async fn publication(
        &self,
        id: PublicationId,
    ) -> Result<Arc<PublicationLookup>, ReadModelError> {
        let cached = self.publications.get(&id).await;
        let floor = self.store.floor();
        if let Some(hit) = &cached
            && is_fresh(hit.fresh_until())
            && hit.revision() >= floor
        {
            self.metrics.feed_cache_hits.inc();
            return Ok(hit.clone());
        }
        self.metrics.feed_cache_misses.inc();
        let result = self
            .publications
            .entry(id)
            .and_try_compute_with(|existing| async move {
                if existing.is_some_and(|e| {
                    is_fresh(e.value().fresh_until()) && e.value().revision() >= floor
                }) {
                    return Ok(Op::Nop);
                }
                let key = publication_key(&id);
                let document = match self.load(&key).await {
                    // A replica that lags (after a broker restart) may not
                    // have it yet: a publication whose notification has just
                    // reached a phone must not be a 404. Ask the leader.
                    Ok(None) => self.store.get_latest(&key).await.unwrap_or(None),
                    Ok(document) => document,
                    // The store is away: the log may have told of it.
                    Err(error) => match self.laid_publication(id, 0) {
                        Some(laid) => return Ok(Op::Put(Arc::new(laid))),
                        None => return Err(error),
                    },
                };
                let stored = document
                    .as_ref()
                    .map(|d| decode_document::<PublicationState>(&d.value))
                    .transpose()?
                    .map_or(0, |record| record.version);
                if let Some(laid) = self.laid_publication(id, stored) {
                    return Ok(Op::Put(Arc::new(laid)));
                }
                Ok::<_, ReadModelError>(Op::Put(Arc::new(render_publication(document, floor)?)))
            })
            .await;
        match (result, cached) {
            (Ok(result), _) => entry_value(result),
            (Err(error), Some(stale)) => {
                tracing::warn!(error = %error, publication = %id, "serving a stale publication");
                Ok(stale)
            }
            (Err(error), None) => Err(error),
        }
    }

    async fn load(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        self.metrics.feed_store_loads.inc();
        self.store.get(key).await
    }

    fn render_feed(
        &self,
        commune: InseeCode,
        document: Option<Versioned>,
    ) -> Result<Rendered, ReadModelError> {
        let (mut doc, revision) = match document {
            Some(d) => (decode_document::<FeedDocument>(&d.value)?, d.revision),
            None => (FeedDocument::default(), self.store.floor()),
        };
        let view = self
            .communes
            .get(&commune)
            .expect("callers check the commune exists");
        let now = now();
        self.overlay_board(commune, &mut doc, now);
        let page = render_page(view, &doc, now, None, PAGE_SIZE);
        Ok(Rendered::new(revision, page.json, page.next_change, now))
    }

    /// Lays the pending publications over a commune's board.
    fn overlay_board(&self, commune: InseeCode, doc: &mut FeedDocument, now: Timestamp) {
        let overlay = self.overlay.read().expect("overlay lock poisoned");
        for pending in overlay.laid.values() {
            doc.overlay(pending, &commune, now);
        }
    }

    /// A commune's first page rendered again over `base` (a page rendered
    /// from a document) with the pending publications laid over it, for when
    /// the document itself cannot be read.
    fn render_over(&self, commune: InseeCode, base: Arc<Rendered>) -> Option<Rendered> {
        let (mut doc, horizon) = page_board(&base.identity)
            .inspect_err(|error| tracing::error!(%error, commune = %commune, "a cached feed page does not read back"))
            .ok()?;
        let view = self.communes.get(&commune)?;
        let now = now();
        self.overlay_board(commune, &mut doc, now);
        let page = render_known_page(view, &doc, now, None, PAGE_SIZE, horizon)?;
        let mut rendered = Rendered::new(base.revision, page.json, page.next_change, now);
        // The page it was rendered over may change by time before it does
        // (unless that page was only marked to be read again).
        let base_until = base.fresh_until.filter(|until| *until > Instant::now());
        rendered.fresh_until = match (rendered.fresh_until, base_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        rendered.base = Some(base);
        Some(rendered)
    }

    /// A publication laid over the feeds at a version later than `stored`
    /// (the version the store shows), as the public API shows it.
    fn laid_publication(&self, id: PublicationId, stored: u64) -> Option<PublicationLookup> {
        let laid = {
            let overlay = self.overlay.read().expect("overlay lock poisoned");
            overlay
                .laid
                .get(&id)
                .filter(|p| p.version > stored)
                .cloned()
        }?;
        Some(lookup_of_pending(&laid, self.store.floor()))
    }

    /// How many publications are laid over the feeds.
    pub fn overlay_len(&self) -> usize {
        self.overlay
            .read()
            .expect("overlay lock poisoned")
            .laid
            .len()
    }

    /// The version of each publication laid over the feeds.
    pub fn overlay_versions(&self) -> HashMap<PublicationId, u64> {
        let overlay = self.overlay.read().expect("overlay lock poisoned");
        overlay
            .laid
            .iter()
            .map(|(id, p)| (*id, p.version))
            .collect()
    }

    /// The latest version of a publication laid over the feeds or shown by
    /// the store lately: the log need not be read for an earlier one.
    pub fn known_version(&self, id: PublicationId) -> Option<u64> {
        let overlay = self.overlay.read().expect("overlay lock poisoned");
        let laid = overlay.laid.get(&id).map(|p| p.version);
        let shown = overlay.shown.get(&id).map(|(version, _)| *version);
        laid.max(shown)
    }

    /// Lays publications the store has not caught up with over the feeds
    /// (`pending`: each folded from its whole stream at the log's latest
    /// version), and lifts the `caught_up` ones off (the store still does not
    /// show them, long after the broker took them). Cached first pages they
    /// touch are rendered again over the page they were rendered from; pages
    /// a publication is lifted off are also marked stale, to be read again
    /// from the store (and served as they are if it cannot be read).
    pub async fn lay_over(&self, pending: Vec<PendingPublication>, caught_up: &[PublicationId]) {
        self.change_overlay(pending, caught_up, None).await;
    }

    /// `lay_over`; `shown`: the version of the `caught_up` publications the
    /// store shows (their pages need nothing more).
    async fn change_overlay(
        &self,
        pending: Vec<PendingPublication>,
        caught_up: &[PublicationId],
        shown: Option<u64>,
    ) {
        let mut changed = BTreeSet::new();
        let mut lifted = BTreeSet::new();
        let mut laid_now = Vec::new();
        let mut lifted_ids = Vec::new();
        {
            let mut overlay = self.overlay.write().expect("overlay lock poisoned");
            overlay.forget_old_records();
            for publication in pending {
                let already = overlay
                    .laid
                    .get(&publication.id)
                    .is_some_and(|p| **p == publication)
                    || overlay
                        .shown
                        .get(&publication.id)
                        .is_some_and(|(version, _)| *version >= publication.version);
                let full =
                    overlay.laid.len() >= MAX_LAID && !overlay.laid.contains_key(&publication.id);
                if already || full {
                    continue;
                }
                changed.extend(publication.touched().iter().copied());
                laid_now.push(publication.id);
                overlay.laid.insert(publication.id, Arc::new(publication));
            }
            for id in caught_up {
                let Some(publication) = overlay.laid.remove(id) else {
                    continue;
                };
                match shown {
                    // The store's record comes after every board the
                    // publication changed, and the cache follows the store
                    // in order: its pages were rendered from those boards.
                    Some(version) => {
                        overlay.shown.insert(*id, (version, Instant::now()));
                    }
                    None => {
                        lifted.extend(publication.touched().iter().copied());
                        lifted_ids.push(*id);
                    }
                }
            }
            self.metrics
                .feed_overlay_publications
                .set(i64::try_from(overlay.laid.len()).unwrap_or(i64::MAX));
        }
        // A publication's page shows the log's version; one lifted before
        // the store showed it is read from the store again.
        for id in laid_now {
            if let Some(lookup) = self.laid_publication(id, 0) {
                self.publications.insert(id, Arc::new(lookup)).await;
            }
        }
        for id in lifted_ids {
            self.publications.invalidate(&id).await;
        }
        for commune in changed.union(&lifted) {
            let stale = lifted.contains(commune);
            let _ = self
                .feeds
                .entry(*commune)
                .and_compute_with(|existing| async {
                    let Some(existing) = existing else {
                        return Op::Nop;
                    };
                    let existing = existing.into_value();
                    if !changed.contains(commune) {
                        return Op::Put(Arc::new(existing.expired()));
                    }
                    let base = existing.base.clone().unwrap_or(existing);
                    match self.render_over(*commune, base) {
                        Some(mut rendered) => {
                            if stale {
                                rendered.fresh_until = Some(Instant::now());
                            }
                            Op::Put(Arc::new(rendered))
                        }
                        None => Op::Nop,
                    }
                })
                .await;
        }
    }

    /// Applies a change from the store's change feed: entries already cached are
    /// re-rendered (never with an older revision); others are left to load on demand.
    pub async fn apply(&self, change: Change) {
        match change {
            Change::Put { key, document } => {
                if let Some(code) = key
                    .strip_prefix("feed.")
                    .and_then(|c| InseeCode::parse(c).ok())
                {
                    if self.communes.get(&code).is_none() {
                        return;
                    }
                    if let Some(recent) = &self.recent {
                        let newer = recent
                            .get(&code)
                            .await
                            .is_none_or(|known| known.revision < document.revision);
                        if newer {
                            recent.insert(code, document.clone()).await;
                        }
                    }
                    let _ = self
                        .feeds
                        .entry(code)
                        .and_compute_with(|existing| async {
                            match existing {
                                Some(e) if e.value().revision < document.revision => {
                                    match self.render_feed(code, Some(document)) {
                                        Ok(rendered) => Op::Put(Arc::new(rendered)),
                                        Err(error) => {
                                            tracing::error!(%error, commune = %code, "cannot render a changed feed");
                                            Op::Remove
                                        }
                                    }
                                }
                                _ => Op::Nop,
                            }
                        })
                        .await;
                } else if let Some(id) = key
                    .strip_prefix("pub.")
                    .and_then(|i| PublicationId::parse(i).ok())
                {
                    self.lift_if_caught_up(id, &document).await;
                    let _ = self
                        .publications
                        .entry(id)
                        .and_compute_with(|existing| async {
                            match existing {
                                Some(e) if e.value().revision() < document.revision => {
                                    match render_publication(Some(document), 0) {
                                        Ok(rendered) => Op::Put(Arc::new(rendered)),
                                        Err(_) => Op::Remove,
                                    }
                                }
                                _ => Op::Nop,
                            }
                        })
                        .await;
                }
            }
            Change::Deleted { key } => {
                if let Some(code) = key
                    .strip_prefix("feed.")
                    .and_then(|c| InseeCode::parse(c).ok())
                {
                    if let Some(recent) = &self.recent {
                        recent.invalidate(&code).await;
                    }
                    self.feeds.invalidate(&code).await;
                } else if let Some(id) = key
                    .strip_prefix("pub.")
                    .and_then(|i| PublicationId::parse(i).ok())
                {
                    self.publications.invalidate(&id).await;
                }
            }
            Change::Reset => {
                if let Some(recent) = &self.recent {
                    recent.invalidate_all();
                }
                self.feeds.invalidate_all();
                self.publications.invalidate_all();
            }
        }
    }

    /// A publication's record is written after every board it changes: once
    /// the store's record is at the version laid over the feeds, the boards
    /// show it and the overlay is lifted.
    async fn lift_if_caught_up(&self, id: PublicationId, record: &Versioned) {
        let version = match decode_document::<PublicationState>(&record.value) {
            Ok(record) => record.version,
            Err(error) => {
                tracing::error!(%error, publication = %id, "a publication record does not decode");
                return;
            }
        };
        let caught_up = {
            let mut overlay = self.overlay.write().expect("overlay lock poisoned");
            let shown = overlay.shown.entry(id).or_insert((version, Instant::now()));
            *shown = (shown.0.max(version), Instant::now());
            // The records shown grow only here: forget the old ones, at
            // most once a second.
            if overlay
                .pruned
                .is_none_or(|at| at.elapsed() > Duration::from_secs(1))
            {
                overlay.forget_old_records();
            }
            overlay.laid.get(&id).is_some_and(|p| p.version <= version)
        };
        if caught_up {
            self.change_overlay(Vec::new(), &[id], Some(version)).await;
        }
    }

    /// Follows a change feed of the store until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        mut changes: BoxStream<'static, Change>,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.next() => match change {
                    Some(change) => change,
                    None => return,
                },
            };
            // Whatever else has already arrived goes with it, each key at its
            // latest: when changes come faster than they are applied (a burst
            // of publications to one commune), a cached feed is rendered once
            // per batch, not once per change. (A watch resuming after a pause
            // gets one revision per key already: the bucket keeps no more.)
            let mut backlog = vec![first];
            let mut ended = false;
            while backlog.len() < FOLLOW_BATCH {
                match changes.next().now_or_never() {
                    Some(Some(change)) => backlog.push(change),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            let taken = backlog.len();
            let started = Instant::now();
            let changes_to_apply = coalesce(backlog);
            let applied = changes_to_apply.len();
            for change in changes_to_apply {
                self.apply(change).await;
            }
            if taken > 1 {
                tracing::debug!(
                    taken,
                    applied,
                    ms = started.elapsed().as_millis(),
                    "applied a backlog of changes"
                );
            }
            if ended {
                return;
            }
        }
    }

    /// Cached feeds and their total size, for the metrics endpoint.
    pub async fn usage(&self) -> (u64, u64) {
        // moka counts lazily: settle pending work for an exact figure.
        self.feeds.run_pending_tasks().await;
        (self.feeds.entry_count(), self.feeds.weighted_size())
    }
}

/// Changes [`FeedCache::follow`] takes at once from a backlog.
const FOLLOW_BATCH: usize = 4096;

/// The changes that matter in `changes`, in order: a key's latest change only,
/// at its place; nothing before a `Reset`, which drops all that came before.
fn coalesce(changes: Vec<Change>) -> Vec<Change> {
    let start = changes
        .iter()
        .rposition(|c| matches!(c, Change::Reset))
        .unwrap_or(0);
    let mut latest: HashMap<&str, usize> = HashMap::new();
    for (i, change) in changes.iter().enumerate().skip(start) {
        if let Change::Put { key, .. } | Change::Deleted { key } = change {
            latest.insert(key.as_str(), i);
        }
    }
    let keep: Vec<bool> = changes
        .iter()
        .enumerate()
        .map(|(i, change)| match change {
            Change::Put { key, .. } | Change::Deleted { key } => {
                latest.get(key.as_str()) == Some(&i)
            }
            Change::Reset => i == start,
        })
        .collect();
    changes
        .into_iter()
        .zip(keep)
        .filter_map(|(change, keep)| keep.then_some(change))
        .collect()
}

/// Whether a cached page may be served: fresh, and of the live generation.
fn usable(hit: &Rendered, floor: u64) -> bool {
    is_fresh(hit.fresh_until) && hit.revision >= floor
}

fn entry_value<K, V>(result: CompResult<K, V>) -> Result<V, ReadModelError>
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    match result {
        CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
            Ok(e.into_value())
        }
        CompResult::StillNone(_) | CompResult::Removed(_) => Err(ReadModelError::Unavailable(
            "the entry vanished while loading".into(),
        )),
    }
}

/// A publication laid over the feeds as the public API shows it; `floor`
/// stands for its revision, so that the store's next document replaces it.
fn lookup_of_pending(pending: &PendingPublication, floor: u64) -> PublicationLookup {
    match pending.entry() {
        Some(entry) => lookup_of_entry(entry, floor),
        None => PublicationLookup::Retracted { revision: floor },
    }
}

/// `floor`: the revision of a missing document (see `FeedStore::floor`).
fn render_publication(
    document: Option<Versioned>,
    floor: u64,
) -> Result<PublicationLookup, ReadModelError> {
    let Some(document) = document else {
        return Ok(PublicationLookup::NotFound {
            revision: floor,
            shown_from: None,
        });
    };
    let record: PublicationState = decode_document(&document.value)?;
    let revision = document.revision;
    if matches!(record.status, Status::Retracted { .. }) {
        return Ok(PublicationLookup::Retracted { revision });
    }
    let entry = FeedEntry::of(&record).expect("only retracted publications have no entry");
    Ok(lookup_of_entry(&entry, revision))
}

/// A publication on the boards: not found until it shows, then its view.
fn lookup_of_entry(entry: &FeedEntry, revision: u64) -> PublicationLookup {
    let now = now();
    if entry.shown_from > now {
        return PublicationLookup::NotFound {
            revision,
            shown_from: Some(
                Instant::now() + Duration::from_micros(now.micros_until(entry.shown_from)),
            ),
        };
    }
    let json = serde_json::to_vec(&entry.view).expect("a publication serialises");
    PublicationLookup::Visible(Rendered::new(revision, json, None, now))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt};
    use panneau_domain::{
        Attachments, Body, Category, CommuneSet, Content, Priority, PublisherId, Title, TokenId,
        VisibilityWindow,
    };
    use panneau_projections::{CommuneView, FeedChange, PublicationView};
    use uuid::Uuid;

    use super::super::FeedStore;
    use super::*;
    use crate::codec::encode_document;

    /// A feed store whose replicas lag behind its leader, and which can be
    /// made unreadable.
    #[derive(Default)]
    struct LaggingStore {
        replica: Mutex<Option<Versioned>>,
        leader: Mutex<Option<Versioned>>,
        down: AtomicBool,
    }

    impl LaggingStore {
        fn readable(&self) -> Result<(), ReadModelError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ReadModelError::Unavailable("no leader".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl FeedStore for LaggingStore {
        async fn get(&self, _: &str) -> Result<Option<Versioned>, ReadModelError> {
            self.readable()?;
            Ok(self.replica.lock().unwrap().clone())
        }

        async fn get_latest(&self, _: &str) -> Result<Option<Versioned>, ReadModelError> {
            self.readable()?;
            Ok(self.leader.lock().unwrap().clone())
        }

        async fn put(&self, _: &str, _: Bytes, _: Option<u64>) -> Result<u64, ReadModelError> {
            Err(ReadModelError::Unavailable("read-only test store".into()))
        }

        fn watch(&self) -> BoxStream<'static, Change> {
            stream::empty().boxed()
        }

        async fn keys(&self) -> Result<Vec<String>, ReadModelError> {
            Ok(Vec::new())
        }
    }

    fn entry(n: u128, until: Option<Timestamp>) -> FeedChange {
        let published_at = now();
        FeedChange::Upsert(Arc::new(FeedEntry {
            view: PublicationView {
                id: PublicationId::new(Uuid::from_u128(
                    0x0193_6f5e_0000_7000_8000_0000_0000_0000 + n,
                ))
                .unwrap(),
                communes: vec![rennes()],
                title: Title::parse("Travaux rue de Brest").unwrap(),
                body: Body::parse("Circulation alternée.").unwrap(),
                category: Category::Roadworks,
                priority: Priority::Normal,
                published_at,
                updated_at: published_at,
                visible_until: until,
                attachments: Vec::new(),
                version: 1,
            },
            shown_from: published_at,
        }))
    }

    fn rennes() -> InseeCode {
        InseeCode::parse("35238").unwrap()
    }

    fn board(changes: &[FeedChange], revision: u64) -> Versioned {
        let mut doc = FeedDocument::default();
        for change in changes {
            doc.apply(change, now());
        }
        Versioned {
            value: Bytes::from(encode_document(&doc)),
            revision,
        }
    }

    fn ids(page: &Rendered) -> Vec<String> {
        let page: serde_json::Value = serde_json::from_slice(&page.identity).unwrap();
        page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn rennes_cache(store: Arc<LaggingStore>) -> FeedCache {
        let communes = Arc::new(Communes::new(vec![CommuneView {
            code: rennes(),
            name: "Rennes".into(),
            department: "35".into(),
            postcodes: vec!["35000".into()],
            population: 220_488,
        }]));
        FeedCache::new(store, communes, 1 << 20, Arc::new(Metrics::new()))
            .keeping_recent_documents(1 << 18)
    }

    fn next_cursor(json: &[u8]) -> Option<SortKey> {
        let page: serde_json::Value = serde_json::from_slice(json).unwrap();
        page["next"].as_str().and_then(SortKey::from_cursor)
    }

    fn put(key: &str, revision: u64) -> Change {
        Change::Put {
            key: key.to_owned(),
            document: Versioned {
                value: Bytes::from(revision.to_string()),
                revision,
            },
        }
    }

    #[test]
    fn a_backlog_of_changes_keeps_each_keys_latest_and_nothing_before_a_reset() {
        let deleted = |key: &str| Change::Deleted {
            key: key.to_owned(),
        };
        assert_eq!(
            coalesce(vec![
                put("feed.35238", 1),
                put("pub.a", 2),
                put("feed.35047", 3),
                put("feed.35238", 4),
                deleted("feed.35047"),
            ]),
            vec![put("pub.a", 2), put("feed.35238", 4), deleted("feed.35047")],
            "each key once, at its last change, in the order of those changes"
        );
        assert_eq!(
            coalesce(vec![
                put("feed.35238", 1),
                Change::Reset,
                put("feed.35047", 3),
                Change::Reset,
                put("feed.35238", 5),
                put("feed.35238", 6),
            ]),
            vec![Change::Reset, put("feed.35238", 6)],
            "a reset drops whatever came before it"
        );
        assert_eq!(coalesce(vec![put("pub.a", 1)]), vec![put("pub.a", 1)]);
    }

    /// A watch that missed minutes of changes (its instance frozen) delivers
    /// them all at once: the cached feed ends at the latest document.
    #[tokio::test]
    async fn a_cached_feed_follows_a_backlog_to_its_latest_document() {
        let store = Arc::new(LaggingStore::default());
        let cache = Arc::new(rennes_cache(store.clone()));
        let mut changes: Vec<FeedChange> = vec![entry(1, None)];
        let first = board(&changes, 1);
        *store.replica.lock().unwrap() = Some(first.clone());
        *store.leader.lock().unwrap() = Some(first);
        assert_eq!(ids(&cache.feed(rennes()).await.unwrap()).len(), 1);

        let mut backlog = Vec::new();
        for n in 2..=300 {
            changes.push(entry(n, None));
            backlog.push(Change::Put {
                key: feed_key(&rennes()),
                document: board(&changes, n as u64),
            });
        }
        cache
            .clone()
            .follow(stream::iter(backlog).boxed(), CancellationToken::new())
            .await;
        let latest = cache.feed(rennes()).await.unwrap();
        assert_eq!(latest.revision, 300);
        let newest = PublicationId::new(Uuid::from_u128(
            0x0193_6f5e_0000_7000_8000_0000_0000_0000 + 300,
        ))
        .unwrap()
        .to_string();
        assert_eq!(ids(&latest)[0], newest, "the newest publication first");
        assert_eq!(ids(&latest).len(), 20);
    }

    #[tokio::test]
    async fn later_pages_of_a_feed_that_changed_are_served_while_the_store_cannot_be_read() {
        let store = Arc::new(LaggingStore::default());
        let cache = rennes_cache(store.clone());
        let mut changes: Vec<FeedChange> = (1..=25).map(|n| entry(n, None)).collect();
        let old = board(&changes, 1);
        *store.replica.lock().unwrap() = Some(old.clone());
        *store.leader.lock().unwrap() = Some(old);
        assert_eq!(ids(&cache.feed(rennes()).await.unwrap()).len(), 20);

        // The store loses its leaders (the broker has just come back) while
        // its change feed brings a new publication.
        store.down.store(true, Ordering::SeqCst);
        changes.push(entry(26, None));
        cache
            .apply(Change::Put {
                key: feed_key(&rennes()),
                document: board(&changes, 2),
            })
            .await;
        let first = cache.feed(rennes()).await.unwrap();
        assert_eq!(first.revision, 2);
        assert_eq!(ids(&first).len(), 20);
        let cursor = next_cursor(&first.identity).expect("the feed goes on");
        let second = cache
            .feed_page(rennes(), cursor)
            .await
            .expect("the document the change feed delivered tells the rest");
        let second: serde_json::Value = serde_json::from_slice(&second).unwrap();
        let mut shown: Vec<String> = ids(&first);
        shown.extend(
            second["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        assert_eq!(second["next"], serde_json::Value::Null, "the last page");
        let mut expected: Vec<String> = (1..=26)
            .map(|n| {
                PublicationId::new(Uuid::from_u128(
                    0x0193_6f5e_0000_7000_8000_0000_0000_0000 + n,
                ))
                .unwrap()
                .to_string()
            })
            .collect();
        expected.reverse();
        assert_eq!(shown, expected, "every publication once, newest first");
    }

    #[tokio::test]
    async fn past_the_cached_first_page_an_unreadable_store_is_unavailable_unless_its_document_was_delivered()
     {
        let store = Arc::new(LaggingStore::default());
        let cache = rennes_cache(store.clone());
        let changes: Vec<FeedChange> = (1..=25).map(|n| entry(n, None)).collect();
        let document = board(&changes, 1);
        *store.replica.lock().unwrap() = Some(document.clone());
        let first = cache.feed(rennes()).await.unwrap();
        let cursor = next_cursor(&first.identity).expect("the feed goes on");

        // Loaded, not delivered by the change feed: nothing is known of the
        // board past the first page.
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(
            cache.feed_page(rennes(), cursor).await,
            Err(ReadModelError::Unavailable(_))
        ));

        cache
            .apply(Change::Put {
                key: feed_key(&rennes()),
                document,
            })
            .await;
        let second = cache.feed_page(rennes(), cursor).await.unwrap();
        let second: serde_json::Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(second["publications"].as_array().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_publication_a_lagging_replica_does_not_have_yet_is_read_from_the_leader() {
        let store = Arc::new(LaggingStore::default());
        let cache = rennes_cache(store.clone());
        let FeedChange::Upsert(published) = entry(1, None) else {
            unreachable!("an entry is an upsert")
        };
        let view = &published.view;
        let record = PublicationState {
            id: view.id,
            publisher: PublisherId::new(Uuid::from_u128(7)),
            author: TokenId::new(Uuid::from_u128(8)),
            content: Content {
                communes: CommuneSet::new(vec![rennes()]).unwrap(),
                title: view.title.clone(),
                body: view.body.clone(),
                category: view.category,
                priority: view.priority,
                window: VisibilityWindow::new(None, None).unwrap(),
                attachments: Attachments::new(Vec::new()).unwrap(),
            },
            notify: true,
            status: Status::Live {
                published_at: view.published_at,
            },
            updated_at: None,
            version: 1,
        };
        *store.leader.lock().unwrap() = Some(Versioned {
            value: Bytes::from(encode_document(&record)),
            revision: 3,
        });
        let lookup = cache.publication(published.view.id).await.unwrap();
        let PublicationLookup::Visible(page) = lookup.as_ref() else {
            panic!("the leader has it: {lookup:?}");
        };
        let body: serde_json::Value = serde_json::from_slice(&page.identity).unwrap();
        assert_eq!(body["id"], published.view.id.to_string());
    }

    #[tokio::test]
    async fn a_feed_read_again_from_a_lagging_replica_is_not_taken_back_to_an_older_revision() {
        let store = Arc::new(LaggingStore::default());
        let cache = rennes_cache(store.clone());
        // An entry whose window closes soon makes the cached page expire.
        let closing = entry(1, Some(now().plus_micros(300_000)));
        let lasting = entry(2, None);
        let old = board(std::slice::from_ref(&closing), 1);
        *store.replica.lock().unwrap() = Some(old.clone());
        *store.leader.lock().unwrap() = Some(old);
        assert_eq!(ids(&cache.feed(rennes()).await.unwrap()).len(), 1);

        // The leader moves on and the watch brings the change; the replica
        // the next read asks is still at the old revision.
        let new = board(&[closing, lasting], 2);
        *store.leader.lock().unwrap() = Some(new.clone());
        cache
            .apply(Change::Put {
                key: feed_key(&rennes()),
                document: new,
            })
            .await;
        assert_eq!(ids(&cache.feed(rennes()).await.unwrap()).len(), 2);

        tokio::time::sleep(Duration::from_millis(400)).await;
        let page = cache.feed(rennes()).await.unwrap();
        assert_eq!(page.revision, 2, "read again from the leader");
        assert_eq!(
            ids(&page),
            vec![
                PublicationId::new(Uuid::from_u128(0x0193_6f5e_0000_7000_8000_0000_0000_0002))
                    .unwrap()
                    .to_string()
            ]
        );
    }

    /// Text that compresses like a feed's, not like a run of one byte.
    fn json_of(size: usize) -> Vec<u8> {
        let words = [
            "Mairie ", "de ", "Rennes ", "travaux ", "rue ", "école ", "fermée ", "alerte ",
        ];
        let mut state = 7_u64;
        let mut json = Vec::with_capacity(size);
        while json.len() < size {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            json.extend_from_slice(words[(state >> 61) as usize].as_bytes());
        }
        json.truncate(size);
        json
    }

    #[test]
    fn every_encoding_decodes_to_the_body_whatever_its_size() {
        for size in [0, 1, 1_000, 15_000, 70_000, 1_100_000] {
            let json = json_of(size);
            let rendered = Rendered::new(1, json.clone(), None, now());
            assert_eq!(&rendered.identity[..], &json[..], "identity, {size} bytes");
            let mut gunzipped = Vec::new();
            flate2::read::GzDecoder::new(&rendered.gzip[..])
                .read_to_end(&mut gunzipped)
                .expect("a valid gzip body");
            assert_eq!(gunzipped, json, "gzip, {size} bytes");
            let mut unbrotlied = Vec::new();
            brotli::Decompressor::new(&rendered.brotli[..], 4096)
                .read_to_end(&mut unbrotlied)
                .expect("a valid brotli body");
            assert_eq!(unbrotlied, json, "brotli, {size} bytes");
            if size >= 15_000 {
                assert!(
                    rendered.brotli.len() * 3 < json.len(),
                    "brotli compresses, {size} bytes"
                );
            }
        }
    }
}
