//! The envelope every stored event travels in: who did what, when, in which
//! stream at which version, and under which request.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::publisher::{PublisherId, TokenId};
use crate::time::Timestamp;
use crate::values::{PublicationId, ValueError};

/// The id of one event: a UUIDv7, unique across the whole log. The outbox relay
/// uses it as `Nats-Msg-Id`, so a re-published event is deduplicated by the broker.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.hyphenated())
    }
}

/// The stream an event belongs to, e.g. `publication-0193…`. Versions are dense
/// and start at 1 within a stream.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct StreamId(String);

/// Written as its text, borrowed (`into = "String"` would copy it first).
impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl StreamId {
    const PUBLICATION_PREFIX: &'static str = "publication-";

    /// # Errors
    /// `MalformedStreamId` unless 1–100 visible ASCII characters.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        if text.is_empty() || text.len() > 100 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValueError::MalformedStreamId);
        }
        Ok(Self(text))
    }

    pub fn publication(id: PublicationId) -> Self {
        Self(format!("{}{id}", Self::PUBLICATION_PREFIX))
    }

    /// The publication this stream is about, if it is a publication stream.
    pub fn publication_id(&self) -> Option<PublicationId> {
        self.0
            .strip_prefix(Self::PUBLICATION_PREFIX)
            .and_then(|rest| PublicationId::parse(rest).ok())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

/// The `X-Request-Id` a command arrived with: 1–128 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RequestId(String);

/// Written as its text, borrowed (`into = "String"` would copy it first).
impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl RequestId {
    /// # Errors
    /// `MalformedRequestId` unless 1–128 visible ASCII characters.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        if !Self::is_valid(&text) {
            return Err(ValueError::MalformedRequestId);
        }
        Ok(Self(text))
    }

    /// Whether `text` is a request id: 1–128 visible ASCII characters.
    pub fn is_valid(text: &str) -> bool {
        !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Actor {
    /// A publisher, through one of its tokens.
    Publisher {
        publisher: PublisherId,
        token: TokenId,
    },
    /// Panneau itself, e.g. the scheduler putting a scheduled publication live.
    System { component: String },
}

/// An event with everything the log records about it.
///
/// `event_type` and `schema_version` name the payload's wire form (e.g.
/// `PublicationPublished` v1); they are stored beside it so that a decoder picks
/// the right (possibly upcast) form without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<E> {
    pub event_id: EventId,
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub event_type: &'static str,
    pub schema_version: u16,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub actor: Actor,
    pub request_id: Option<RequestId>,
    pub payload: E,
}
