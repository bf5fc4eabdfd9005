//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) holding the
//! event log and the state tables. It is the system of record of the embedded
//! mode: read models are rebuilt from it at start.
//!
//! Appends are serialised in-process (SQLite has one writer anyway), which also
//! lets the in-process bus see committed events in commit order.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use panneau_domain::{
    PublicationId, PublisherId, RequestId, Role, Scope, StreamId, Timestamp, TokenId,
};
use sqlx::Row;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
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

/// The embedded store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    append_lock: Arc<Mutex<()>>,
    hook: Option<Arc<dyn CommitHook>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn migrator() -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![migration(
        1,
        "event log and state tables",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    )])
}

fn uuid_bytes(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

fn uuid_from(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`).
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the command is acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(Self {
            pool,
            append_lock: Arc::new(Mutex::new(())),
            hook: None,
        })
    }

    /// Runs the pending migrations.
    ///
    /// # Errors
    /// `Database` when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))
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

    fn row_to_event(row: &sqlx::sqlite::SqliteRow) -> Result<RecordedEvent, StoreError> {
        let position: i64 = row.try_get("position").map_err(StoreError::Database)?;
        let bytes: Vec<u8> = row.try_get("envelope").map_err(StoreError::Database)?;
        Ok(RecordedEvent {
            position,
            envelope: decode_event(&bytes)?,
        })
    }

    async fn insert_events(&self, append: &Append) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut recorded = Vec::with_capacity(append.events.len());
        for (i, envelope) in append.events.iter().enumerate() {
            let owner = (i == 0 && append.expected_version == 0)
                .then_some(append.owner)
                .flatten()
                .map(|p| uuid_bytes(p.as_uuid()));
            let row = sqlx::query(
                "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
                 publisher_id, occurred_at, recorded_at, envelope) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
            )
            .bind(uuid_bytes(envelope.event_id.as_uuid()))
            .bind(envelope.stream_id.as_str().to_owned())
            .bind(i64::try_from(envelope.stream_version).unwrap_or(i64::MAX))
            .bind(envelope.event_type)
            .bind(i64::from(envelope.schema_version))
            .bind(owner)
            .bind(envelope.occurred_at.as_unix_micros())
            .bind(envelope.recorded_at.as_unix_micros())
            .bind(encode_event(envelope))
            .fetch_one(&mut *tx)
            .await?;
            recorded.push(RecordedEvent {
                position: row.try_get("position")?,
                envelope: envelope.clone(),
            });
            if let Some(change) = ScheduleChange::of(&envelope.payload) {
                change.apply_sqlite(&mut tx).await?;
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
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }
}

/// Which unique constraint a SQLite error violated ("UNIQUE constraint failed:
/// events.stream_id, events.stream_version" names the columns, not the constraint).
fn violated(error: &sqlx::Error) -> Option<&'static str> {
    let db = error.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    let message = db.message();
    if message.contains("events.stream_id, events.stream_version") {
        Some("events_stream_version")
    } else if message.contains("events.event_id") {
        Some("events_event_id")
    } else if message.contains("idempotency_keys.") {
        Some("idempotency_keys_pk")
    } else {
        None
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, append: Append) -> Result<Vec<RecordedEvent>, StoreError> {
        let _serialised = self.append_lock.lock().await;
        match self.insert_events(&append).await {
            Ok(recorded) => {
                if let Some(hook) = &self.hook {
                    hook.committed(&recorded);
                }
                Ok(recorded)
            }
            Err(error) => match violated(&error) {
                Some("idempotency_keys_pk") => {
                    let record = append.idempotency.as_ref().expect("a key was inserted");
                    match self.idempotency(record.publisher, &record.key).await? {
                        Some(existing) => Err(StoreError::IdempotencyKeyUsed(Box::new(existing))),
                        None => Err(StoreError::VersionConflict),
                    }
                }
                Some("events_stream_version" | "events_event_id") => {
                    // Already there with the same ids: a retried append that did commit.
                    let existing = self.read_stream(&append.stream).await?;
                    let same = append
                        .events
                        .iter()
                        .all(|e| existing.iter().any(|r| r.envelope.event_id == e.event_id));
                    if same {
                        Ok(existing
                            .into_iter()
                            .filter(|r| {
                                append
                                    .events
                                    .iter()
                                    .any(|e| e.event_id == r.envelope.event_id)
                            })
                            .collect())
                    } else {
                        Err(StoreError::VersionConflict)
                    }
                }
                _ => Err(StoreError::from_sqlx(error)),
            },
        }
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
        let hash: Vec<u8> = row.try_get("request_hash").map_err(StoreError::Database)?;
        let stream: String = row.try_get("stream_id").map_err(StoreError::Database)?;
        let status: i64 = row.try_get("status").map_err(StoreError::Database)?;
        Ok(Some(IdempotencyRecord {
            publisher,
            key: key.to_owned(),
            request_hash: hash.try_into().unwrap_or([0; 32]),
            stream: StreamId::parse(stream)
                .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
            status: u16::try_from(status).unwrap_or(500),
            response: row.try_get("response").map_err(StoreError::Database)?,
            created_at: Timestamp::from_unix_micros(
                row.try_get("created_at").map_err(StoreError::Database)?,
            ),
        }))
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<PublicationId>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT publication_id FROM scheduled_publications WHERE publish_at <= ? ORDER BY publish_at LIMIT ?",
        )
        .bind(now.as_unix_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|bytes| {
                let uuid = uuid_from(bytes)?;
                PublicationId::new(uuid)
                    .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
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
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("stream_id").ok())
            .filter_map(|s| StreamId::parse(s).ok()?.publication_id())
            .collect())
    }
}

fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<TokenRecord, StoreError> {
    let get_uuid = |name: &str| -> Result<Uuid, StoreError> {
        let bytes: Vec<u8> = row.try_get(name).map_err(StoreError::Database)?;
        uuid_from(&bytes)
    };
    let role: String = row.try_get("role").map_err(StoreError::Database)?;
    let scope: String = row.try_get("scope").map_err(StoreError::Database)?;
    let revoked: Option<i64> = row.try_get("revoked_at").map_err(StoreError::Database)?;
    let bad = |what: &'static str| StoreError::Database(sqlx::Error::Decode(what.into()));
    Ok(TokenRecord {
        id: TokenId::new(get_uuid("id")?),
        publisher: PublisherId::new(get_uuid("publisher_id")?),
        publisher_name: row.try_get("name").map_err(StoreError::Database)?,
        role: Role::parse(&role).ok_or_else(|| bad("unknown role"))?,
        scope: serde_json::from_str::<Scope>(&scope).map_err(|_| bad("malformed scope"))?,
        created_at: Timestamp::from_unix_micros(
            row.try_get("created_at").map_err(StoreError::Database)?,
        ),
        revoked_at: revoked.map(Timestamp::from_unix_micros),
    })
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

#[async_trait]
impl StateStore for SqliteStore {
    async fn create_publisher(
        &self,
        name: &str,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<(PublisherId, TokenId), StoreError> {
        let publisher = PublisherId::new(Uuid::now_v7());
        let token_id = TokenId::new(Uuid::now_v7());
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        sqlx::query("INSERT INTO publishers (id, name, created_at) VALUES (?, ?, ?)")
            .bind(uuid_bytes(publisher.as_uuid()))
            .bind(name.to_owned())
            .bind(now.as_unix_micros())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        insert_token(&mut tx, publisher, token_id, token, now).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok((publisher, token_id))
    }

    async fn add_token(
        &self,
        publisher: PublisherId,
        token: &NewToken,
        now: Timestamp,
    ) -> Result<Option<TokenId>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        let exists = sqlx::query("SELECT 1 FROM publishers WHERE id = ?")
            .bind(uuid_bytes(publisher.as_uuid()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let token_id = TokenId::new(Uuid::now_v7());
        insert_token(&mut tx, publisher, token_id, token, now).await?;
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
                let id: Vec<u8> = row.try_get("id").map_err(StoreError::Database)?;
                let id = PublisherId::new(uuid_from(&id)?);
                Ok(PublisherSummary {
                    id,
                    name: row.try_get("name").map_err(StoreError::Database)?,
                    created_at: Timestamp::from_unix_micros(
                        row.try_get("created_at").map_err(StoreError::Database)?,
                    ),
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
        let result = sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR publisher_id = ?)",
        )
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
        .bind(refusal.reason.clone())
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
                let publisher: Vec<u8> =
                    row.try_get("publisher_id").map_err(StoreError::Database)?;
                let token: Vec<u8> = row.try_get("token_id").map_err(StoreError::Database)?;
                let request: Option<String> =
                    row.try_get("request_id").map_err(StoreError::Database)?;
                let action: String = row.try_get("action").map_err(StoreError::Database)?;
                Ok(Refusal {
                    at: Timestamp::from_unix_micros(
                        row.try_get("at").map_err(StoreError::Database)?,
                    ),
                    publisher: PublisherId::new(uuid_from(&publisher)?),
                    token: TokenId::new(uuid_from(&token)?),
                    request_id: request.and_then(|r| RequestId::parse(r).ok()),
                    action: known_action(&action),
                    publication: Some(publication),
                    reason: row.try_get("reason").map_err(StoreError::Database)?,
                })
            })
            .collect()
    }

    async fn add_views(&self, views: &[(PublicationId, u64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        for (publication, count) in views {
            sqlx::query(
                "INSERT INTO publication_views (publication_id, views) VALUES (?, ?) \
                 ON CONFLICT (publication_id) DO UPDATE SET views = views + excluded.views",
            )
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
            let views: Option<i64> =
                sqlx::query_scalar("SELECT views FROM publication_views WHERE publication_id = ?")
                    .bind(uuid_bytes(publication.as_uuid()))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
            out.push((*publication, views.map_or(0, to_u64)));
        }
        Ok(out)
    }
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

impl ScheduleChange {
    async fn apply_sqlite(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), sqlx::Error> {
        match *self {
            ScheduleChange::Set { id, publish_at } => {
                sqlx::query(
                    "INSERT INTO scheduled_publications (publication_id, publish_at) VALUES (?, ?) \
                     ON CONFLICT (publication_id) DO UPDATE SET publish_at = excluded.publish_at",
                )
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
}

async fn insert_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    publisher: PublisherId,
    id: TokenId,
    token: &NewToken,
    now: Timestamp,
) -> Result<(), StoreError> {
    let scope = serde_json::to_string(&token.scope).expect("a scope serialises");
    sqlx::query(
        "INSERT INTO tokens (id, publisher_id, token_hash, role, scope, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
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
