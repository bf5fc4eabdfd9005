//! The write side's storage: the event log (the system of record) and the state
//! tables beside it (publishers and their tokens, refused attempts, view counts).
//!
//! The core owns the traits; `sqlite` (embedded mode) and `mariadb` (cluster mode)
//! implement them. Adapters here know nothing of HTTP: they return typed errors
//! and the API maps them to statuses.

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use panneau_domain::{
    Envelope, InseeCode, Locale, Platform, Priority, PublicationEvent, PublicationId, PublisherId,
    PushToken, RequestId, Role, Scope, StreamId, Timestamp, TokenId,
};
use uuid::Uuid;

use crate::codec::CodecError;

pub mod archive;
pub mod sql;
mod sql_archive;
mod sql_push;

/// An event as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Order of commit in the log of one node. Used to resume a reader; never
    /// relied on for order across streams in cluster mode.
    pub position: i64,
    pub envelope: Envelope<PublicationEvent>,
}

/// What a command hands to the log: events for one stream, appended after
/// `expected_version`, and the idempotency record that commits with them.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: StreamId,
    pub expected_version: u64,
    pub events: Vec<Envelope<PublicationEvent>>,
    /// The publisher owning the stream, recorded with its first event so that a
    /// publisher's publications can be listed.
    pub owner: Option<PublisherId>,
    pub idempotency: Option<IdempotencyRecord>,
}

/// The answer given to a request made with an `Idempotency-Key`, kept so that a
/// retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub publisher: PublisherId,
    pub key: String,
    /// SHA-256 of the canonical request body: the same key with another body is refused.
    pub request_hash: [u8; 32],
    pub stream: StreamId,
    pub status: u16,
    pub response: Vec<u8>,
    pub created_at: Timestamp,
}

/// Why the store could not do what was asked. Each variant says what the HTTP
/// edge answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// 409 (412 with `If-Match`): the stream moved on since it was read.
    #[error("the stream was changed concurrently")]
    VersionConflict,
    /// The idempotency key was already used by this publisher: here is the answer
    /// given then (the same body gets it again; another body gets 422).
    #[error("idempotency key already used")]
    IdempotencyKeyUsed(Box<IdempotencyRecord>),
    /// 503 with `Retry-After`: the database cannot be reached, is overloaded, or
    /// lost the transaction (nothing was acknowledged).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// 500: stored bytes no longer decode.
    #[error("stored event cannot be decoded")]
    Corrupt(#[from] CodecError),
    /// 500: any other database failure.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Sorts a driver error into "try again later" and "bug".
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::Io(_)
            | E::Tls(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Protocol(_) => StoreError::Unavailable(error),
            E::Database(db) if is_transient(db.as_ref()) => StoreError::Unavailable(error),
            _ => StoreError::Database(error),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Database errors that mean "not now" rather than "never": SQLite busy/locked,
/// MariaDB deadlock/lock wait/Galera certification failure, read-only or
/// non-primary node, lost connection.
pub(crate) fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    matches!(
        code,
        // SQLite: SQLITE_BUSY, SQLITE_LOCKED (extended codes keep the low byte).
        "5" | "6" | "261" | "517" | "262"
        // MariaDB SQLSTATEs: serialization failure (1213, 1020), lock wait timeout
        // (1205, HY000 is too broad so it is matched by number below), read-only,
        // WSREP not ready (08S01), connection failures.
        | "40001" | "08S01" | "08004" | "08003" | "08006" | "25006"
    ) || mysql_number(db).is_some_and(|n| {
        matches!(
            n,
            1020 | 1047 | 1205 | 1213 | 1290 | 1927 | 2006 | 2013 | 4031
        )
    })
}

/// The MariaDB error number, when the error comes from MariaDB.
pub(crate) fn mysql_number(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(sqlx::mysql::MySqlDatabaseError::number)
}

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to a stream, atomically with their idempotency record (and,
    /// in cluster mode, their outbox rows). Returns them as recorded.
    ///
    /// # Errors
    /// `VersionConflict` when the stream is no longer at `expected_version`;
    /// `IdempotencyKeyUsed` when the key was used before; `Unavailable`.
    async fn append(&self, append: Append) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Every event of one stream, in version order (empty for an unknown stream).
    ///
    /// # Errors
    /// `Unavailable`, `Corrupt`.
    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Every event recorded after `position`, in position order, streamed
    /// without holding them all in memory.
    fn read_after(&self, position: i64) -> BoxStream<'_, Result<RecordedEvent, StoreError>>;

    /// Every recorded event, one whole stream after the other, each stream's
    /// events in version order: the cheapest way to read the whole log (the
    /// primary key's order, where position order costs MariaDB a sort), for
    /// folds that only need each stream's own order. A stream read here is
    /// never continued later in the same read.
    fn read_by_stream(&self) -> BoxStream<'_, Result<RecordedEvent, StoreError>>;

    /// The position of the last recorded event (0 for an empty log).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn last_position(&self) -> Result<i64, StoreError>;

    /// The answer stored for an idempotency key, if any.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn idempotency(
        &self,
        publisher: PublisherId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Scheduled publications whose `publish_at` has come, earliest first.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<PublicationId>, StoreError>;

    /// The publications a publisher created, newest first.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn publications_of(
        &self,
        publisher: PublisherId,
        limit: u32,
    ) -> Result<Vec<PublicationId>, StoreError>;
}

