//! The portable form of the write side, as `panneau export` writes it and
//! `panneau import` reads it: JSON Lines, one record per line, a header first and
//! a trailer with the counts last (so a truncated file is refused).
//!
//! What travels: publishers, their tokens (hashes only: a token works after an
//! import when both deployments use the same token pepper), the event log (each
//! envelope as stored, bincode in base64, beside readable metadata), refusals
//! (the audit trail of refused commands) and view counts. What does not:
//! devices and their push tokens (personal data stays where it was given; the
//! apps register again when their device id is unknown), idempotency keys (they
//! answer retries within minutes) and read models (rebuilt from the events).
//!
//! An import never notifies: each imported publication that notified (or would
//! have) gets a notification job already in the `imported` state before its
//! event is appended, so no notifier, embedded or in the cluster, sends it again.
//! Importing the same file twice changes nothing the second time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use panneau_domain::{Envelope, PublicationEvent, PublisherId, Role, Scope, StreamId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sql::SqlStore;
use super::{Append, EventStore, JobStatus, StoreError};
use crate::codec::decode_event;

/// Names the format in the header.
pub const FORMAT: &str = "panneau-export";
/// The version of the format this release writes and reads.
pub const VERSION: u32 = 1;

/// One line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Publisher(PublisherRow),
    Token(TokenRow),
    Event(EventRow),
    Refusal(RefusalRow),
    Views(ViewsRow),
    End(Counts),
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Microseconds since the Unix epoch, like every time in an archive.
    pub exported_at_us: i64,
    /// The release that wrote it.
    pub panneau_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherRow {
    pub id: Uuid,
    pub name: String,
    pub created_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    pub id: Uuid,
    pub publisher_id: Uuid,
    /// The hash of the token (HMAC-SHA-256 with the token pepper, or SHA-256
    /// without one), in base64; never the token.
    pub token_hash: String,
    pub role: String,
    /// The scope as stored: `{"communes":[...]}` or `{"departments":[...]}`.
    pub scope: String,
    pub created_at_us: i64,
    pub revoked_at_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub stream_id: String,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    /// The publisher owning the stream, on its first event.
    pub owner: Option<Uuid>,
    /// The stored envelope (bincode, `src/codec.rs`) in base64: decoded on import
    /// by the same codec that reads the log, upcasting old schema versions.
    pub envelope: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRow {
    pub id: Uuid,
    pub at_us: i64,
    pub publisher_id: Uuid,
    pub token_id: Uuid,
    pub request_id: Option<String>,
    pub action: String,
    pub publication_id: Option<Uuid>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewsRow {
    pub publication_id: Uuid,
    pub views: u64,
}

/// How many records of each kind an archive holds (its last line), or an
/// import brought in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub publishers: u64,
    pub tokens: u64,
    pub events: u64,
    pub refusals: u64,
    pub views: u64,
}

impl Counts {
    /// Counts one more record (headers and trailers are not counted).
    pub fn add(&mut self, record: &Record) {
        match record {
            Record::Publisher(_) => self.publishers += 1,
            Record::Token(_) => self.tokens += 1,
            Record::Event(_) => self.events += 1,
            Record::Refusal(_) => self.refusals += 1,
            Record::Views(_) => self.views += 1,
            Record::Header(_) | Record::End(_) => {}
        }
    }
}

impl Counts {
    /// Adds another count to this one.
    pub fn merge(&mut self, other: &Counts) {
        self.publishers += other.publishers;
        self.tokens += other.tokens;
        self.events += other.events;
        self.refusals += other.refusals;
        self.views += other.views;
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} publishers, {} tokens, {} events, {} refusals, {} view counts",
            self.publishers, self.tokens, self.events, self.refusals, self.views
        )
    }
}

/// What went wrong with an archive or its import.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive could not be written.
    #[error("cannot write the archive")]
    Write(#[source] std::io::Error),
    /// A record is malformed or inconsistent (`panneau import` checks every
    /// record before writing any, so this means the file changed meanwhile).
    #[error("{0}")]
    Invalid(String),
    /// The target already holds something else under an id of the archive.
    #[error("{0}")]
    Conflict(String),
}

impl Record {
    /// Checks what can be checked of one record on its own, the way an import
    /// would use it. Returns the decoded envelope of an event.
    ///
    /// # Errors
    /// A sentence naming the field at fault.
    pub fn check(&self) -> Result<Option<Envelope<PublicationEvent>>, String> {
        match self {
            Record::Header(h) => {
                if h.format != FORMAT {
                    return Err(format!("not a Panneau export (format {:?})", h.format));
                }
                if h.version != VERSION {
                    return Err(format!(
                        "format version {} is not supported by this release (it reads version {VERSION})",
                        h.version
                    ));
                }
                Ok(None)
            }
            Record::Publisher(p) => {
                if p.name.trim().is_empty() || p.name.chars().count() > 200 {
                    return Err("publisher name must have 1 to 200 characters".into());
                }
                Ok(None)
            }
            Record::Token(t) => {
                token_hash(&t.token_hash)?;
                Role::parse(&t.role).ok_or_else(|| format!("unknown role {:?}", t.role))?;
                serde_json::from_str::<Scope>(&t.scope).map_err(|e| format!("scope: {e}"))?;
                Ok(None)
            }
            Record::Event(e) => e.decode().map(Some),
            Record::Refusal(r) => {
                if r.reason.chars().count() > 1000 || r.action.len() > 20 {
                    return Err("refusal reason or action too long".into());
                }
                Ok(None)
            }
            Record::Views(_) | Record::End(_) => Ok(None),
        }
    }
}

