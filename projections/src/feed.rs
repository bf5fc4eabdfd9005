//! The per-commune feed as a fold of publication events.
//!
//! Two documents make the read model: one record per publication (its domain
//! state, folded by the domain's own `evolve`) and one feed document per commune
//! (the entries shown on that commune's board). [`step`] says what one event does
//! to them; a projector stores the results with compare-and-set. Because `step`
//! applies an event only when it is the next version of its stream, a redelivered
//! event changes nothing and a missing one is waited for.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use panneau_domain::{
    Attachment, Category, Envelope, InseeCode, Priority, Publication, PublicationEvent,
    PublicationId, PublicationState, Status, Timestamp, evolve,
};
use serde::{Deserialize, Serialize};

/// A publication as the apps read it (the HTTP contract's publication object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Publication))]
pub struct PublicationView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: PublicationId,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, example = json!(["35238"])))]
    pub communes: Vec<InseeCode>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, min_length = 1, max_length = 140))]
    pub title: panneau_domain::Title,
    #[cfg_attr(feature = "openapi", schema(value_type = String, min_length = 1, max_length = 8000))]
    pub body: panneau_domain::Body,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "info"))]
    pub category: Category,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "normal"))]
    pub priority: Priority,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub published_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub visible_until: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<AttachmentView>))]
    pub attachments: Vec<Attachment>,
    pub version: u64,
}

/// Documentation shape of an attachment (the domain type serialises the same way).
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AttachmentView {
    #[schema(
        pattern = "^https://",
        example = "https://mairie.example.fr/arrete.pdf"
    )]
    url: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(example = "application/pdf")]
    content_type: String,
}

/// One publication on one commune's board, with what ordering and visibility need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub view: PublicationView,
    /// When it starts being shown: its publication time, or `visible_from` if later.
    pub shown_from: Timestamp,
}

impl FeedEntry {
    /// Builds the entry of a publication, or `None` when it is on no board.
    pub fn of(state: &PublicationState) -> Option<FeedEntry> {
        let published_at = match state.status {
            Status::Scheduled { publish_at } => publish_at,
            Status::Live { published_at } => published_at,
            Status::Retracted { .. } => return None,
        };
        let content = &state.content;
        let shown_from = content
            .window
            .from()
            .map_or(published_at, |from| from.max(published_at));
        Some(FeedEntry {
            view: PublicationView {
                id: state.id,
                communes: content.communes.iter().copied().collect(),
                title: content.title.clone(),
                body: content.body.clone(),
                category: content.category,
                priority: content.priority,
                published_at,
                updated_at: state.updated_at.unwrap_or(published_at),
                visible_until: content.window.until(),
                attachments: content.attachments.as_slice().to_vec(),
                version: state.version,
            },
            shown_from,
        })
    }

    pub fn is_visible_at(&self, now: Timestamp) -> bool {
        self.shown_from <= now && self.view.visible_until.is_none_or(|until| now < until)
    }

    /// Feed order: urgent first, then newest first; the id breaks ties.
    pub fn sort_key(&self) -> SortKey {
        SortKey {
            normal: self.view.priority == Priority::Normal,
            newest_first: std::cmp::Reverse(self.view.published_at),
            id: std::cmp::Reverse(self.view.id),
        }
    }
}

/// The position of an entry in a feed; also what a paging cursor points after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey {
    normal: bool,
    newest_first: std::cmp::Reverse<Timestamp>,
    id: std::cmp::Reverse<PublicationId>,
}

impl SortKey {
    /// The opaque cursor text for "after this entry": `u|n`, microseconds, id.
    pub fn to_cursor(self) -> String {
        format!(
            "{}.{}.{}",
            if self.normal { 'n' } else { 'u' },
            self.newest_first.0.as_unix_micros(),
            self.id.0
        )
    }

    /// Parses a cursor made by [`SortKey::to_cursor`]; `None` if it is not one.
    pub fn from_cursor(text: &str) -> Option<SortKey> {
        let mut parts = text.splitn(3, '.');
        let normal = match parts.next()? {
            "n" => true,
            "u" => false,
            _ => return None,
        };
        let micros: i64 = parts.next()?.parse().ok()?;
        let id = PublicationId::parse(parts.next()?).ok()?;
        let at = Timestamp::from_unix_micros(micros);
        (at.as_unix_micros() == micros).then_some(SortKey {
            normal,
            newest_first: std::cmp::Reverse(at),
            id: std::cmp::Reverse(id),
        })
    }
}

/// The board of one commune: its entries in feed order. An entry is shared
/// (stored as itself) by every board that shows its publication: a
/// department-wide alert is one entry on 333 boards, not 333 copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDocument {
    entries: Vec<Arc<FeedEntry>>,
}

/// What one event does to one commune's board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedChange {
    /// Put this entry on the board, replacing an older version of it.
    Upsert(Arc<FeedEntry>),
    /// Take this publication off the board.
    Remove(PublicationId),
}

impl FeedDocument {
    pub fn entries(&self) -> &[Arc<FeedEntry>] {
        &self.entries
    }

