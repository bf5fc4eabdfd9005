//! The event log and state tables over SQL: SQLite in embedded mode (one file,
//! WAL, `synchronous=FULL`), MariaDB/Galera in cluster mode. One implementation
//! through sqlx's `Any` driver; the few statements that differ between the two
//! dialects are chosen by [`Dialect`].
//!
//! Appends are INSERT-only transactions guarded by the events' keys. In cluster
//! mode the same transaction writes the outbox rows the relay publishes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use panneau_domain::{
    PublicationId, PublisherId, RequestId, Role, Scope, StreamId, Timestamp, TokenId,
};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row, SqlSafeStr};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{
    Append, EventStore, IdempotencyRecord, NewToken, PublisherSummary, RecordedEvent, Refusal,
    ScheduleChange, StateStore, StoreError, TokenRecord,
};
use crate::codec::{decode_event, encode_event};

/// Called after each commit with the events it recorded, in commit order.
pub trait CommitHook: Send + Sync + 'static {
    fn committed(&self, events: &[RecordedEvent]);
}

/// Which SQL the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded mode.
    Sqlite,
    /// Cluster mode (MariaDB, Galera).
    MariaDb,
}

/// How long opening the embedded database may take before the start fails.
const SQLITE_OPEN_WITHIN: Duration = Duration::from_secs(15);

/// Tuning of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a command waits for a connection before answering 503.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The SQL store.
#[derive(Clone)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    /// SQLite has one writer; serialising appends in-process also hands events to
    /// the in-process bus in commit order.
    append_lock: Option<Arc<Mutex<()>>>,
    hook: Option<Arc<dyn CommitHook>>,
    /// Written into outbox rows: the relay of the committing instance publishes
    /// its own rows at once, the others only rows left behind.
    instance: Uuid,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

fn migrator(dialect: Dialect) -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    let mut migrator = match dialect {
        Dialect::Sqlite => Migrator::with_migrations(vec![
            migration(
                1,
                "event log and state tables",
                include_str!("../../migrations/sqlite/0001_initial.sql"),
            ),
            migration(
                2,
                "devices and notifications",
                include_str!("../../migrations/sqlite/0002_devices_and_notifications.sql"),
            ),
            migration(
                3,
                "delivery claims",
                include_str!("../../migrations/sqlite/0003_delivery_claims.sql"),
            ),
        ]),
        Dialect::MariaDb => Migrator::with_migrations(vec![
            migration(
                1,
                "event log, outbox and state tables",
                include_str!("../../migrations/mariadb/0001_initial.sql"),
            ),
            migration(
                2,
                "devices and notifications",
                include_str!("../../migrations/mariadb/0002_devices_and_notifications.sql"),
            ),
            migration(
                3,
                "delivery claims",
                include_str!("../../migrations/mariadb/0003_delivery_claims.sql"),
            ),
        ]),
    };
    // sqlx locks migrations with GET_LOCK on MySQL, which Galera does not
    // replicate; the migrations are idempotent (IF NOT EXISTS) instead.
    migrator.set_locking(dialect == Dialect::Sqlite);
    migrator
}

pub(super) fn uuid_bytes(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

pub(super) fn decode_error(
    what: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(what.into()))
}

pub(super) fn uuid_from(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(decode_error)
}

pub(super) fn column<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).map_err(StoreError::Database)
}

pub(super) fn uuid_column(row: &AnyRow, name: &str) -> Result<Uuid, StoreError> {
    uuid_from(&column::<Vec<u8>>(row, name)?)
}

pub(super) fn micros_column(row: &AnyRow, name: &str) -> Result<Timestamp, StoreError> {
    Ok(Timestamp::from_unix_micros(column::<i64>(row, name)?))
}

fn version_i64(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Which statement of an append failed, so a duplicate key can be told apart
/// without parsing constraint names out of messages.
#[derive(Debug)]
enum AppendFailure {
    Events(sqlx::Error),
    Idempotency(sqlx::Error),
    /// Anything else, including the commit itself (where Galera reports
    /// certification conflicts).
    Other(sqlx::Error),
}

fn is_duplicate_key(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
        || error
            .as_database_error()
            .and_then(super::mysql_number)
            .is_some_and(|n| n == 1062)
}

/// `(stream_id, version)` rows of an outbox query grouped by stream.
fn stream_versions(rows: &[AnyRow]) -> Result<Vec<(String, u64)>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok((
                column(row, "stream_id")?,
                u64::try_from(column::<i64>(row, "version")?).unwrap_or(0),
            ))
        })
        .collect()
}

