//! Panneau's domain: the rules of publishing to a commune's notice board.
//!
//! This crate is a pure decider. It holds value types that can only hold valid
//! values, the publication aggregate (`decide` / `evolve`), its commands, its
//! events and its errors. It performs no I/O and reads no clock: time and ids are
//! inputs, so every rule is testable without a server.
//!
//! Limits from the HTTP contract (title length, attachment count, …) are enforced
//! here, by the constructors of the value types and by `decide`.

pub mod device;
pub mod event;
pub mod publication;
pub mod publisher;
pub mod time;
pub mod values;

pub use device::{Locale, Platform, PushToken};
pub use event::{Actor, Envelope, EventId, RequestId, StreamId};
pub use publication::{
    Amendment, Command, Content, Publication, PublicationAmended, PublicationError,
    PublicationEvent, PublicationPublished, PublicationRetracted, PublicationScheduled,
    PublicationState, PublicationWentLive, Status, decide, evolve,
};
pub use publisher::{Issuer, PublisherId, Role, Scope, TokenId};
pub use time::Timestamp;
pub use values::{
    Attachment, AttachmentName, Attachments, Body, Category, CommuneSet, ContentType,
    DepartmentCode, HttpsUrl, InseeCode, Priority, PublicationId, Title, ValueError,
    VisibilityWindow,
};
