//! Generations of a read model: `panneau replay` builds a new generation beside
//! the live one, then switches every reader and writer to it at once.
//!
//! [`Generations`] is a feed store that forwards to the current generation. Its
//! revisions carry the generation in their high bits, so a revision of a newer
//! generation is always greater than any of an older one: the cache's rule
//! "never replace a document with an older revision" holds across a switch,
//! and a compare-and-set prepared against the old generation fails with
//! `Conflict` (the projector reads again, from the new one).

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use super::{Change, FeedStore, ReadModelError, SharedFeedStore, Versioned};

/// Revisions of one generation fit in the low 40 bits (10^12 writes).
const SHIFT: u32 = 40;
const MASK: u64 = (1 << SHIFT) - 1;

fn tag(generation: u64, revision: u64) -> u64 {
    (generation << SHIFT) | (revision & MASK)
}

/// A feed store that is, at any instant, one generation of the read model.
pub struct Generations {
    current: Arc<RwLock<(u64, SharedFeedStore)>>,
    switched: watch::Sender<u64>,
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Generations {
    pub fn new(generation: u64, store: SharedFeedStore) -> Self {
        Self {
            current: Arc::new(RwLock::new((generation, store))),
            switched: watch::channel(generation).0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.current.read().expect("generations lock poisoned").0
    }

    fn current(&self) -> (u64, SharedFeedStore) {
        let current = self.current.read().expect("generations lock poisoned");
        (current.0, current.1.clone())
    }

    /// Makes `store` the current generation, if `generation` is newer than the
    /// current one. Returns whether it switched.
    pub fn switch(&self, generation: u64, store: SharedFeedStore) -> bool {
        {
            let mut current = self.current.write().expect("generations lock poisoned");
            if generation <= current.0 {
                return false;
            }
            *current = (generation, store);
        }
        self.switched.send_replace(generation);
        true
    }
}

#[async_trait]
impl FeedStore for Generations {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        let (generation, store) = self.current();
        Ok(store.get(key).await?.map(|d| Versioned {
            value: d.value,
            revision: tag(generation, d.revision),
        }))
    }

    async fn get_latest(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        let (generation, store) = self.current();
        Ok(store.get_latest(key).await?.map(|d| Versioned {
            value: d.value,
            revision: tag(generation, d.revision),
        }))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        let (generation, store) = self.current();
        let expected = match expected {
            None => None,
            Some(revision) if revision >> SHIFT == generation => Some(revision & MASK),
            // Read from another generation: read again.
            Some(_) => return Err(ReadModelError::Conflict),
        };
        let revision = store.put(key, value, expected).await?;
        Ok(tag(generation, revision))
    }

    async fn keys(&self) -> Result<Vec<String>, ReadModelError> {
        self.current().1.keys().await
    }

    fn floor(&self) -> u64 {
        tag(self.generation(), 0)
    }

    /// The changes of the current generation; at a switch, `Reset` and then the
    /// changes of the new one.
    fn watch(&self) -> BoxStream<'static, Change> {
        let mut switched = self.switched.subscribe();
        let (generation, store) = self.current();
        switched.mark_unchanged();
        let this = WatchState {
            switched,
            generation,
            changes: store.watch(),
            pending_reset: false,
            shared: self.current.clone(),
        };
        stream::unfold(this, |mut state| async move {
            loop {
                if state.pending_reset {
                    state.pending_reset = false;
                    return Some((Change::Reset, state));
                }
                tokio::select! {
                    changed = state.switched.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        let (generation, store) = state.shared.read().expect("generations lock poisoned").clone();
                        state.generation = generation;
                        state.changes = store.watch();
                        state.pending_reset = true;
                    }
                    change = state.changes.next() => {
                        let change = change?;
                        let generation = state.generation;
                        return Some((retag(change, generation), state));
                    }
                }
            }
        })
        .boxed()
    }
}

struct WatchState {
    switched: watch::Receiver<u64>,
    generation: u64,
    changes: BoxStream<'static, Change>,
    pending_reset: bool,
    /// The watch outlives `&Generations`: it reads the current one through this.
    shared: Arc<RwLock<(u64, SharedFeedStore)>>,
}

fn retag(change: Change, generation: u64) -> Change {
    match change {
        Change::Put { key, document } => Change::Put {
            key,
            document: Versioned {
                value: document.value,
                revision: tag(generation, document.revision),
            },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readmodel::MemoryFeedStore;

    #[tokio::test]
    async fn a_switch_moves_reads_writes_and_watchers_to_the_new_generation() {
        let old: SharedFeedStore = Arc::new(MemoryFeedStore::default());
        let new: SharedFeedStore = Arc::new(MemoryFeedStore::default());
        old.put("feed.35238", Bytes::from_static(b"old"), None)
            .await
            .unwrap();
        new.put("feed.35238", Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        let generations = Generations::new(1, old.clone());
        let mut changes = generations.watch();

        let before = generations.get("feed.35238").await.unwrap().unwrap();
        assert_eq!(before.value, Bytes::from_static(b"old"));
        assert!(generations.switch(2, new.clone()));
        assert!(
            !generations.switch(2, old.clone()),
            "never back to an older one"
        );

        assert_eq!(changes.next().await, Some(Change::Reset));
        let after = generations.get("feed.35238").await.unwrap().unwrap();
        assert_eq!(after.value, Bytes::from_static(b"new"));
        assert!(
            after.revision > before.revision,
            "newer generation, greater revision"
        );
        assert!(generations.floor() > before.revision);

        // A write prepared against the old generation must read again.
        let stale = generations
            .put(
                "feed.35238",
                Bytes::from_static(b"x"),
                Some(before.revision),
            )
            .await;
        assert!(matches!(stale, Err(ReadModelError::Conflict)));
        let written = generations
            .put("feed.35238", Bytes::from_static(b"y"), Some(after.revision))
            .await
            .unwrap();
        assert_eq!(
            changes.next().await,
            Some(Change::Put {
                key: "feed.35238".into(),
                document: Versioned {
                    value: Bytes::from_static(b"y"),
                    revision: written,
                },
            })
        );
        assert_eq!(
            old.get("feed.35238").await.unwrap().unwrap().value,
            Bytes::from_static(b"old"),
            "the old generation is left as it was"
        );
    }
}