/// An outbox row waiting for the relay.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: u64,
    pub envelope: Vec<u8>,
    pub created_at: Timestamp,
}

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH` or `mysql://USER:PASSWORD@HOST:PORT/DB`).
    /// MariaDB connections are made lazily, so an instance starts (and serves
    /// reads) while the database is down.
    ///
    /// # Errors
    /// `Database` for a malformed URL; `Unavailable` when SQLite cannot open the file.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let instance = Uuid::now_v7();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::MariaDb
        };
        let url = match dialect {
            // Create the file on first start.
            Dialect::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            Dialect::Sqlite => url.to_owned(),
            Dialect::MariaDb => url.replacen("mariadb://", "mysql://", 1),
        };
        let options: AnyConnectOptions = url.parse().map_err(StoreError::Database)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 8,
                Dialect::MariaDb => settings.max_connections,
            })
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match dialect {
                        Dialect::Sqlite => {
                            // WAL and FULL: a commit is on disk before the command is acknowledged.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                          PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                        }
                        Dialect::MariaDb => {
                            // Under Galera, make reads wait until this node has applied every
                            // transaction committed before them (read-your-writes across nodes).
                            // @panneau_instance marks the outbox rows this instance commits.
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET SESSION wsrep_sync_wait = 1, @panneau_instance = UNHEX('{}')",
                                instance.simple()
                            )))
                            .await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = match dialect {
            // The file is local: a first connection slower than the acquire
            // timeout (a disk busy with other fsyncs) is waited for rather
            // than failing the start.
            Dialect::Sqlite => {
                let deadline = tokio::time::Instant::now() + SQLITE_OPEN_WITHIN;
                loop {
                    match pool.clone().connect_with(options.clone()).await {
                        Ok(pool) => break pool,
                        Err(sqlx::Error::PoolTimedOut)
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tracing::warn!("the SQLite database is slow to open; trying again");
                        }
                        Err(error) => return Err(StoreError::from_sqlx(error)),
                    }
                }
            }
            Dialect::MariaDb => pool.connect_lazy_with(options),
        };
        Ok(Self {
            pool,
            dialect,
            append_lock: (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(()))),
            hook: None,
            instance,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a transaction that will write. SQLite takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads then writes fails
    /// with SQLITE_BUSY, without waiting, when another connection writes.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::MariaDb => self.pool.begin().await,
        }
    }

    /// `INSERT` into `table`, doing nothing when a key is taken (the values are
    /// bound, the table and columns are constants).
    pub(super) fn insert_ignore(&self, table_and_columns: &str) -> sqlx::AssertSqlSafe<String> {
        let verb = match self.dialect {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::MariaDb => "INSERT IGNORE",
        };
        sqlx::AssertSqlSafe(format!("{verb} INTO {table_and_columns}"))
    }

    /// Runs the pending migrations.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached; `Database` when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = migrator(self.dialect).run(&self.pool).await;
        match result {
            Ok(()) => {}
            Err(sqlx::migrate::MigrateError::Execute(error)) => {
                return Err(StoreError::from_sqlx(error));
            }
            Err(error) => return Err(StoreError::Database(sqlx::Error::Migrate(Box::new(error)))),
        }
        if self.dialect == Dialect::MariaDb {
            self.check_outbox_trigger().await?;
        }
        Ok(())
    }

    /// Events reach the broker only through the outbox rows the
    /// `events_to_outbox` trigger writes. A server without it would accept
    /// commands whose events never reach a feed nor a phone (seen with a
    /// Galera node whose appliers refused the trigger's DDL), so it is refused.
    async fn check_outbox_trigger(&self) -> Result<(), StoreError> {
        let found: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = 'events_to_outbox'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        if found == 0 {
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "the trigger events_to_outbox is missing from this database server: committed events \
                 would never be relayed. Create it again (migrations/mariadb/0001_initial.sql); on Galera, \
                 check that every node has it (DDL replicated with a real DEFINER, not under \
                 --skip-grant-tables)"
                    .into(),
            )));
        }
        Ok(())
    }

    /// Calls `hook` after every commit of events.
    #[must_use]
    pub fn with_commit_hook(mut self, hook: Arc<dyn CommitHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Connections open, and those idle.
    pub fn pool_usage(&self) -> (u32, u32) {
        (
            self.pool.size(),
            u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
        )
    }

    /// Whether the database answers now.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    fn row_to_event(row: &AnyRow) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            position: column(row, "position")?,
            envelope: decode_event(
                row.try_get::<&[u8], _>("envelope")
                    .map_err(StoreError::Database)?,
            )?,
        })
    }

    /// The statement that inserts one event (its outbox row comes from a trigger
    /// in MariaDB). RETURNING: SQLite and MariaDB (10.5+) both have it, and sqlx's
    /// Any driver does not report SQLite's last insert id.
    fn insert_event(
        append: &Append,
        index: usize,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let envelope = &append.events[index];
        let owner = (index == 0 && append.expected_version == 0)
            .then_some(append.owner)
            .flatten()
            .map(|p| uuid_bytes(p.as_uuid()));
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
             publisher_id, occurred_at, recorded_at, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING position",
        )
        .bind(uuid_bytes(envelope.event_id.as_uuid()))
        .bind(envelope.stream_id.as_str().to_owned())
        .bind(version_i64(envelope.stream_version))
        .bind(envelope.event_type)
        .bind(i64::from(envelope.schema_version))
        .bind(owner)
        .bind(envelope.occurred_at.as_unix_micros())
        .bind(envelope.recorded_at.as_unix_micros())
        .bind(encode_event(envelope))
    }

    async fn insert_events(&self, append: &Append) -> Result<Vec<RecordedEvent>, AppendFailure> {
        // The common case, one event and nothing else to record with it, is a
        // single autocommitted statement.
        if let [envelope] = append.events.as_slice()
            && append.idempotency.is_none()
            && ScheduleChange::of(&envelope.payload).is_none()
        {
            let row = Self::insert_event(append, 0)
                .fetch_one(&self.pool)
                .await
                .map_err(AppendFailure::Events)?;
            return Ok(vec![RecordedEvent {
                position: row.try_get("position").map_err(AppendFailure::Other)?,
                envelope: envelope.clone(),
            }]);
        }
        let mut tx = self.begin_write().await.map_err(AppendFailure::Other)?;
        let mut recorded = Vec::with_capacity(append.events.len());
        for (i, envelope) in append.events.iter().enumerate() {
            let row = Self::insert_event(append, i)
                .fetch_one(&mut *tx)
                .await
                .map_err(AppendFailure::Events)?;
            recorded.push(RecordedEvent {
                position: row.try_get("position").map_err(AppendFailure::Other)?,
                envelope: envelope.clone(),
            });
            if let Some(change) = ScheduleChange::of(&envelope.payload) {
                self.apply_schedule(&mut tx, change)
                    .await
                    .map_err(AppendFailure::Other)?;
            }
        }
        if let Some(record) = &append.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (publisher_id, idempotency_key, request_hash, stream_id, \
                 status, response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(uuid_bytes(record.publisher.as_uuid()))
            .bind(record.key.clone())
            .bind(record.request_hash.to_vec())
            .bind(record.stream.as_str().to_owned())
            .bind(i64::from(record.status))
            .bind(record.response.clone())
            .bind(record.created_at.as_unix_micros())
            .execute(&mut *tx)
            .await
            .map_err(AppendFailure::Idempotency)?;
        }
        tx.commit().await.map_err(AppendFailure::Other)?;
        Ok(recorded)
    }

    async fn apply_schedule(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        change: ScheduleChange,
    ) -> Result<(), sqlx::Error> {
        match change {
            ScheduleChange::Set { id, publish_at } => {
                let sql = match self.dialect {
                    Dialect::Sqlite => {
                        "INSERT INTO scheduled_publications (publication_id, publish_at) VALUES (?, ?) \
                         ON CONFLICT (publication_id) DO UPDATE SET publish_at = excluded.publish_at"
                    }
                    Dialect::MariaDb => {
                        "INSERT INTO scheduled_publications (publication_id, publish_at) VALUES (?, ?) \
                         ON DUPLICATE KEY UPDATE publish_at = VALUES(publish_at)"
                    }
                };
                sqlx::query(sql)
                    .bind(uuid_bytes(id.as_uuid()))
                    .bind(publish_at.as_unix_micros())
                    .execute(&mut **tx)
                    .await?;
            }
            ScheduleChange::Clear { id } => {
                sqlx::query("DELETE FROM scheduled_publications WHERE publication_id = ?")
                    .bind(uuid_bytes(id.as_uuid()))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// After a failed append: the events may be there anyway (a retry of an
    /// append whose commit answer was lost), or the stream moved on, or the
    /// idempotency key was used. The stream says which.
    async fn resolve_failed_append(
        &self,
        append: &Append,
        failure: AppendFailure,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (error, may_be_concurrency) = match failure {
            AppendFailure::Events(e) => {
                let duplicate = is_duplicate_key(&e);
                (e, duplicate)
            }
            AppendFailure::Idempotency(e) if is_duplicate_key(&e) => {
                let record = append.idempotency.as_ref().expect("a key was inserted");
                return match self.idempotency(record.publisher, &record.key).await? {
                    Some(existing) => Err(StoreError::IdempotencyKeyUsed(Box::new(existing))),
                    None => Err(StoreError::VersionConflict),
                };
            }
            AppendFailure::Idempotency(e) => (e, false),
            // A certification or snapshot conflict, or a commit whose outcome is unknown.
            AppendFailure::Other(e) => (e, self.dialect == Dialect::MariaDb),
        };
        if !may_be_concurrency {
            return Err(StoreError::from_sqlx(error));
        }
        let existing = self.read_stream(&append.stream).await?;
        let ours: Vec<RecordedEvent> = existing
            .into_iter()
            .filter(|r| {
                append
                    .events
                    .iter()
                    .any(|e| e.event_id == r.envelope.event_id)
            })
            .collect();
        if ours.len() == append.events.len() {
            return Ok(ours);
        }
        if let Some(record) = &append.idempotency
            && let Some(existing) = self.idempotency(record.publisher, &record.key).await?
        {
            return Err(StoreError::IdempotencyKeyUsed(Box::new(existing)));
        }
        match &error {
            sqlx::Error::Database(db)
                if is_duplicate_key(&error) || super::is_transient(db.as_ref()) =>
            {
                Err(StoreError::VersionConflict)
            }
            _ => Err(StoreError::from_sqlx(error)),
        }
    }

    /// Outbox rows to publish: every pending row of each stream that has a row
    /// committed by this instance, or a row left pending for longer than `grace`
    /// (its instance may be gone). Ordered by stream, then version.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn pending_outbox(
        &self,
        grace: Duration,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let stale = crate::now().plus_micros(-i64::try_from(grace.as_micros()).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT o.event_id, o.stream_id, o.stream_version, o.envelope, o.created_at FROM outbox o \
             JOIN (SELECT DISTINCT stream_id FROM outbox WHERE published_at IS NULL \
                   AND (instance_id = ? OR created_at < ?) LIMIT ?) s ON s.stream_id = o.stream_id \
             WHERE o.published_at IS NULL ORDER BY o.stream_id, o.stream_version",
        )
        .bind(uuid_bytes(self.instance))
        .bind(stale.as_unix_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    event_id: uuid_column(row, "event_id")?,
                    stream_id: column(row, "stream_id")?,
                    stream_version: u64::try_from(column::<i64>(row, "stream_version")?)
                        .unwrap_or(0),
                    envelope: column(row, "envelope")?,
                    created_at: micros_column(row, "created_at")?,
                })
            })
            .collect()
    }

    /// Marks rows published (after the broker acknowledged them).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), StoreError> {
        let now = crate::now().as_unix_micros();
        for chunk in event_ids.chunks(100) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "UPDATE outbox SET published_at = ? WHERE published_at IS NULL AND event_id IN ({placeholders})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                query = query.bind(uuid_bytes(*id));
            }
            query
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        }
        Ok(())
    }

    /// Deletes rows published more than `retention` ago.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn prune_outbox(&self, retention: Duration) -> Result<u64, StoreError> {
        let before =
            crate::now().plus_micros(-i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
        let result = sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT 5000",
        )
        .bind(before.as_unix_micros())
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(result.rows_affected())
    }

    /// The streams with outbox rows still unpublished `overdue` after their
    /// commit (the broker is away, or a relay stuck), and the latest version
    /// of each waiting: at most `limit` streams, in stream order, after the
    /// stream `after`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn overdue_streams(
        &self,
        overdue: Duration,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let before =
            crate::now().plus_micros(-i64::try_from(overdue.as_micros()).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT stream_id, MAX(stream_version) AS version FROM outbox \
             WHERE published_at IS NULL AND created_at < ? AND stream_id > ? \
             GROUP BY stream_id ORDER BY stream_id LIMIT ?",
        )
        .bind(before.as_unix_micros())
        .bind(after.to_owned())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        stream_versions(&rows)
    }

    /// Whether some relay had an outbox row acknowledged by the broker after
    /// `since`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn published_after(&self, since: Timestamp) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM outbox WHERE published_at > ? LIMIT 1")
            .bind(since.as_unix_micros())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(row.is_some())
    }

    /// The streams with outbox rows published to the broker in `(after,
    /// until]`, and the latest version of each published then.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn published_between(
        &self,
        after: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream_id, MAX(stream_version) AS version FROM outbox \
             WHERE published_at > ? AND published_at <= ? GROUP BY stream_id",
        )
        .bind(after.as_unix_micros())
        .bind(until.as_unix_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        stream_versions(&rows)
    }

    /// The number of rows waiting, and when the oldest was committed.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn outbox_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        let count: i64 = column(&row, "n")?;
        let oldest: Option<i64> = column(&row, "oldest")?;
        Ok((
            u64::try_from(count).unwrap_or(0),
            oldest.map(Timestamp::from_unix_micros),
        ))
    }
}

