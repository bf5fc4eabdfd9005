//! The read side: documents of the feed read model in a key-value store with
//! compare-and-set and a change feed (`FeedStore`), and the cache of rendered
//! feeds the API serves from (`cache`).
//!
//! The read path never touches the write side: nothing here may depend on
//! `store`, which is why reads survive a database outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use panneau_domain::{InseeCode, PublicationId, PublisherId};
use tokio::sync::broadcast;

use crate::codec::CodecError;

pub mod cache;
pub mod generations;
pub mod kv;

/// A stored document and its revision (strictly increasing per key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub revision: u64,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key now holds this document.
    Put { key: String, document: Versioned },
    /// The key was deleted.
    Deleted { key: String },
    /// The watcher missed changes (it lagged, or the store reconnected): forget
    /// everything derived from the store.
    Reset,
}

/// Why the feed store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// The compare-and-set lost: the key is not at the expected revision. Re-read
    /// and retry.
    #[error("the document changed concurrently")]
    Conflict,
    /// 503 if nothing is cached: the store cannot be reached.
    #[error("feed store unavailable: {0}")]
    Unavailable(String),
    /// 500: a stored document does not decode.
    #[error("stored document cannot be decoded")]
    Corrupt(#[from] CodecError),
}

/// A key-value store of read-model documents with compare-and-set and a change
/// feed: a JetStream KV bucket in cluster mode, a map in embedded mode.
#[async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// # Errors
    /// `Unavailable`.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError>;

    /// The latest committed revision of a key, read before a compare-and-set.
    /// `get` may be answered by a replica that lags behind (cheap, right for
    /// readers, who follow changes anyway); this asks the replica that orders
    /// the writes, so that a projector does not loop on conflicts, or wait for a
    /// gap that is not there, while a replica catches up after a broker restart.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn get_latest(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        self.get(key).await
    }

    /// Writes `value` if the key is at revision `expected` (`None`: absent), and
    /// returns the new revision.
    ///
    /// # Errors
    /// `Conflict` when the key is elsewhere; `Unavailable`.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, ReadModelError>;

    /// Every change from now on, in the order the store applied them.
    fn watch(&self) -> BoxStream<'static, Change>;

    /// Every key (for `panneau replay --verify`).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn keys(&self) -> Result<Vec<String>, ReadModelError>;

    /// Every revision this store hands out from now on is at least this: a
    /// cached document below it comes from an older generation of the read
    /// model and is read again. A missing key counts as being at this revision.
    fn floor(&self) -> u64 {
        0
    }
}

/// The key of a commune's board.
pub fn feed_key(commune: &InseeCode) -> String {
    format!("feed.{commune}")
}

/// The key of a publication's record.
pub fn publication_key(id: &PublicationId) -> String {
    format!("pub.{id}")
}

/// The key of one of a publisher's statistics documents (stats model; see
/// [`panneau_projections::stats::shard`]).
pub fn stats_key(publisher: &PublisherId, shard: u8) -> String {
    format!("stats.{publisher}.{shard:02}")
}

/// The key naming the publisher of a publication (stats model): events after
/// the creation do not carry it.
pub fn owner_key(id: &PublicationId) -> String {
    format!("owner.{id}")
}

/// The read models folded from the log, each in its own store and replayed on
/// its own (`panneau replay feeds|stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// The per-commune feeds the apps read (and the publication records).
    Feeds,
    /// The per-publisher statistics of the publisher API.
    Stats,
}

impl Model {
    pub const ALL: [Model; 2] = [Model::Feeds, Model::Stats];

    pub fn name(self) -> &'static str {
        match self {
            Model::Feeds => "feeds",
            Model::Stats => "stats",
        }
    }
}

/// The feed store of the embedded mode: documents in memory, rebuilt from the
/// SQLite log at start.
#[derive(Debug)]
pub struct MemoryFeedStore {
    documents: RwLock<HashMap<String, Versioned>>,
    revision: AtomicU64,
    changes: broadcast::Sender<Change>,
}

impl Default for MemoryFeedStore {
    fn default() -> Self {
        Self {
            documents: RwLock::default(),
            revision: AtomicU64::new(0),
            changes: broadcast::channel(4096).0,
        }
    }
}

impl MemoryFeedStore {
    pub fn len(&self) -> usize {
        self.documents
            .read()
            .expect("feed store lock poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl FeedStore for MemoryFeedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        Ok(self
            .documents
            .read()
            .expect("feed store lock poisoned")
            .get(key)
            .cloned())
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        let document = {
            let mut documents = self.documents.write().expect("feed store lock poisoned");
            let current = documents.get(key).map(|d| d.revision);
            if current != expected {
                return Err(ReadModelError::Conflict);
            }
            let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
            let document = Versioned { value, revision };
            documents.insert(key.to_owned(), document.clone());
            document
        };
        let revision = document.revision;
        // No watcher is fine: nothing is cached yet.
        let _ = self.changes.send(Change::Put {
            key: key.to_owned(),
            document,
        });
        Ok(revision)
    }

    async fn keys(&self) -> Result<Vec<String>, ReadModelError> {
        Ok(self
            .documents
            .read()
            .expect("feed store lock poisoned")
            .keys()
            .cloned()
            .collect())
    }

    fn watch(&self) -> BoxStream<'static, Change> {
        let receiver = self.changes.subscribe();
        stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(change) => Some((change, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Change::Reset, receiver)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

/// A shared handle on a feed store.
pub type SharedFeedStore = Arc<dyn FeedStore>;
