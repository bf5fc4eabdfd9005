//! The binary forms of what Panneau stores and ships: event envelopes (in the log,
//! the outbox and on the bus) and read-model documents (in the feed store).
//!
//! bincode 2 through serde, with the `standard` configuration, behind a leading
//! format byte. An event's payload is encoded on its own and stored beside its
//! wire name and schema version, so that a decoder picks the right (possibly
//! upcast) shape. Golden fixtures under `tests/fixtures/` pin these forms: every
//! fixture must keep decoding, forever.

use bincode::config::{Configuration, standard};
use panneau_domain::{
    Actor, Envelope, EventId, PublicationAmended, PublicationEvent, PublicationPublished,
    PublicationRetracted, PublicationScheduled, PublicationWentLive, RequestId, StreamId,
    Timestamp,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const CONFIG: Configuration = standard();

/// First byte of an encoded envelope; a new envelope layout gets a new byte.
const ENVELOPE_V1: u8 = 1;
/// First byte of an encoded read-model document.
const DOCUMENT_V1: u8 = 1;

/// Stored bytes could not be decoded. Always a bug or a corruption: 500, and the
/// projector stops rather than skip an event.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown envelope format {0}")]
    UnknownFormat(u8),
    #[error("empty input")]
    Empty,
    #[error("unknown event {event_type} v{schema_version}")]
    UnknownEvent {
        event_type: String,
        schema_version: u16,
    },
    #[error("malformed bytes: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    #[error("trailing bytes after the value")]
    Trailing,
}

/// The envelope as laid out in storage (format 1).
#[derive(Serialize, Deserialize)]
struct StoredEnvelope {
    event_id: Uuid,
    stream_id: StreamId,
    stream_version: u64,
    event_type: String,
    schema_version: u16,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    actor: Actor,
    request_id: Option<RequestId>,
    payload: Vec<u8>,
}

/// The envelope as [`encode_event`] writes it: [`StoredEnvelope`]'s layout,
/// borrowing the envelope's fields rather than copying them.
#[derive(Serialize)]
struct StoredEnvelopeRef<'a> {
    event_id: Uuid,
    stream_id: &'a StreamId,
    stream_version: u64,
    event_type: &'a str,
    schema_version: u16,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    actor: &'a Actor,
    request_id: Option<&'a RequestId>,
    payload: &'a [u8],
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, CONFIG).expect("in-memory bincode encoding cannot fail")
}

/// `format` followed by the encoded value, written in one buffer.
fn encode_after<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512);
    bytes.push(format);
    bincode::serde::encode_into_std_write(value, &mut bytes, CONFIG)
        .expect("in-memory bincode encoding cannot fail");
    bytes
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, CONFIG)?;
    if read != bytes.len() {
        return Err(CodecError::Trailing);
    }
    Ok(value)
}

/// Encodes an envelope for the log, the outbox and the bus.
pub fn encode_event(envelope: &Envelope<PublicationEvent>) -> Vec<u8> {
    let payload = match &envelope.payload {
        PublicationEvent::Published(e) => encode(e),
        PublicationEvent::Scheduled(e) => encode(e),
        PublicationEvent::WentLive(e) => encode(e),
        PublicationEvent::Amended(e) => encode(e),
        PublicationEvent::Retracted(e) => encode(e),
    };
    let stored = StoredEnvelopeRef {
        event_id: envelope.event_id.as_uuid(),
        stream_id: &envelope.stream_id,
        stream_version: envelope.stream_version,
        event_type: envelope.event_type,
        schema_version: envelope.schema_version,
        occurred_at: envelope.occurred_at,
        recorded_at: envelope.recorded_at,
        actor: &envelope.actor,
        request_id: envelope.request_id.as_ref(),
        payload: &payload,
    };
    encode_after(ENVELOPE_V1, &stored)
}

/// Decodes an envelope written by [`encode_event`], today or by any earlier release.
///
/// # Errors
/// `CodecError` when the bytes are not an envelope this release knows.
pub fn decode_event(bytes: &[u8]) -> Result<Envelope<PublicationEvent>, CodecError> {
    let (&format, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != ENVELOPE_V1 {
        return Err(CodecError::UnknownFormat(format));
    }
    let stored: StoredEnvelope = decode(rest)?;
    let (event_type, payload) =
        decode_payload(&stored.event_type, stored.schema_version, &stored.payload)?;
    Ok(Envelope {
        event_id: EventId::new(stored.event_id),
        stream_id: stored.stream_id,
        stream_version: stored.stream_version,
        event_type,
        schema_version: stored.schema_version,
        occurred_at: stored.occurred_at,
        recorded_at: stored.recorded_at,
        actor: stored.actor,
        request_id: stored.request_id,
        payload,
    })
}

/// Picks the shape of a payload from its wire name and version. An old version
/// is upcast here to today's event, so nothing else ever sees it.
fn decode_payload(
    event_type: &str,
    schema_version: u16,
    bytes: &[u8],
) -> Result<(&'static str, PublicationEvent), CodecError> {
    let event = match (event_type, schema_version) {
        ("PublicationPublished", 1) => {
            PublicationEvent::Published(decode::<PublicationPublished>(bytes)?)
        }
        ("PublicationScheduled", 1) => {
            PublicationEvent::Scheduled(decode::<PublicationScheduled>(bytes)?)
        }
        ("PublicationWentLive", 1) => {
            PublicationEvent::WentLive(decode::<PublicationWentLive>(bytes)?)
        }
        ("PublicationAmended", 1) => {
            PublicationEvent::Amended(decode::<PublicationAmended>(bytes)?)
        }
        ("PublicationRetracted", 1) => {
            PublicationEvent::Retracted(decode::<PublicationRetracted>(bytes)?)
        }
        _ => {
            return Err(CodecError::UnknownEvent {
                event_type: event_type.to_owned(),
                schema_version,
            });
        }
    };
    Ok((event.event_type(), event))
}

/// Encodes a read-model document (a publication record, a commune's board).
pub fn encode_document<T: Serialize>(document: &T) -> Vec<u8> {
    encode_after(DOCUMENT_V1, document)
}

/// # Errors
/// `CodecError` when the bytes are not a document of this shape.
pub fn decode_document<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != DOCUMENT_V1 {
        return Err(CodecError::UnknownFormat(format));
    }
    decode(rest)
}

#[cfg(test)]
mod tests;