    /// Applies a change. `now` is the time of the event that caused it: entries
    /// whose window closed before it are dropped, which keeps documents small and
    /// depends on the events alone (never on the clock of the projector).
    pub fn apply(&mut self, change: &FeedChange, now: Timestamp) {
        self.apply_owned(change.clone(), now);
    }

    /// `apply`, taking the change.
    pub fn apply_owned(&mut self, change: FeedChange, now: Timestamp) {
        let id = match &change {
            FeedChange::Upsert(entry) => entry.view.id,
            FeedChange::Remove(id) => *id,
        };
        self.entries.retain(|e| e.view.id != id);
        if let FeedChange::Upsert(entry) = change {
            let key = entry.sort_key();
            let at = self.entries.partition_point(|e| e.sort_key() < key);
            self.entries.insert(at, entry);
        }
        self.entries
            .retain(|e| e.view.visible_until.is_none_or(|until| until > now));
    }

    /// The earliest instant after `now` at which the visible set changes (an
    /// entry's `visible_from` or `visible_until` passing), if any.
    pub fn next_change_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.entries
            .iter()
            .flat_map(|e| [Some(e.shown_from), e.view.visible_until])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// The entries visible at `now` that come after `cursor` (all when `None`).
    pub fn visible_after(
        &self,
        now: Timestamp,
        cursor: Option<SortKey>,
    ) -> impl Iterator<Item = &FeedEntry> + '_ {
        let start = cursor.map_or(0, |key| {
            self.entries.partition_point(|e| e.sort_key() <= key)
        });
        self.entries[start..]
            .iter()
            .map(|e| &**e)
            .filter(move |e| e.is_visible_at(now))
    }
}

impl FeedDocument {
    /// A board made of `entries`, already in feed order (a rendered page read back).
    pub(crate) fn from_sorted(entries: Vec<FeedEntry>) -> Self {
        Self {
            entries: entries.into_iter().map(Arc::new).collect(),
        }
    }

    /// Lays a publication the board has not caught up with over it: its entry
    /// at the log's latest version replaces an older one on this board, or
    /// takes it off the board if that version is not shown here. A board that
    /// already holds that version or a later one is left as it is.
    pub fn overlay(&mut self, pending: &PendingPublication, commune: &InseeCode, now: Timestamp) {
        if !pending.touched.contains(commune)
            || self
                .entries
                .iter()
                .any(|e| e.view.id == pending.id && e.view.version >= pending.version)
        {
            return;
        }
        let change = match &pending.entry {
            Some(entry) if pending.shown_on.contains(commune) => FeedChange::Upsert(entry.clone()),
            _ => FeedChange::Remove(pending.id),
        };
        self.apply_owned(change, now);
    }
}

/// A publication as the log has it, folded from its whole stream, for boards
/// that have not caught up with it yet (the broker is away: see
/// [`FeedDocument::overlay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPublication {
    pub id: PublicationId,
    /// The latest version of its stream.
    pub version: u64,
    /// Its entry at that version; `None` once retracted.
    entry: Option<Arc<FeedEntry>>,
    /// The communes whose boards show it at that version.
    shown_on: BTreeSet<InseeCode>,
    /// Every commune a version of it was ever on: their boards may hold an
    /// older version to replace or take off.
    touched: BTreeSet<InseeCode>,
}

impl PendingPublication {
    /// Folds a whole stream, versions from 1 in order (redeliveries are
    /// ignored). `None` for an empty stream or one with a gap.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a Envelope<PublicationEvent>>,
    ) -> Option<Self> {
        let mut record: Option<PublicationState> = None;
        let mut touched = BTreeSet::new();
        for event in events {
            let step = match precheck(record.as_ref(), event.stream_version) {
                Some(early) => early,
                None => step_from(record.take(), &event.payload),
            };
            match step {
                Step::Duplicate => {}
                Step::Gap { .. } => return None,
                Step::Apply {
                    record: next,
                    changes,
                } => {
                    touched.extend(changes.into_iter().map(|(commune, _)| commune));
                    record = Some(*next);
                }
            }
        }
        let record = record?;
        let entry = FeedEntry::of(&record).map(Arc::new);
        let shown_on = if entry.is_some() {
            record.content.communes.as_set().clone()
        } else {
            BTreeSet::new()
        };
        Some(Self {
            id: record.id,
            version: record.version,
            entry,
            shown_on,
            touched,
        })
    }

    /// Its entry at the latest version; `None` once retracted.
    pub fn entry(&self) -> Option<&FeedEntry> {
        self.entry.as_deref()
    }

    /// The communes whose boards this publication may change.
    pub fn touched(&self) -> &BTreeSet<InseeCode> {
        &self.touched
    }
}

/// What applying one event means for the read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This version was already applied: nothing to do (a redelivery).
    Duplicate,
    /// An earlier version of the stream has not been applied yet: wait for it.
    Gap { expected: u64 },
    /// The event is the next one: store the new record, then change the boards.
    Apply {
        record: Box<PublicationState>,
        changes: Vec<(InseeCode, FeedChange)>,
    },
}