#[async_trait]
impl EventStore for SqlStore {
    async fn append(&self, append: Append) -> Result<Vec<RecordedEvent>, StoreError> {
        let _serialised = match &self.append_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let recorded = match self.insert_events(&append).await {
            Ok(recorded) => recorded,
            Err(failure) => self.resolve_failed_append(&append, failure).await?,
        };
        if let Some(hook) = &self.hook {
            hook.committed(&recorded);
        }
        Ok(recorded)
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, envelope FROM events WHERE stream_id = ? ORDER BY stream_version",
        )
        .bind(stream.as_str().to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter().map(Self::row_to_event).collect()
    }

    fn read_after(&self, position: i64) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        sqlx::query("SELECT position, envelope FROM events WHERE position > ? ORDER BY position")
            .bind(position)
            .fetch(&self.pool)
            .map(|row| {
                row.map_err(StoreError::from_sqlx)
                    .and_then(|r| Self::row_to_event(&r))
            })
            .boxed()
    }

    fn read_by_stream(&self) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        sqlx::query("SELECT position, envelope FROM events ORDER BY stream_id, stream_version")
            .fetch(&self.pool)
            .map(|row| {
                row.map_err(StoreError::from_sqlx)
                    .and_then(|r| Self::row_to_event(&r))
            })
            .boxed()
    }

    async fn last_position(&self) -> Result<i64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(last.unwrap_or(0))
    }

    async fn idempotency(
        &self,
        publisher: PublisherId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT request_hash, stream_id, status, response, created_at FROM idempotency_keys \
             WHERE publisher_id = ? AND idempotency_key = ?",
        )
        .bind(uuid_bytes(publisher.as_uuid()))
        .bind(key.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = column(&row, "request_hash")?;
        Ok(Some(IdempotencyRecord {
            publisher,
            key: key.to_owned(),
            request_hash: hash
                .try_into()
                .map_err(|_| decode_error("request hash is not 32 bytes"))?,
            stream: StreamId::parse(column::<String>(&row, "stream_id")?).map_err(decode_error)?,
            status: u16::try_from(column::<i64>(&row, "status")?).map_err(decode_error)?,
            response: column(&row, "response")?,
            created_at: micros_column(&row, "created_at")?,
        }))
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<PublicationId>, StoreError> {
        let rows = sqlx::query(
            "SELECT publication_id FROM scheduled_publications WHERE publish_at <= ? ORDER BY publish_at LIMIT ?",
        )
        .bind(now.as_unix_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|row| {
                PublicationId::new(uuid_column(row, "publication_id")?).map_err(decode_error)
            })
            .collect()
    }

    async fn publications_of(
        &self,
        publisher: PublisherId,
        limit: u32,
    ) -> Result<Vec<PublicationId>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream_id FROM events WHERE publisher_id = ? ORDER BY position DESC LIMIT ?",
        )
        .bind(uuid_bytes(publisher.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|row| {
                let stream =
                    StreamId::parse(column::<String>(row, "stream_id")?).map_err(decode_error)?;
                stream
                    .publication_id()
                    .ok_or_else(|| decode_error("not a publication stream"))
            })
            .collect()
    }
}

