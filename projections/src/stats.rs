//! The publisher statistics read model: what each publisher has published, as
//! a fold of the publication events.
//!
//! The figures of each publication, with the stream version they reflect, are
//! kept in one of [`SHARDS`] documents of its publisher (chosen by
//! [`shard`]), so applying an event is idempotent (a redelivery finds its
//! version already there) and rewrites a small document, not everything the
//! publisher ever published; the publisher's totals are sums computed when
//! read. The publisher of an event that does not name
//! it (going live, amendments, retractions) is the one its creation named:
//! projectors keep that as an `owner` record.

use std::collections::{BTreeMap, HashMap};

use panneau_domain::{Category, Envelope, Priority, PublicationEvent, PublicationId, PublisherId};
use serde::{Deserialize, Serialize};

use crate::feed::Gap;

/// How many documents a publisher's statistics are spread over.
pub const SHARDS: u8 = 64;

/// The document of a publisher's statistics that holds this publication:
/// from the random bits of its UUIDv7, so publications spread evenly.
pub fn shard(id: &PublicationId) -> u8 {
    id.as_uuid().as_bytes()[15] % SHARDS
}

/// Where a publication stands, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Scheduled,
    Live,
    Retracted,
}

/// The figures of one publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationFigures {
    /// The stream version these figures reflect.
    pub version: u64,
    pub phase: Phase,
    pub category: Category,
    pub priority: Priority,
    /// Communes it is addressed to.
    pub communes: u32,
    pub amendments: u32,
}

/// The statistics document of one publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherStats {
    publications: BTreeMap<PublicationId, PublicationFigures>,
}

/// A publisher's totals, as the publisher API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSummary {
    pub publications: u64,
    pub scheduled: u64,
    pub live: u64,
    pub retracted: u64,
    pub urgent: u64,
    pub amendments: u64,
    /// Sum over publications of the communes each is addressed to.
    pub commune_notices: u64,
    /// Publications per category (`info`, `alert`, …), categories never used left out.
    pub by_category: BTreeMap<Category, u64>,
}

/// What one event does to a publisher's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsStep {
    /// Already applied.
    Duplicate,
    /// An earlier version of the stream is missing: wait for it.
    Gap { expected: u64 },
    /// Changed: store the document.
    Applied,
}

impl PublisherStats {
    pub fn publication(&self, id: &PublicationId) -> Option<&PublicationFigures> {
        self.publications.get(id)
    }

    /// Folds event `version` of a publication stream in.
    pub fn apply(&mut self, version: u64, event: &PublicationEvent) -> StatsStep {
        let id = event.publication_id();
        let current = self.publications.get(&id).map_or(0, |f| f.version);
        if version <= current {
            return StatsStep::Duplicate;
        }
        if version > current + 1 {
            return StatsStep::Gap {
                expected: current + 1,
            };
        }
        let figures = match (self.publications.get(&id).copied(), event) {
            (None, PublicationEvent::Published(e)) => created(Phase::Live, &e.content),
            (None, PublicationEvent::Scheduled(e)) => created(Phase::Scheduled, &e.content),
            // Anything else first: the stream is corrupt (`decide` prevents
            // it); wait for the creation, as the feed projection does.
            (None, _) => return StatsStep::Gap { expected: 1 },
            (Some(f), PublicationEvent::WentLive(_)) => PublicationFigures {
                phase: Phase::Live,
                ..f
            },
            (Some(f), PublicationEvent::Amended(e)) => PublicationFigures {
                category: e.changes.category.unwrap_or(f.category),
                priority: e.changes.priority.unwrap_or(f.priority),
                communes: e
                    .changes
                    .communes
                    .as_ref()
                    .map_or(f.communes, |c| count(c.len())),
                amendments: f.amendments + 1,
                ..f
            },
            (Some(f), PublicationEvent::Retracted(_)) => PublicationFigures {
                phase: Phase::Retracted,
                ..f
            },
            // A second creation cannot be decided; keep what is there.
            (Some(f), PublicationEvent::Published(_) | PublicationEvent::Scheduled(_)) => f,
        };
        self.publications
            .insert(id, PublicationFigures { version, ..figures });
        StatsStep::Applied
    }

