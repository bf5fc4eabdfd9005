//! Devices and notification jobs in the SQL store (both dialects).

use async_trait::async_trait;
use panneau_domain::{InseeCode, Platform, Priority, PublicationId, PushToken, Timestamp};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::sql::{
    Dialect, SqlStore, column, decode_error, micros_column, uuid_bytes, uuid_column, uuid_from,
};
use super::{
    DeviceStore, JobStatus, LeaseLost, NewDevice, NewJob, NotificationJob, NotificationStore,
    Progress, StoreError, Target,
};

/// One device per (platform, token): the hash is the unique key.
pub fn device_token_hash(platform: Platform, token: &PushToken) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(platform.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(token.as_str().as_bytes());
    hasher.finalize().into()
}

fn err(error: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(error)
}

#[async_trait]
impl DeviceStore for SqlStore {
    async fn register_device(
        &self,
        device: &NewDevice,
        now: Timestamp,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let token_hash = device_token_hash(device.platform, &device.token);
        let mut tx = self.begin_write().await.map_err(err)?;
        // The same token registered again (a reinstall): the old registration goes.
        let previous: Option<AnyRow> = sqlx::query("SELECT id FROM devices WHERE token_hash = ?")
            .bind(token_hash.to_vec())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if let Some(row) = previous {
            let old = column::<Vec<u8>>(&row, "id")?;
            for sql in [
                "DELETE FROM device_communes WHERE device_id = ?",
                "DELETE FROM notification_deliveries WHERE device_id = ?",
                "DELETE FROM devices WHERE id = ?",
            ] {
                sqlx::query(sql)
                    .bind(old.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
        }
        sqlx::query(
            "INSERT INTO devices (id, platform, token, token_hash, locale, secret_hash, created_at, token_updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid_bytes(id))
        .bind(device.platform.as_str())
        .bind(device.token.as_str().to_owned())
        .bind(token_hash.to_vec())
        .bind(device.locale.as_str().to_owned())
        .bind(device.secret_hash.to_vec())
        .bind(now.as_unix_micros())
        .bind(now.as_unix_micros())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        for commune in &device.communes {
            sqlx::query("INSERT INTO device_communes (device_id, commune_code) VALUES (?, ?)")
                .bind(uuid_bytes(id))
                .bind(commune.as_str().to_owned())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(id)
    }

    async fn device_secret(&self, id: Uuid) -> Result<Option<([u8; 32], Platform)>, StoreError> {
        let row = sqlx::query("SELECT secret_hash, platform FROM devices WHERE id = ?")
            .bind(uuid_bytes(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map(|row| {
            let hash = column::<Vec<u8>>(&row, "secret_hash")?
                .try_into()
                .map_err(|_| decode_error("secret hash is not 32 bytes"))?;
            let platform = Platform::parse(&column::<String>(&row, "platform")?)
                .ok_or_else(|| decode_error("platform"))?;
            Ok((hash, platform))
        })
        .transpose()
    }

    async fn set_device_communes(
        &self,
        id: Uuid,
        communes: &[InseeCode],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await.map_err(err)?;
        sqlx::query("DELETE FROM device_communes WHERE device_id = ?")
            .bind(uuid_bytes(id))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        for commune in communes {
            sqlx::query("INSERT INTO device_communes (device_id, commune_code) VALUES (?, ?)")
                .bind(uuid_bytes(id))
                .bind(commune.as_str().to_owned())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn set_device_token(
        &self,
        id: Uuid,
        token: &PushToken,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await.map_err(err)?;
        let row = sqlx::query("SELECT platform FROM devices WHERE id = ?")
            .bind(uuid_bytes(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?
            .ok_or_else(|| decode_error("no such device"))?;
        let platform = Platform::parse(&column::<String>(&row, "platform")?)
            .ok_or_else(|| decode_error("platform"))?;
        let hash = device_token_hash(platform, token);
        // Another registration holding this token is the same phone: it goes.
        let others = sqlx::query("SELECT id FROM devices WHERE token_hash = ? AND id <> ?")
            .bind(hash.to_vec())
            .bind(uuid_bytes(id))
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        for other in others {
            let old = column::<Vec<u8>>(&other, "id")?;
            for sql in [
                "DELETE FROM device_communes WHERE device_id = ?",
                "DELETE FROM notification_deliveries WHERE device_id = ?",
                "DELETE FROM devices WHERE id = ?",
            ] {
                sqlx::query(sql)
                    .bind(old.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
        }
        sqlx::query(
            "UPDATE devices SET token = ?, token_hash = ?, token_updated_at = ?, disabled_at = NULL WHERE id = ?",
        )
        .bind(token.as_str().to_owned())
        .bind(hash.to_vec())
        .bind(now.as_unix_micros())
        .bind(uuid_bytes(id))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn delete_device(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await.map_err(err)?;
        for sql in [
            "DELETE FROM device_communes WHERE device_id = ?",
            "DELETE FROM notification_deliveries WHERE device_id = ?",
        ] {
            sqlx::query(sql)
                .bind(uuid_bytes(id))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let deleted = sqlx::query("DELETE FROM devices WHERE id = ?")
            .bind(uuid_bytes(id))
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        tx.commit().await.map_err(err)?;
        Ok(deleted > 0)
    }

    async fn disable_device(
        &self,
        id: Uuid,
        registered_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let before = registered_before.map_or(i64::MAX, Timestamp::as_unix_micros);
        let changed = sqlx::query(
            "UPDATE devices SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL AND token_updated_at < ?",
        )
        .bind(now.as_unix_micros())
        .bind(uuid_bytes(id))
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        Ok(changed > 0)
    }
}

fn job_from_row(row: &AnyRow) -> Result<NotificationJob, StoreError> {
    let communes: String = column(row, "communes")?;
    let communes: Vec<InseeCode> = serde_json::from_str(&communes).map_err(decode_error)?;
    let priority = match column::<String>(row, "priority")?.as_str() {
        "urgent" => Priority::Urgent,
        _ => Priority::Normal,
    };
    let last: Option<Vec<u8>> = column(row, "last_device")?;
    let count = |name: &str| -> Result<u64, StoreError> {
        Ok(u64::try_from(column::<i64>(row, name)?).unwrap_or(0))
    };
    Ok(NotificationJob {
        job: NewJob {
            publication: PublicationId::new(uuid_column(row, "publication_id")?)
                .map_err(decode_error)?,
            communes,
            priority,
            title: column(row, "title")?,
            body: column(row, "body")?,
            published_at: micros_column(row, "published_at")?,
        },
        status: JobStatus::parse(&column::<String>(row, "status")?)
            .ok_or_else(|| decode_error("job status"))?,
        created_at: micros_column(row, "created_at")?,
        commune_index: usize::try_from(column::<i64>(row, "commune_index")?).unwrap_or(0),
        last_device: last.map(|b| uuid_from(&b)).transpose()?,
        sent: count("sent")?,
        failed: count("failed")?,
        disabled: count("disabled")?,
    })
}

const JOB_COLUMNS: &str = "publication_id, communes, priority, title, body, published_at, created_at, status, \
                           commune_index, last_device, sent, failed, disabled";

impl SqlStore {
    /// Inserts the notification job of a publication in `status`, unless it
    /// has one: `pending` for the notifier, `imported` (finished at once, never
    /// sent) for `panneau import`. Returns whether it was new.
    pub(super) async fn insert_job(
        &self,
        job: &NewJob,
        now: Timestamp,
        status: JobStatus,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(self.insert_ignore(
            "notification_jobs (publication_id, communes, priority, title, body, published_at, \
             created_at, status, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(uuid_bytes(job.publication.as_uuid()))
        .bind(serde_json::to_string(&job.communes).expect("codes serialise"))
        .bind(job.priority.as_str())
        .bind(job.title.clone())
        .bind(job.body.clone())
        .bind(job.published_at.as_unix_micros())
        .bind(now.as_unix_micros())
        .bind(status.as_str())
        .bind((status != JobStatus::Pending).then_some(now.as_unix_micros()))
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        Ok(inserted > 0)
    }
}

#[async_trait]
impl NotificationStore for SqlStore {
    async fn create_job(&self, job: &NewJob, now: Timestamp) -> Result<bool, StoreError> {
        self.insert_job(job, now, JobStatus::Pending).await
    }

    async fn cancel_job(
        &self,
        publication: PublicationId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_jobs SET status = 'cancelled', finished_at = ?, lease_owner = NULL \
             WHERE publication_id = ? AND status IN ('pending', 'running')",
        )
        .bind(now.as_unix_micros())
        .bind(uuid_bytes(publication.as_uuid()))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM notification_deliveries WHERE publication_id = ?")
            .bind(uuid_bytes(publication.as_uuid()))
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn claim_job(
        &self,
        owner: Uuid,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Option<NotificationJob>, StoreError> {
        let candidates = sqlx::query(
            "SELECT publication_id FROM notification_jobs WHERE status IN ('pending', 'running') \
             AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT 5",
        )
        .bind(now.as_unix_micros())
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        for candidate in candidates {
            let id = column::<Vec<u8>>(&candidate, "publication_id")?;
            // A conditional UPDATE is the lease: at most one instance wins it.
            let won = sqlx::query(
                "UPDATE notification_jobs SET status = 'running', lease_owner = ?, lease_until = ? \
                 WHERE publication_id = ? AND status IN ('pending', 'running') \
                 AND (lease_until IS NULL OR lease_until < ?)",
            )
            .bind(uuid_bytes(owner))
            .bind(lease_until.as_unix_micros())
            .bind(id.clone())
            .bind(now.as_unix_micros())
            .execute(&self.pool)
            .await
            .map_err(err)?
            .rows_affected();
            if won == 1 {
                let sql =
                    format!("SELECT {JOB_COLUMNS} FROM notification_jobs WHERE publication_id = ?");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(err)?;
                return job_from_row(&row).map(Some);
            }
        }
        Ok(None)
    }

    async fn audience(
        &self,
        communes: &[InseeCode],
        index: usize,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Target>, StoreError> {
        let Some(commune) = communes.get(index) else {
            return Ok(Vec::new());
        };
        // A device also subscribed to another commune of the job comes up once per
        // commune; the claims of the job (`claim_deliveries`) let it through once.
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT d.id, d.platform, d.token, d.locale, d.token_updated_at FROM device_communes dc \
                 JOIN devices d ON d.id = dc.device_id \
                 WHERE dc.commune_code = ? AND dc.device_id > ? AND d.disabled_at IS NULL \
                 ORDER BY dc.device_id LIMIT ?"
            }
            // Parameters arrive as BLOB and utf8mb4 strings: cast to the columns'
            // types so MariaDB uses the key range on (commune_code, device_id).
            Dialect::MariaDb => {
                "SELECT d.id, d.platform, d.token, d.locale, d.token_updated_at FROM device_communes dc \
                 JOIN devices d ON d.id = dc.device_id \
                 WHERE dc.commune_code = CAST(? AS CHAR(5) CHARACTER SET ascii) \
                 AND dc.device_id > CAST(? AS BINARY(16)) AND d.disabled_at IS NULL \
                 ORDER BY dc.device_id LIMIT ?"
            }
        };
        let rows = sqlx::query(sql)
            .bind(commune.as_str().to_owned())
            .bind(uuid_bytes(after.unwrap_or(Uuid::nil())))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|row| {
                Ok(Target {
                    device: uuid_column(row, "id")?,
                    platform: Platform::parse(&column::<String>(row, "platform")?)
                        .ok_or_else(|| decode_error("platform"))?,
                    token: column(row, "token")?,
                    locale: column(row, "locale")?,
                    token_updated_at: micros_column(row, "token_updated_at")?,
                })
            })
            .collect()
    }

    async fn claim_deliveries(
        &self,
        publication: PublicationId,
        owner: Uuid,
        claim: Uuid,
        devices: &[Uuid],
        lease_until: Timestamp,
    ) -> Result<Result<Vec<Uuid>, LeaseLost>, StoreError> {
        if devices.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut tx = self.begin_write().await.map_err(err)?;
        // The lease check locks the job row until commit: claims of one job are serial.
        let held = sqlx::query("UPDATE notification_jobs SET lease_until = ? WHERE publication_id = ? AND lease_owner = ?")
            .bind(lease_until.as_unix_micros())
            .bind(uuid_bytes(publication.as_uuid()))
            .bind(uuid_bytes(owner))
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        if held == 0 {
            return Ok(Err(LeaseLost));
        }
        let key = match self.dialect {
            Dialect::Sqlite => "?",
            Dialect::MariaDb => "CAST(? AS BINARY(16))",
        };
        let sql = format!(
            "SELECT device_id, claim_id FROM notification_deliveries WHERE publication_id = {key} AND device_id IN ({})",
            vec![key; devices.len()].join(", ")
        );
        let mut query =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(uuid_bytes(publication.as_uuid()));
        for device in devices {
            query = query.bind(uuid_bytes(*device));
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(err)?;
        let mut already = Vec::with_capacity(rows.len());
        let mut ours = Vec::new();
        for row in &rows {
            let device = uuid_column(row, "device_id")?;
            let by: Option<Vec<u8>> = row.try_get("claim_id").map_err(err)?;
            if by.as_deref() == Some(claim.as_bytes().as_slice()) {
                ours.push(device);
            } else {
                already.push(device);
            }
        }
        // Devices this claim recorded in an attempt whose answer was lost are
        // still to be sent to; they are not inserted again.
        let fresh: Vec<Uuid> = devices
            .iter()
            .copied()
            .filter(|d| !already.contains(d) && !ours.contains(d))
            .collect();
        for chunk in fresh.chunks(500) {
            let sql = format!(
                "INSERT INTO notification_deliveries (publication_id, device_id, claim_id) VALUES {}",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for device in chunk {
                query = query
                    .bind(uuid_bytes(publication.as_uuid()))
                    .bind(uuid_bytes(*device))
                    .bind(uuid_bytes(claim));
            }
            query.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        let mut claimed = fresh;
        claimed.extend(ours);
        Ok(Ok(claimed))
    }

    async fn record_progress(
        &self,
        publication: PublicationId,
        owner: Uuid,
        progress: &Progress,
        lease_until: Timestamp,
    ) -> Result<Result<(), LeaseLost>, StoreError> {
        let updated = sqlx::query(
            "UPDATE notification_jobs SET commune_index = ?, last_device = ?, sent = sent + ?, \
             failed = failed + ?, disabled = disabled + ?, lease_until = ? \
             WHERE publication_id = ? AND lease_owner = ? AND status = 'running'",
        )
        .bind(i64::try_from(progress.commune_index).unwrap_or(i64::MAX))
        .bind(progress.last_device.map(uuid_bytes))
        .bind(i64::try_from(progress.sent).unwrap_or(i64::MAX))
        .bind(i64::try_from(progress.failed).unwrap_or(i64::MAX))
        .bind(i64::try_from(progress.disabled).unwrap_or(i64::MAX))
        .bind(lease_until.as_unix_micros())
        .bind(uuid_bytes(publication.as_uuid()))
        .bind(uuid_bytes(owner))
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        Ok(if updated == 1 { Ok(()) } else { Err(LeaseLost) })
    }

    async fn release_job(&self, publication: PublicationId, owner: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_jobs SET lease_until = 0 \
             WHERE publication_id = ? AND lease_owner = ? AND status = 'running'",
        )
        .bind(uuid_bytes(publication.as_uuid()))
        .bind(uuid_bytes(owner))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn finish_job(
        &self,
        publication: PublicationId,
        status: JobStatus,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_jobs SET status = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL \
             WHERE publication_id = ?",
        )
        .bind(status.as_str())
        .bind(now.as_unix_micros())
        .bind(uuid_bytes(publication.as_uuid()))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM notification_deliveries WHERE publication_id = ?")
            .bind(uuid_bytes(publication.as_uuid()))
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn job(&self, publication: PublicationId) -> Result<Option<NotificationJob>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM notification_jobs WHERE publication_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(uuid_bytes(publication.as_uuid()))
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn consumer_position(&self, name: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT position FROM consumer_positions WHERE name = ?")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.map_or(Ok(0), |row| {
            row.try_get("position").map_err(StoreError::Database)
        })
    }

    async fn save_consumer_position(&self, name: &str, position: i64) -> Result<(), StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO consumer_positions (name, position) VALUES (?, ?) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position"
            }
            Dialect::MariaDb => {
                "INSERT INTO consumer_positions (name, position) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE position = VALUES(position)"
            }
        };
        sqlx::query(sql)
            .bind(name.to_owned())
            .bind(position)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }
}
