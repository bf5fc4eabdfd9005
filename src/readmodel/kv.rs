//! The feed store of the cluster mode: the JetStream KV bucket `PANNEAU_FEEDS`,
//! replicated by the NATS cluster, with compare-and-set on each key's revision.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateError, UpdateErrorKind};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, ErrorCode};
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

/// How long a read waits for its answer. A request sent while a stream has no
/// leader (the broker restarting) is never answered: it is asked again soon
/// rather than after the client's default five seconds.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for a compare-and-set, whose acknowledgement waits for an fsync on
/// a quorum of replicas.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for the creation of a watch's consumer. Without it, a request
/// sent while the bucket's stream is still electing its leader waits for the
/// client's ten-second request timeout, and the cache stays stale that long
/// after the leader is back.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

fn unavailable(error: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Unavailable(error.to_string())
}

/// Whether a compare-and-set failed because the key moved on. async-nats
/// recognises only the server's error code 10071; nats-server 2.11 and later
/// answer 10164 ("wrong last sequence", without the number) in clustered
/// streams, which async-nats reports as a generic publish failure. Taken for an
/// outage, every ordinary conflict between two projectors would cost a
/// redelivery delay.
fn is_wrong_last_sequence(error: &UpdateError) -> bool {
    if error.kind() == UpdateErrorKind::WrongLastRevision {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(js) = cause.downcast_ref::<jetstream::Error>()
            && matches!(
                js.error_code(),
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}

impl KvFeedStore {
    /// The latest revision of a key without the JetStream API: a replica's
    /// answer (a direct get), written back unchanged with compare-and-set on
    /// its revision. The bucket's leader accepts that write only if no later
    /// revision exists, which makes the answer the latest one, now at a new
    /// revision. A replica's answer is never used unconfirmed: a projector
    /// that took a lagging record for the latest would re-apply an event
    /// already superseded to the feeds. An absence cannot be confirmed this
    /// way, nor a replica that lags: both are `Unavailable`, tried again soon.
    ///
    /// # Errors
    /// `Unavailable`, as above or when the bucket cannot be reached.
    pub async fn confirmed_by_rewrite(
        &self,
        key: &str,
    ) -> Result<Option<Versioned>, ReadModelError> {
        let Some(read) = self.get(key).await? else {
            return Err(unavailable(
                "an absent key cannot be confirmed without the JetStream API",
            ));
        };
        match self.put(key, read.value.clone(), Some(read.revision)).await {
            Ok(revision) => Ok(Some(Versioned {
                value: read.value,
                revision,
            })),
            Err(ReadModelError::Conflict) => Err(unavailable(
                "the replica that answered lags behind the bucket's leader",
            )),
            Err(other) => Err(other),
        }
    }
}

#[async_trait]
impl FeedStore for KvFeedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        let entry = tokio::time::timeout(READ_TIMEOUT, self.kv.entry(key))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| Versioned {
                value: e.value,
                revision: e.revision,
            }))
    }

    /// A read of the stream's leader (`STREAM.MSG.GET`), where `get` is a
    /// direct get that any replica, up to date or not, may answer.
    ///
    /// `STREAM.MSG.GET` is a JetStream API request, which the servers refuse
    /// while the cluster has no metadata leader (error 10008, "JetStream system
    /// temporarily unavailable"): for seconds after a paused or restarted
    /// server comes back, even though the bucket's own leader is up and
    /// accepts writes. Then see [`Self::confirmed_by_rewrite`].
    async fn get_latest(&self, key: &str) -> Result<Option<Versioned>, ReadModelError> {
        let subject = format!("{}{key}", self.kv.prefix);
        let answer = tokio::time::timeout(
            READ_TIMEOUT,
            self.kv.stream.get_last_raw_message_by_subject(&subject),
        )
        .await
        .map_err(unavailable)?;
        match answer {
            Ok(message) => {
                let removed = message
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                Ok((!removed).then_some(Versioned {
                    value: message.payload,
                    revision: message.sequence,
                }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "the bucket's leader cannot be asked; confirming a replica's answer");
                self.confirmed_by_rewrite(key).await
            }
        }
    }

    /// Compare-and-set on the key's last sequence (0: no message yet; keys of
    /// these buckets are never deleted). Not `kv.create`: when the key exists,
    /// it asks a replica whether it was deleted, and a lagging replica's "not
    /// found" turns the conflict into an opaque error.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        // A write whose acknowledgement does not come in time may still have
        // been applied: the caller reads again and finds it (a conflict, then
        // a duplicate), so giving up early is safe.
        tokio::time::timeout(
            WRITE_TIMEOUT,
            self.kv.update(key, value, expected.unwrap_or(0)),
        )
        .await
        .map_err(unavailable)?
        .map_err(|e| {
            if is_wrong_last_sequence(&e) {
                ReadModelError::Conflict
            } else {
                unavailable(e)
            }
        })
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
            connections: tokio::sync::watch::Receiver<u64>,
        }
        let mut connections = crate::bus::jetstream::CONNECTIONS.subscribe();
        connections.mark_unchanged();
        let state = State {
            kv: self.kv.clone(),
            watch: None,
            last_revision: None,
            pending_reset: false,
            connections,
        };
        stream::unfold(state, |mut state| async move {
            loop {
                if state.pending_reset {
                    state.pending_reset = false;
                    return Some((Change::Reset, state));
                }
                let Some(current) = state.watch.as_mut() else {
                    // Reconnections before this attempt are dealt with by it:
                    // only one after it must make the new watch start again.
                    state.connections.mark_unchanged();
                    let subscribe = async {
                        match state.last_revision {
                            Some(last) => state.kv.watch_all_from_revision(last + 1).await,
                            None => state.kv.watch_all().await,
                        }
                    };
                    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe).await {
                        Ok(Ok(w)) => {
                            tracing::debug!(after = state.last_revision, "watching the feed bucket");
                            state.pending_reset = state.last_revision.is_none();
                            state.watch = Some(w);
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(error = %error, "cannot watch the feed bucket; retrying");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(_) => {
                            tracing::debug!("watching the feed bucket timed out; retrying");
                        }
                    }
                    continue;
                };
                // After a reconnection, subscribe again: when the whole broker
                // restarted, the watch's consumer is gone, and it could take
                // long to notice.
                let next = tokio::select! {
                    next = current.next() => next,
                    changed = state.connections.changed() => {
                        if changed.is_ok() {
                            tracing::info!("reconnected to NATS; watching the feed bucket again");
                            state.watch = None;
                        }
                        continue;
                    }
                };
                match next {
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

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    use super::*;

    /// The answer of a clustered stream (nats-server ≥ 2.11) to a failed
    /// compare-and-set, as async-nats hands it over: a generic publish error.
    fn publish_error(err_code: u64) -> UpdateError {
        let answer: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": err_code, "description": "wrong last sequence"
        }))
        .expect("a JetStream error answer");
        UpdateError::from(PublishError::with_source(PublishErrorKind::Other, answer))
    }

    #[test]
    fn both_wrong_last_sequence_codes_are_conflicts_and_nothing_else_is() {
        assert!(is_wrong_last_sequence(&publish_error(10164)));
        assert!(is_wrong_last_sequence(&publish_error(10071)));
        assert!(!is_wrong_last_sequence(&publish_error(10077)));
        assert!(!is_wrong_last_sequence(&UpdateError::new(
            UpdateErrorKind::TimedOut
        )));
    }
}