    pub fn summary(&self) -> StatsSummary {
        let mut summary = StatsSummary::default();
        self.add_to(&mut summary);
        summary
    }

    /// Adds this document's figures to `summary` (a publisher's shards add up).
    pub fn add_to(&self, summary: &mut StatsSummary) {
        for f in self.publications.values() {
            summary.publications += 1;
            match f.phase {
                Phase::Scheduled => summary.scheduled += 1,
                Phase::Live => summary.live += 1,
                Phase::Retracted => summary.retracted += 1,
            }
            if f.priority == Priority::Urgent {
                summary.urgent += 1;
            }
            summary.amendments += u64::from(f.amendments);
            summary.commune_notices += u64::from(f.communes);
            *summary.by_category.entry(f.category).or_default() += 1;
        }
    }
}

fn created(phase: Phase, content: &panneau_domain::Content) -> PublicationFigures {
    PublicationFigures {
        version: 1,
        phase,
        category: content.category,
        priority: content.priority,
        communes: count(content.communes.len()),
        amendments: 0,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The publisher a creation event names, if it is one.
pub fn creator(event: &PublicationEvent) -> Option<PublisherId> {
    match event {
        PublicationEvent::Published(e) => Some(e.publisher),
        PublicationEvent::Scheduled(e) => Some(e.publisher),
        _ => None,
    }
}

/// The whole statistics model in memory: for `replay stats`, its `--verify`
/// and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsProjection {
    owners: HashMap<PublicationId, PublisherId>,
    shards: HashMap<(PublisherId, u8), PublisherStats>,
}

impl StatsProjection {
    /// Folds one event in; duplicates are ignored.
    ///
    /// # Errors
    /// `Gap` when an earlier version of the stream is missing.
    pub fn apply(&mut self, envelope: &Envelope<PublicationEvent>) -> Result<(), Gap> {
        let id = envelope.payload.publication_id();
        let owner = match creator(&envelope.payload) {
            Some(publisher) => *self.owners.entry(id).or_insert(publisher),
            None => *self.owners.get(&id).ok_or(Gap { expected: 1 })?,
        };
        match self
            .shards
            .entry((owner, shard(&id)))
            .or_default()
            .apply(envelope.stream_version, &envelope.payload)
        {
            StatsStep::Gap { expected } => Err(Gap { expected }),
            StatsStep::Duplicate | StatsStep::Applied => Ok(()),
        }
    }

    pub fn owners(&self) -> impl Iterator<Item = (&PublicationId, &PublisherId)> + '_ {
        self.owners.iter()
    }

    /// Every non-empty document: publisher, shard, figures.
    pub fn shards(&self) -> impl Iterator<Item = (&PublisherId, u8, &PublisherStats)> + '_ {
        self.shards
            .iter()
            .map(|((publisher, shard), stats)| (publisher, *shard, stats))
    }

    pub fn shard(&self, publisher: &PublisherId, shard: u8) -> Option<&PublisherStats> {
        self.shards.get(&(*publisher, shard))
    }

    /// A publisher's totals, over all its documents (`None` if it has none).
    pub fn summary(&self, publisher: &PublisherId) -> Option<StatsSummary> {
        let mut summary = None;
        for shard in 0..SHARDS {
            if let Some(stats) = self.shard(publisher, shard) {
                stats.add_to(summary.get_or_insert_with(StatsSummary::default));
            }
        }
        summary
    }

    pub fn owner(&self, id: &PublicationId) -> Option<&PublisherId> {
        self.owners.get(id)
    }

    /// Takes a publication's owner out, once its stream has been folded
    /// whole (only the events of its own stream ever read it).
    pub fn take_owner(&mut self, id: &PublicationId) -> Option<PublisherId> {
        self.owners.remove(id)
    }

    /// The owners left and every statistics document, taking the
    /// projection apart.
    pub fn into_parts(
        self,
    ) -> (
        impl Iterator<Item = (PublicationId, PublisherId)>,
        impl Iterator<Item = (PublisherId, u8, PublisherStats)>,
    ) {
        (
            self.owners.into_iter(),
            self.shards
                .into_iter()
                .map(|((publisher, shard), stats)| (publisher, shard, stats)),
        )
    }
}