/// `SELECT` of a token with its publisher's name, followed by `$tail`.
macro_rules! select_tokens {
    ($tail:literal) => {
        concat!(
            "SELECT t.id, t.publisher_id, p.name, t.role, t.scope, t.created_at, t.revoked_at \
             FROM tokens t JOIN publishers p ON p.id = t.publisher_id ",
            $tail
        )
    };
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = column(row, "role")?;
    let scope: String = column(row, "scope")?;
    let revoked: Option<i64> = column(row, "revoked_at")?;
    Ok(TokenRecord {
        id: TokenId::new(uuid_column(row, "id")?),
        publisher: PublisherId::new(uuid_column(row, "publisher_id")?),
        publisher_name: column(row, "name")?,
        role: Role::parse(&role).ok_or_else(|| decode_error("unknown role"))?,
        scope: serde_json::from_str::<Scope>(&scope).map_err(decode_error)?,
        created_at: micros_column(row, "created_at")?,
        revoked_at: revoked.map(Timestamp::from_unix_micros),
    })
}

/// Refusal actions are a closed set; an unknown one (from a newer release) reads as "other".
fn known_action(action: &str) -> &'static str {
    match action {
        "publish" => "publish",
        "amend" => "amend",
        "retract" => "retract",
        "history" => "history",
        _ => "other",
    }
}