/// Decides what event `version` of a publication stream does, given the record
/// stored so far (`None` before the first event). The record is taken, not
/// copied: it becomes the new record when the event applies.
pub fn step(record: Option<PublicationState>, version: u64, event: &PublicationEvent) -> Step {
    match precheck(record.as_ref(), version) {
        Some(early) => early,
        None => step_from(record, event),
    }
}

/// Duplicate or gap, decided from the stored version alone.
fn precheck(record: Option<&PublicationState>, version: u64) -> Option<Step> {
    let current = record.map_or(0, |r| r.version);
    if version <= current {
        return Some(Step::Duplicate);
    }
    (version > current + 1).then_some(Step::Gap {
        expected: current + 1,
    })
}

/// `step` for the next event of the stream, consuming the record.
fn step_from(record: Option<PublicationState>, event: &PublicationEvent) -> Step {
    let old: BTreeSet<InseeCode> = record
        .as_ref()
        .map_or_else(BTreeSet::new, |r| r.content.communes.as_set().clone());
    let before = record.map_or(Publication::Absent, |r| Publication::Present(Box::new(r)));
    let Publication::Present(after) = evolve(before, event) else {
        // An event other than a creation arrived first: the stream is corrupt,
        // which `decide` prevents; treat it as the missing creation.
        return Step::Gap { expected: 1 };
    };
    let entry = FeedEntry::of(&after).map(Arc::new);
    let shown_on = after.content.communes.iter();
    let mut changes = Vec::with_capacity(shown_on.len());
    for commune in shown_on {
        let change = match &entry {
            Some(entry) => FeedChange::Upsert(Arc::clone(entry)),
            None => FeedChange::Remove(after.id),
        };
        changes.push((*commune, change));
    }
    for commune in old.difference(after.content.communes.as_set()) {
        changes.push((*commune, FeedChange::Remove(after.id)));
    }
    Step::Apply {
        record: after,
        changes,
    }
}

/// The whole feed read model in memory: for tests, `replay --verify`, and as the
/// reference the stored projection is compared with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedProjection {
    records: HashMap<PublicationId, PublicationState>,
    feeds: HashMap<InseeCode, FeedDocument>,
    /// The latest `occurred_at` of the events applied to each board.
    latest: HashMap<InseeCode, Timestamp>,
}

impl FeedProjection {
    /// Folds one event in; duplicates are ignored.
    ///
    /// # Errors
    /// `Gap` when an earlier version of the stream is missing; nothing changes.
    pub fn apply(&mut self, envelope: &Envelope<PublicationEvent>) -> Result<(), Gap> {
        let id = envelope.payload.publication_id();
        // The record moves into the step rather than being copied: past the
        // version check, a step without a record is the only one that can
        // fail (an event before the creation), so none is lost.
        let step = match precheck(self.records.get(&id), envelope.stream_version) {
            Some(early) => early,
            None => step_from(self.records.remove(&id), &envelope.payload),
        };
        match step {
            Step::Duplicate => Ok(()),
            Step::Gap { expected } => Err(Gap { expected }),
            Step::Apply { record, changes } => {
                for (commune, change) in changes {
                    self.feeds
                        .entry(commune)
                        .or_default()
                        .apply_owned(change, envelope.occurred_at);
                    let latest = self.latest.entry(commune).or_insert(envelope.occurred_at);
                    *latest = (*latest).max(envelope.occurred_at);
                }
                self.records.insert(id, *record);
                Ok(())
            }
        }
    }

    /// Drops from each board the entries that had expired when its latest
    /// event happened, as a projector applying the events in time order
    /// would have: after a fold that took the streams one after the other
    /// (each in its own order) rather than in time order, the boards are
    /// then the same.
    pub fn settle(&mut self) {
        for (commune, board) in &mut self.feeds {
            if let Some(latest) = self.latest.get(commune) {
                board
                    .entries
                    .retain(|e| e.view.visible_until.is_none_or(|until| until > *latest));
            }
        }
    }

    pub fn feed(&self, commune: &InseeCode) -> Option<&FeedDocument> {
        self.feeds.get(commune)
    }

    pub fn feeds(&self) -> impl Iterator<Item = (&InseeCode, &FeedDocument)> + '_ {
        self.feeds.iter()
    }

    pub fn record(&self, id: &PublicationId) -> Option<&PublicationState> {
        self.records.get(id)
    }

    pub fn records(&self) -> impl Iterator<Item = &PublicationState> + '_ {
        self.records.values()
    }

    /// Takes a publication's record out, once its stream has been folded
    /// whole (only the events of its own stream ever read it).
    pub fn take_record(&mut self, id: &PublicationId) -> Option<PublicationState> {
        self.records.remove(id)
    }

    /// The records left and every board, taking the projection apart.
    pub fn into_parts(
        self,
    ) -> (
        impl Iterator<Item = PublicationState>,
        impl Iterator<Item = (InseeCode, FeedDocument)>,
    ) {
        (self.records.into_values(), self.feeds.into_iter())
    }
}

/// An event arrived before an earlier version of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("waiting for version {expected} of the stream")]
pub struct Gap {
    pub expected: u64,
}

#[cfg(test)]
mod tests;
