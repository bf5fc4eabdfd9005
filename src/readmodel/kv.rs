//! The feed store of the cluster mode: the JetStream KV bucket `PANNEAU_FEEDS`,
//! replicated by the NATS cluster, with compare-and-set on each key's revision.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{Change, FeedStore, ReadModelError, Versioned};

/// A KV bucket as a feed store.
#[derive(Debug, Clone)]
pub struct KvFeedStore {
    kv: kv::Store,
}

impl KvFeedStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }
}

fn unavailable(error: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Unavailable(error.to_string())
}

#[async_trait]
impl FeedStore for KvFeedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        let entry = self.kv.entry(key).await.map_err(unavailable)?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| Versioned {
                value: e.value,
                revision: e.revision,
            }))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        match expected {
            None => self
                .kv
                .create(key, value)
                .await
                .map_err(|e| match e.kind() {
                    CreateErrorKind::AlreadyExists => ReadModelError::Conflict,
                    _ => unavailable(e),
                }),
            Some(revision) => {
                self.kv
                    .update(key, value, revision)
                    .await
                    .map_err(|e| match e.kind() {
                        UpdateErrorKind::WrongLastRevision => ReadModelError::Conflict,
                        _ => unavailable(e),
                    })
            }
        }
    }

    async fn keys(&self) -> Result<Vec<String>, ReadModelError> {
        let keys = self.kv.keys().await.map_err(unavailable)?;
        keys.map(|k| k.map_err(unavailable))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Follows the bucket from now on. The first subscription starts with
    /// `Reset` (whatever was loaded before it existed is dropped); a
    /// resubscription after a broker outage resumes after the last revision
    /// seen, so the watcher catches up on exactly what it missed, without
    /// replaying every key of the bucket (a million documents at full scale).
    fn watch(&self) -> BoxStream<'static, Change> {
        struct State {
            kv: kv::Store,
            watch: Option<kv::Watch>,
            last_revision: Option<u64>,
            pending_reset: bool,
        }
        let state = State {
            kv: self.kv.clone(),
            watch: None,
            last_revision: None,
            pending_reset: false,
        };
        stream::unfold(state, |mut state| async move {
            loop {
                if state.pending_reset {
                    state.pending_reset = false;
                    return Some((Change::Reset, state));
                }
                let Some(current) = state.watch.as_mut() else {
                    let subscribed = match state.last_revision {
                        Some(last) => state.kv.watch_all_from_revision(last + 1).await,
                        None => state.kv.watch_all().await,
                    };
                    match subscribed {
                        Ok(w) => {
                            state.pending_reset = state.last_revision.is_none();
                            state.watch = Some(w);
                        }
                        Err(error) => {
                            tracing::debug!(error = %error, "cannot watch the feed bucket; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    continue;
                };
                match current.next().await {
                    Some(Ok(entry)) => {
                        state.last_revision = Some(entry.revision);
                        let change = match entry.operation {
                            Operation::Put => Change::Put {
                                key: entry.key,
                                document: Versioned {
                                    value: entry.value,
                                    revision: entry.revision,
                                },
                            },
                            Operation::Delete | Operation::Purge => Change::Deleted { key: entry.key },
                        };
                        return Some((change, state));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "feed bucket watch interrupted; resubscribing");
                        state.watch = None;
                    }
                    None => state.watch = None,
                }
            }
        })
        .boxed()
    }
}
