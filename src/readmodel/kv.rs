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

    /// Follows the bucket. Each (re)subscription first replays the latest value
    /// of every key, so a watcher that lost its subscription during a broker
    /// outage catches up without forgetting what it holds.
    fn watch(&self) -> BoxStream<'static, Change> {
        let kv = self.kv.clone();
        stream::unfold((kv, None::<kv::Watch>), |(kv, mut watch)| async move {
            loop {
                let Some(current) = watch.as_mut() else {
                    match kv.watch_with_history(">").await {
                        Ok(w) => watch = Some(w),
                        Err(error) => {
                            tracing::debug!(error = %error, "cannot watch the feed bucket; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    continue;
                };
                match current.next().await {
                    Some(Ok(entry)) => {
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
                        return Some((change, (kv, watch)));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "feed bucket watch interrupted; resubscribing");
                        watch = None;
                    }
                    None => watch = None,
                }
            }
        })
        .boxed()
    }
}
