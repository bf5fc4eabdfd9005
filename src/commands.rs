//! Running a command against a publication: load its stream, fold it, let the
//! domain decide, append what it decided with optimistic concurrency.
//!
//! Shared by the publisher API and the scheduler, so both follow the same path
//! and the same retry rules.

use std::sync::Arc;

use panneau_domain::{
    Actor, Command, Envelope, EventId, Publication, PublicationError, PublicationId, PublisherId,
    RequestId, Status, StreamId, Timestamp, decide, evolve,
};
use tracing::instrument;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{Append, EventStore, IdempotencyRecord, RecordedEvent, StoreError};

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused it (see each variant's HTTP meaning).
    #[error(transparent)]
    Refused(#[from] PublicationError),
    /// 412: the client's `If-Match` names another version than the current one.
    #[error("the publication is at version {current}")]
    VersionMismatch { current: u64 },
    /// The store failed, or the idempotency key was used before.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who, under which request, and with which idempotency key.
#[derive(Debug, Clone)]
pub struct Context {
    pub actor: Actor,
    pub request_id: Option<RequestId>,
    pub now: Timestamp,
}

/// What an accepted command left behind.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub version: u64,
    pub events: Vec<RecordedEvent>,
}

/// Runs commands against the event log.
#[derive(Clone)]
pub struct CommandHandler {
    log: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CommandHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandler").finish_non_exhaustive()
    }
}

/// How many times a command without `If-Match` is retried when another one
/// changed the stream between our read and our append.
const CONFLICT_RETRIES: usize = 3;

impl CommandHandler {
    pub fn new(log: Arc<dyn EventStore>, metrics: Arc<Metrics>) -> Self {
        Self { log, metrics }
    }

    /// The current state of a publication, folded from its stream.
    ///
    /// # Errors
    /// `Store` when the log cannot be read.
    pub async fn load(
        &self,
        id: PublicationId,
    ) -> Result<(Publication, Vec<RecordedEvent>), StoreError> {
        let events = self.log.read_stream(&StreamId::publication(id)).await?;
        let state = events.iter().fold(Publication::Absent, |state, e| {
            evolve(state, &e.envelope.payload)
        });
        Ok((state, events))
    }

    /// Runs `command` on publication `id`. With `if_match`, the publication must
    /// be at that version (412 otherwise); without it, a concurrent change is
    /// retried from a fresh read.
    ///
    /// # Errors
    /// `Refused`, `VersionMismatch`, or `Store` (including `IdempotencyKeyUsed`).
    #[instrument(skip_all, fields(publication = %id, command = command_name(&command)))]
    pub async fn execute(
        &self,
        id: PublicationId,
        command: Command,
        if_match: Option<u64>,
        context: &Context,
        owner: Option<PublisherId>,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<Accepted, CommandError> {
        let name = command_name(&command);
        let result = self
            .attempt(id, command, if_match, context, owner, idempotency)
            .await;
        let outcome = match &result {
            Ok(_) | Err(CommandError::Store(StoreError::IdempotencyKeyUsed(_))) => "accepted",
            Err(CommandError::Refused(_)) => "refused",
            Err(
                CommandError::VersionMismatch { .. }
                | CommandError::Store(StoreError::VersionConflict),
            ) => "conflict",
            Err(CommandError::Store(e)) if e.is_unavailable() => "unavailable",
            Err(CommandError::Store(_)) => "error",
        };
        self.metrics.command(name, outcome);
        result
    }

    async fn attempt(
        &self,
        id: PublicationId,
        command: Command,
        if_match: Option<u64>,
        context: &Context,
        owner: Option<PublisherId>,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<Accepted, CommandError> {
        let stream = StreamId::publication(id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A publication id is fresh from `Uuid::now_v7()`: its stream is empty, so
            // the first attempt skips the read (should it exist after all, the append
            // conflicts and the retry reads it).
            let creation = matches!(command, Command::Publish { .. } | Command::Schedule { .. });
            let state = if creation && attempt == 1 {
                Publication::Absent
            } else {
                self.load(id).await?.0
            };
            let current = state.version();
            // An unknown or retracted publication says so, whatever version was named.
            if if_match.is_some() {
                match state.state().map(|s| s.status) {
                    None => return Err(PublicationError::NotFound.into()),
                    Some(Status::Retracted { .. }) => {
                        return Err(PublicationError::AlreadyRetracted.into());
                    }
                    Some(_) => {}
                }
            }
            if let Some(expected) = if_match
                && expected != current
            {
                return Err(CommandError::VersionMismatch { current });
            }
            let events = decide(&state, command.clone(), context.now)?;
            let envelopes: Vec<_> = events
                .into_iter()
                .enumerate()
                .map(|(i, payload)| Envelope {
                    event_id: EventId::new(Uuid::now_v7()),
                    stream_id: stream.clone(),
                    stream_version: current + 1 + i as u64,
                    event_type: payload.event_type(),
                    schema_version: payload.schema_version(),
                    occurred_at: context.now,
                    recorded_at: crate::now(),
                    actor: context.actor.clone(),
                    request_id: context.request_id.clone(),
                    payload,
                })
                .collect();
            let append = Append {
                stream: stream.clone(),
                expected_version: current,
                events: envelopes,
                owner,
                idempotency: idempotency.clone(),
            };
            match self.log.append(append).await {
                Ok(recorded) => {
                    let version = recorded
                        .last()
                        .map_or(current, |e| e.envelope.stream_version);
                    return Ok(Accepted {
                        version,
                        events: recorded,
                    });
                }
                Err(StoreError::VersionConflict)
                    if if_match.is_none() && attempt < CONFLICT_RETRIES => {}
                Err(StoreError::VersionConflict) => {
                    let (state, _) = self.load(id).await?;
                    return Err(CommandError::VersionMismatch {
                        current: state.version(),
                    });
                }
                Err(other) => return Err(other.into()),
            }
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Publish { .. } => "publish",
        Command::Schedule { .. } => "schedule",
        Command::GoLive => "go_live",
        Command::Amend { .. } => "amend",
        Command::Retract { .. } => "retract",
    }
}