fn token_hash(text: &str) -> Result<[u8; 32], String> {
    BASE64
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| "token_hash must be 32 bytes in base64".to_owned())
}

impl EventRow {
    /// Decodes the envelope and checks that the readable metadata says the same.
    fn decode(&self) -> Result<Envelope<PublicationEvent>, String> {
        let bytes = BASE64
            .decode(&self.envelope)
            .map_err(|e| format!("envelope is not base64: {e}"))?;
        let envelope = decode_event(&bytes).map_err(|e| format!("envelope: {e}"))?;
        if envelope.event_id.as_uuid() != self.event_id
            || envelope.stream_id.as_str() != self.stream_id
            || envelope.stream_version != self.stream_version
        {
            return Err(format!(
                "event {}: the envelope names another event, stream or version",
                self.event_id
            ));
        }
        if envelope.stream_version == 0 {
            return Err("stream versions start at 1".into());
        }
        Ok(envelope)
    }
}

/// Writes every record of `store` to `sink`, header first and counts last, from
/// one read transaction (a consistent snapshot while the service runs).
///
/// # Errors
/// `Store` when the database cannot be read, `Write` when `sink` fails.
pub async fn export(
    store: &SqlStore,
    sink: &mut (dyn FnMut(&Record) -> std::io::Result<()> + Send),
) -> Result<Counts, ArchiveError> {
    let mut counts = Counts::default();
    let mut emit = |record: Record| -> Result<(), ArchiveError> {
        counts.add(&record);
        sink(&record).map_err(ArchiveError::Write)
    };
    emit(Record::Header(Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        exported_at_us: crate::now().as_unix_micros(),
        panneau_version: env!("CARGO_PKG_VERSION").to_owned(),
    }))?;
    store.export_rows(&mut emit).await?;
    let end = Record::End(counts);
    sink(&end).map_err(ArchiveError::Write)?;
    Ok(counts)
}

/// What an import did: records brought in, and records the target already held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: Counts,
    pub already_present: Counts,
}

/// Imports checked records (see [`Record::check`]) in archive order. Events go
/// through the ordinary append (with their outbox rows in cluster mode, so the
/// projections of running instances follow), each publication's notification
/// job recorded first as `imported` so that it is never sent.
///
/// # Errors
/// `Store`, or `Conflict` when the target holds another event at a stream
/// version of the archive, or another token under a token id.
pub async fn import(
    store: &SqlStore,
    records: impl IntoIterator<Item = Record>,
) -> Result<ImportReport, ArchiveError> {
    let mut report = ImportReport::default();
    let now = crate::now();
    for record in records {
        let new = match &record {
            Record::Header(_) | Record::End(_) => continue,
            Record::Publisher(p) => store.import_publisher(p).await?,
            Record::Token(t) => {
                let hash = token_hash(&t.token_hash).map_err(ArchiveError::Conflict)?;
                store.import_token(t, hash).await?
            }
            Record::Event(e) => import_event(store, e, now).await?,
            Record::Refusal(r) => store.import_refusal(r).await?,
            Record::Views(v) => store.import_views(v).await?,
        };
        if new {
            report.imported.add(&record);
        } else {
            report.already_present.add(&record);
        }
    }
    Ok(report)
}

async fn import_event(
    store: &SqlStore,
    row: &EventRow,
    now: Timestamp,
) -> Result<bool, ArchiveError> {
    let envelope = row
        .decode()
        .map_err(|reason| ArchiveError::Invalid(format!("event {}: {reason}", row.event_id)))?;
    let stream = StreamId::parse(&row.stream_id)
        .map_err(|e| ArchiveError::Invalid(format!("event {}: stream id: {e}", row.event_id)))?;
    let held = store.read_stream(&stream).await?;
    if let Some(there) = held
        .iter()
        .find(|r| r.envelope.stream_version == envelope.stream_version)
    {
        if there.envelope.event_id == envelope.event_id {
            return Ok(false);
        }
        return Err(ArchiveError::Conflict(format!(
            "stream {} version {}: the target holds another event there",
            row.stream_id, row.stream_version
        )));
    }
    if let Some(job) = crate::notifier::job_of(store, &envelope).await? {
        store.insert_job(&job, now, JobStatus::Imported).await?;
    }
    let append = Append {
        stream,
        expected_version: envelope.stream_version - 1,
        events: vec![envelope],
        owner: row.owner.map(PublisherId::new),
        idempotency: None,
    };
    match store.append(append).await {
        Ok(_) => Ok(true),
        Err(StoreError::VersionConflict) => Err(ArchiveError::Conflict(format!(
            "stream {} version {}: the target's stream is not where the archive continues it \
             (another event there, or an earlier version missing)",
            row.stream_id, row.stream_version
        ))),
        Err(error) => Err(error.into()),
    }
}
