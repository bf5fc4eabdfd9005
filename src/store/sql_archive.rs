//! Reading and writing the portable rows of `panneau export` / `panneau import`
//! in the SQL store (both dialects).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::TryStreamExt;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::StoreError;
use super::archive::{
    ArchiveError, EventRow, PublisherRow, Record, RefusalRow, TokenRow, ViewsRow,
};
use super::sql::{Dialect, SqlStore, column, uuid_bytes, uuid_column};

fn err(error: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(error)
}

fn optional_uuid(row: &AnyRow, name: &str) -> Result<Option<Uuid>, StoreError> {
    column::<Option<Vec<u8>>>(row, name)?
        .map(|bytes| super::sql::uuid_from(&bytes))
        .transpose()
}

impl SqlStore {
    /// Hands every publisher, token, event, refusal and view count to `emit`,
    /// from one read transaction; events stream by stream, each in version
    /// order (positions are no order across Galera nodes; versions are).
    pub(super) async fn export_rows(
        &self,
        emit: &mut (dyn FnMut(Record) -> Result<(), ArchiveError> + Send),
    ) -> Result<(), ArchiveError> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let rows = sqlx::query("SELECT id, name, created_at FROM publishers ORDER BY id")
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        for row in &rows {
            emit(Record::Publisher(PublisherRow {
                id: uuid_column(row, "id")?,
                name: column(row, "name")?,
                created_at_us: column(row, "created_at")?,
            }))?;
        }
        let rows = sqlx::query(
            "SELECT id, publisher_id, token_hash, role, scope, created_at, revoked_at FROM tokens ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        for row in &rows {
            emit(Record::Token(TokenRow {
                id: uuid_column(row, "id")?,
                publisher_id: uuid_column(row, "publisher_id")?,
                token_hash: BASE64.encode(column::<Vec<u8>>(row, "token_hash")?),
                role: column(row, "role")?,
                scope: column(row, "scope")?,
                created_at_us: column(row, "created_at")?,
                revoked_at_us: column(row, "revoked_at")?,
            }))?;
        }
        {
            let mut events = sqlx::query(
                "SELECT stream_id, stream_version, event_id, event_type, schema_version, publisher_id, envelope \
                 FROM events ORDER BY stream_id, stream_version",
            )
            .fetch(&mut *tx);
            while let Some(row) = events.try_next().await.map_err(err)? {
                emit(Record::Event(EventRow {
                    stream_id: column(&row, "stream_id")?,
                    stream_version: u64::try_from(column::<i64>(&row, "stream_version")?)
                        .unwrap_or_default(),
                    event_id: uuid_column(&row, "event_id")?,
                    event_type: column(&row, "event_type")?,
                    schema_version: u16::try_from(column::<i64>(&row, "schema_version")?)
                        .unwrap_or_default(),
                    owner: optional_uuid(&row, "publisher_id")?,
                    envelope: BASE64.encode(column::<Vec<u8>>(&row, "envelope")?),
                }))?;
            }
        }
        let rows = sqlx::query(
            "SELECT id, at, publisher_id, token_id, request_id, action, publication_id, reason \
             FROM refusals ORDER BY at, id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        for row in &rows {
            emit(Record::Refusal(RefusalRow {
                id: uuid_column(row, "id")?,
                at_us: column(row, "at")?,
                publisher_id: uuid_column(row, "publisher_id")?,
                token_id: uuid_column(row, "token_id")?,
                request_id: column(row, "request_id")?,
                action: column(row, "action")?,
                publication_id: optional_uuid(row, "publication_id")?,
                reason: column(row, "reason")?,
            }))?;
        }
        let rows = sqlx::query(
            "SELECT publication_id, views FROM publication_views ORDER BY publication_id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        for row in &rows {
            emit(Record::Views(ViewsRow {
                publication_id: uuid_column(row, "publication_id")?,
                views: u64::try_from(column::<i64>(row, "views")?).unwrap_or_default(),
            }))?;
        }
        tx.rollback().await.map_err(err)?;
        Ok(())
    }

    /// Returns whether the publisher was new.
    pub(super) async fn import_publisher(&self, row: &PublisherRow) -> Result<bool, ArchiveError> {
        let done =
            sqlx::query(self.insert_ignore("publishers (id, name, created_at) VALUES (?, ?, ?)"))
                .bind(uuid_bytes(row.id))
                .bind(row.name.clone())
                .bind(row.created_at_us)
                .execute(&self.pool)
                .await
                .map_err(err)?;
        Ok(done.rows_affected() > 0)
    }

    /// Returns whether the token was new; a token id or hash the target holds
    /// for another token is a conflict.
    pub(super) async fn import_token(
        &self,
        row: &TokenRow,
        hash: [u8; 32],
    ) -> Result<bool, ArchiveError> {
        let done = sqlx::query(self.insert_ignore(
            "tokens (id, publisher_id, token_hash, role, scope, created_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(uuid_bytes(row.id))
        .bind(uuid_bytes(row.publisher_id))
        .bind(hash.to_vec())
        .bind(row.role.clone())
        .bind(row.scope.clone())
        .bind(row.created_at_us)
        .bind(row.revoked_at_us)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        let held = sqlx::query("SELECT token_hash FROM tokens WHERE id = ?")
            .bind(uuid_bytes(row.id))
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        match held {
            Some(held) if column::<Vec<u8>>(&held, "token_hash")? == hash => Ok(false),
            _ => Err(ArchiveError::Conflict(format!(
                "token {}: the target holds another token with this id or hash",
                row.id
            ))),
        }
    }

    /// Returns whether the refusal was new.
    pub(super) async fn import_refusal(&self, row: &RefusalRow) -> Result<bool, ArchiveError> {
        let done = sqlx::query(self.insert_ignore(
            "refusals (id, at, publisher_id, token_id, request_id, action, publication_id, reason) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(uuid_bytes(row.id))
        .bind(row.at_us)
        .bind(uuid_bytes(row.publisher_id))
        .bind(uuid_bytes(row.token_id))
        .bind(row.request_id.clone())
        .bind(row.action.clone())
        .bind(row.publication_id.map(uuid_bytes))
        .bind(row.reason.clone())
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(done.rows_affected() > 0)
    }

    /// Keeps the larger of the two counts, so that importing twice does not
    /// count twice. Returns whether the count changed.
    pub(super) async fn import_views(&self, row: &ViewsRow) -> Result<bool, ArchiveError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO publication_views (publication_id, views) VALUES (?, ?) \
                 ON CONFLICT (publication_id) DO UPDATE SET views = excluded.views \
                 WHERE excluded.views > views"
            }
            Dialect::MariaDb => {
                "INSERT INTO publication_views (publication_id, views) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE views = GREATEST(views, VALUES(views))"
            }
        };
        let done = sqlx::query(sql)
            .bind(uuid_bytes(row.publication_id))
            .bind(i64::try_from(row.views).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(done.rows_affected() > 0)
    }
}
