//! Rendered feeds and publications, held in moka, ready to be written to a socket.
//!
//! A feed is rendered once per change to its document: JSON, gzip and brotli,
//! with an ETag. An entry is fresh until its feed next changes by time (a
//! `visible_from` or `visible_until` passing), and is re-rendered from the change
//! feed of the store when its document changes. Concurrent misses for one key
//! cost one load: loads and refreshes of a key run one at a time, under moka's
//! per-key compute lock.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use panneau_domain::{InseeCode, PublicationId, PublicationState, Status, Timestamp};
use panneau_projections::{Communes, FeedDocument, FeedEntry, PAGE_SIZE, SortKey, render_page};
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
        }
    }

    fn weight(&self) -> u32 {
        let bytes = self.identity.len() + self.gzip.len() + self.brotli.len() + 128;
        u32::try_from(bytes).unwrap_or(u32::MAX)
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

/// The cache the public API reads from.
pub struct FeedCache {
    store: SharedFeedStore,
    communes: Arc<Communes>,
    feeds: Cache<InseeCode, Arc<Rendered>>,
    publications: Cache<PublicationId, Arc<PublicationLookup>>,
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
            publications,
            metrics,
        }
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
                if existing.is_some_and(|e| usable(e.value(), floor)) {
                    return Ok(Op::Nop);
                }
                let document = self.load(&feed_key(&commune)).await?;
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
        let document = self.load(&feed_key(&commune)).await?;
        let doc: FeedDocument = match &document {
            Some(d) => decode_document(&d.value)?,
            None => FeedDocument::default(),
        };
        let view = self
            .communes
            .get(&commune)
            .expect("callers check the commune exists");
        Ok(render_page(view, &doc, now(), Some(cursor), PAGE_SIZE).json)
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
                let document = self.load(&publication_key(&id)).await?;
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
        let (doc, revision) = match document {
            Some(d) => (decode_document::<FeedDocument>(&d.value)?, d.revision),
            None => (FeedDocument::default(), self.store.floor()),
        };
        let view = self
            .communes
            .get(&commune)
            .expect("callers check the commune exists");
        let now = now();
        let page = render_page(view, &doc, now, None, PAGE_SIZE);
        Ok(Rendered::new(revision, page.json, page.next_change, now))
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
                    self.feeds.invalidate(&code).await;
                } else if let Some(id) = key
                    .strip_prefix("pub.")
                    .and_then(|i| PublicationId::parse(i).ok())
                {
                    self.publications.invalidate(&id).await;
                }
            }
            Change::Reset => {
                self.feeds.invalidate_all();
                self.publications.invalidate_all();
            }
        }
    }

    /// Follows a change feed of the store until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        mut changes: BoxStream<'static, Change>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.next() => match change {
                    Some(change) => self.apply(change).await,
                    None => return,
                },
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
    let now = now();
    if entry.shown_from > now {
        return Ok(PublicationLookup::NotFound {
            revision,
            shown_from: Some(
                Instant::now() + Duration::from_micros(now.micros_until(entry.shown_from)),
            ),
        });
    }
    let json = serde_json::to_vec(&entry.view).expect("a publication serialises");
    Ok(PublicationLookup::Visible(Rendered::new(
        revision, json, None, now,
    )))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

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