impl SqlStore {
    async fn insert_token(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        publisher: PublisherId,
        id: TokenId,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let scope = serde_json::to_string(&token.scope).expect("a scope serialises");
        sqlx::query("INSERT INTO tokens (id, publisher_id, token_hash, role, scope, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(uuid_bytes(id.as_uuid()))
            .bind(uuid_bytes(publisher.as_uuid()))
            .bind(token.hash.to_vec())
            .bind(token.role.as_str())
            .bind(scope)
            .bind(now.as_unix_micros())
            .execute(&mut **tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }
}

#[async_trait]
impl StateStore for SqlStore {
    async fn create_publisher(
        &self,
        name: &str,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(PublisherId, TokenId), StoreError> {
        let publisher = PublisherId::new(Uuid::now_v7());
        let token_id = TokenId::new(Uuid::now_v7());
        let mut tx = self.begin_write().await.map_err(StoreError::from_sqlx)?;
        sqlx::query("INSERT INTO publishers (id, name, created_at) VALUES (?, ?, ?)")
            .bind(uuid_bytes(publisher.as_uuid()))
            .bind(name.to_owned())
            .bind(now.as_unix_micros())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        Self::insert_token(&mut tx, publisher, token_id, token, now).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok((publisher, token_id))
    }

    async fn add_token(
        &self,
        publisher: PublisherId,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<Option<TokenId>, StoreError> {
        let mut tx = self.begin_write().await.map_err(StoreError::from_sqlx)?;
        let exists = sqlx::query("SELECT id FROM publishers WHERE id = ?")
            .bind(uuid_bytes(publisher.as_uuid()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let token_id = TokenId::new(Uuid::now_v7());
        Self::insert_token(&mut tx, publisher, token_id, token, now).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(Some(token_id))
    }

    async fn list_publishers(&self) -> Result<Vec<PublisherSummary>, StoreError> {
        let publishers =
            sqlx::query("SELECT id, name, created_at FROM publishers ORDER BY created_at")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        let tokens = sqlx::query(select_tokens!("ORDER BY t.created_at"))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        let tokens: Vec<TokenRecord> = tokens
            .iter()
            .map(token_from_row)
            .collect::<Result<_, _>>()?;
        publishers
            .iter()
            .map(|row| {
                let id = PublisherId::new(uuid_column(row, "id")?);
                Ok(PublisherSummary {
                    id,
                    name: column(row, "name")?,
                    created_at: micros_column(row, "created_at")?,
                    tokens: tokens
                        .iter()
                        .filter(|t| t.publisher == id)
                        .cloned()
                        .collect(),
                })
            })
            .collect()
    }

    async fn revoke(&self, id: Uuid, now: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR publisher_id = ?)")
            .bind(now.as_unix_micros())
            .bind(uuid_bytes(id))
            .bind(uuid_bytes(id))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(result.rows_affected())
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(select_tokens!("WHERE t.token_hash = ?"))
            .bind(hash.to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn record_refusal(&self, refusal: &Refusal) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refusals (id, at, publisher_id, token_id, request_id, action, publication_id, reason) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid_bytes(Uuid::now_v7()))
        .bind(refusal.at.as_unix_micros())
        .bind(uuid_bytes(refusal.publisher.as_uuid()))
        .bind(uuid_bytes(refusal.token.as_uuid()))
        .bind(refusal.request_id.as_ref().map(|r| r.as_str().to_owned()))
        .bind(refusal.action)
        .bind(refusal.publication.map(|p| uuid_bytes(p.as_uuid())))
        .bind(refusal.reason.chars().take(1000).collect::<String>())
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn refusals_for(&self, publication: PublicationId) -> Result<Vec<Refusal>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, publisher_id, token_id, request_id, action, reason FROM refusals \
             WHERE publication_id = ? ORDER BY at, id",
        )
        .bind(uuid_bytes(publication.as_uuid()))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|row| {
                let request: Option<String> = column(row, "request_id")?;
                Ok(Refusal {
                    at: micros_column(row, "at")?,
                    publisher: PublisherId::new(uuid_column(row, "publisher_id")?),
                    token: TokenId::new(uuid_column(row, "token_id")?),
                    request_id: request.and_then(|r| RequestId::parse(r).ok()),
                    action: known_action(&column::<String>(row, "action")?),
                    publication: Some(publication),
                    reason: column(row, "reason")?,
                })
            })
            .collect()
    }

    async fn add_views(&self, views: &[(PublicationId, u64)]) -> Result<(), StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO publication_views (publication_id, views) VALUES (?, ?) \
                 ON CONFLICT (publication_id) DO UPDATE SET views = views + excluded.views"
            }
            Dialect::MariaDb => {
                "INSERT INTO publication_views (publication_id, views) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE views = views + VALUES(views)"
            }
        };
        let mut tx = self.begin_write().await.map_err(StoreError::from_sqlx)?;
        for (publication, count) in views {
            sqlx::query(sql)
                .bind(uuid_bytes(publication.as_uuid()))
                .bind(i64::try_from(*count).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
        }
        tx.commit().await.map_err(StoreError::from_sqlx)
    }

    async fn views(
        &self,
        publications: &[PublicationId],
    ) -> Result<Vec<(PublicationId, u64)>, StoreError> {
        let mut out = Vec::with_capacity(publications.len());
        for publication in publications {
            let row = sqlx::query("SELECT views FROM publication_views WHERE publication_id = ?")
                .bind(uuid_bytes(publication.as_uuid()))
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
            let views = match row {
                Some(row) => u64::try_from(column::<i64>(&row, "views")?).unwrap_or(0),
                None => 0,
            };
            out.push((*publication, views));
        }
        Ok(out)
    }
}