/// How an event changes the table of publications waiting to go live, which
/// stores keep in the same transaction as the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScheduleChange {
    Set {
        id: PublicationId,
        publish_at: Timestamp,
    },
    Clear {
        id: PublicationId,
    },
}

impl ScheduleChange {
    pub(crate) fn of(event: &PublicationEvent) -> Option<Self> {
        match event {
            PublicationEvent::Scheduled(e) => Some(ScheduleChange::Set {
                id: e.id,
                publish_at: e.publish_at,
            }),
            PublicationEvent::Amended(e) => {
                e.changes.publish_at.map(|publish_at| ScheduleChange::Set {
                    id: e.id,
                    publish_at,
                })
            }
            PublicationEvent::WentLive(e) => Some(ScheduleChange::Clear { id: e.id }),
            PublicationEvent::Retracted(e) => Some(ScheduleChange::Clear { id: e.id }),
            PublicationEvent::Published(_) => None,
        }
    }
}

/// A bearer token as stored (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub publisher: PublisherId,
    pub publisher_name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A publisher and its tokens, for `panneau publisher list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSummary {
    pub id: PublisherId,
    pub name: String,
    pub created_at: Timestamp,
    pub tokens: Vec<TokenRecord>,
}

/// A command refused for lack of rights, kept in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: Timestamp,
    pub publisher: PublisherId,
    pub token: TokenId,
    pub request_id: Option<RequestId>,
    /// What was attempted: `publish`, `amend`, `retract`, `history`.
    pub action: &'static str,
    pub publication: Option<PublicationId>,
    pub reason: String,
}

/// The state tables beside the log.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Creates a publisher with its first token.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn create_publisher(
        &self,
        name: &str,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(PublisherId, TokenId), StoreError>;

    /// Adds a token to an existing publisher; `None` if there is no such publisher.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn add_token(
        &self,
        publisher: PublisherId,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<Option<TokenId>, StoreError>;

    /// # Errors
    /// `Unavailable`, `Database`.
    async fn list_publishers(&self) -> Result<Vec<PublisherSummary>, StoreError>;

    /// Revokes a token, or every token of a publisher; returns how many were revoked.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn revoke(&self, id: uuid::Uuid, now: Timestamp) -> Result<u64, StoreError>;

    /// The token whose hash this is, revoked or not.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;

    /// # Errors
    /// `Unavailable`, `Database`.
    async fn record_refusal(&self, refusal: &Refusal) -> Result<(), StoreError>;

    /// The refusals concerning one publication, oldest first.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn refusals_for(&self, publication: PublicationId) -> Result<Vec<Refusal>, StoreError>;

    /// Adds counted views.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn add_views(&self, views: &[(PublicationId, u64)]) -> Result<(), StoreError>;

    /// The views counted so far for these publications (absent ones have none).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn views(
        &self,
        publications: &[PublicationId],
    ) -> Result<Vec<(PublicationId, u64)>, StoreError>;
}

/// A token to store: its hash, role and scope.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub hash: [u8; 32],
    pub role: Role,
    pub scope: Scope,
}

/// Both stores, as one handle.
pub trait Store: EventStore + StateStore {}
impl<T: EventStore + StateStore> Store for T {}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub platform: Platform,
    pub token: PushToken,
    pub locale: Locale,
    pub communes: Vec<InseeCode>,
    pub secret_hash: [u8; 32],
}

/// Devices and the communes they want notifications for.
#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    /// Registers a device and returns its id. A device already registered with
    /// the same token is replaced (a reinstalled app must not be notified twice).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn register_device(&self, device: &NewDevice, now: Timestamp)
    -> Result<Uuid, StoreError>;

    /// The hash of the device's secret and its platform, if the device exists.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn device_secret(&self, id: Uuid) -> Result<Option<([u8; 32], Platform)>, StoreError>;

    /// # Errors
    /// `Unavailable`, `Database`.
    async fn set_device_communes(&self, id: Uuid, communes: &[InseeCode])
    -> Result<(), StoreError>;

    /// Replaces the push token (and re-enables a device the push service had disabled).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn set_device_token(
        &self,
        id: Uuid,
        token: &PushToken,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Erases every trace of a device; `false` if there was none.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn delete_device(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Disables a dead token: only if it was registered before `registered_before`
    /// when given (APNs reports when it last saw the token valid).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn disable_device(
        &self,
        id: Uuid,
        registered_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// Where a notification job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    /// Could not start in time; dropped and counted, not sent late.
    Expired,
    /// The publication was retracted before every device was reached.
    Cancelled,
    /// Brought in by `panneau import`: its devices were notified (or not) by the
    /// deployment it came from; it is never sent here.
    Imported,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Imported => "imported",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Done,
            JobStatus::Expired,
            JobStatus::Cancelled,
            JobStatus::Imported,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A notification job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub publication: PublicationId,
    /// Sorted, each once.
    pub communes: Vec<InseeCode>,
    pub priority: Priority,
    pub title: String,
    pub body: String,
    pub published_at: Timestamp,
}

/// A job as stored, with its checkpoint.
#[derive(Debug, Clone)]
pub struct NotificationJob {
    pub job: NewJob,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub commune_index: usize,
    pub last_device: Option<Uuid>,
    pub sent: u64,
    pub failed: u64,
    pub disabled: u64,
}

/// One device to notify.
#[derive(Debug, Clone)]
pub struct Target {
    pub device: Uuid,
    pub platform: Platform,
    pub token: String,
    pub locale: String,
    pub token_updated_at: Timestamp,
}

/// What a batch changed: the new checkpoint and the counts to add.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub commune_index: usize,
    pub last_device: Option<Uuid>,
    pub sent: u64,
    pub failed: u64,
    pub disabled: u64,
}

/// The job lease was lost (it expired and another instance took the job).
#[derive(Debug, thiserror::Error)]
#[error("the job's lease was lost")]
pub struct LeaseLost;

/// Notification jobs and their progress.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Creates the job of a publication; `false` when it already exists (so a
    /// publication is notified at most once, whatever is replayed).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn create_job(&self, job: &NewJob, now: Timestamp) -> Result<bool, StoreError>;

    /// Stops a job that has not finished (the publication was retracted).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn cancel_job(
        &self,
        publication: PublicationId,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Takes the lease of a runnable job (pending, or running with an expired lease).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn claim_job(
        &self,
        owner: Uuid,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Option<NotificationJob>, StoreError>;

    /// Up to `limit` enabled devices subscribed to `communes[index]`, after device
    /// `after`, in id order. A device subscribed to several communes of a job comes
    /// up once per commune; its claim lets it through once.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn audience(
        &self,
        communes: &[InseeCode],
        index: usize,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Target>, StoreError>;

    /// Claims devices for a job before sending to them, under the job's lease;
    /// returns those not claimed before (the others were sent to before a crash)
    /// or claimed by this same `claim` (a retry whose first answer was lost).
    ///
    /// # Errors
    /// `Unavailable`, `Database`; `Ok(Err(LeaseLost))` when another worker owns the job.
    async fn claim_deliveries(
        &self,
        publication: PublicationId,
        owner: Uuid,
        claim: Uuid,
        devices: &[Uuid],
        lease_until: Timestamp,
    ) -> Result<Result<Vec<Uuid>, LeaseLost>, StoreError>;

    /// Saves the checkpoint and counts, renewing the lease.
    ///
    /// # Errors
    /// `Unavailable`, `Database`; `Ok(Err(LeaseLost))` when another worker owns the job.
    async fn record_progress(
        &self,
        publication: PublicationId,
        owner: Uuid,
        progress: &Progress,
        lease_until: Timestamp,
    ) -> Result<Result<(), LeaseLost>, StoreError>;

    /// Gives a running job's lease back (an instance shutting down), so
    /// another worker resumes it from its checkpoint at once.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn release_job(&self, publication: PublicationId, owner: Uuid) -> Result<(), StoreError>;

    /// Ends a job and forgets its claimed devices.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn finish_job(
        &self,
        publication: PublicationId,
        status: JobStatus,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// The job of a publication, if any.
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn job(&self, publication: PublicationId) -> Result<Option<NotificationJob>, StoreError>;

    /// Where a named consumer of the local log stopped (embedded mode).
    ///
    /// # Errors
    /// `Unavailable`, `Database`.
    async fn consumer_position(&self, name: &str) -> Result<i64, StoreError>;

    /// # Errors
    /// `Unavailable`, `Database`.
    async fn save_consumer_position(&self, name: &str, position: i64) -> Result<(), StoreError>;
}
