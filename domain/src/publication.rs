//! The publication aggregate: a notice or alert on one or more communes' boards.
//!
//! `decide(state, command, now)` holds every rule and answers with the events to
//! record or the rule broken; `evolve(state, event)` folds an event into the state
//! and holds no rule, so replaying old events can never fail.
//!
//! Life cycle: absent → scheduled (optional) → live → retracted. Amendments change
//! the content of a scheduled or live publication; nothing changes a retracted one.

use serde::{Deserialize, Serialize};

use crate::publisher::{Issuer, PublisherId, Role, TokenId};
use crate::time::Timestamp;
use crate::values::{
    Attachments, Body, Category, CommuneSet, InseeCode, Priority, PublicationId, Title,
    VisibilityWindow,
};

/// What a publication says and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub communes: CommuneSet,
    pub title: Title,
    pub body: Body,
    pub category: Category,
    pub priority: Priority,
    pub window: VisibilityWindow,
    pub attachments: Attachments,
}

/// Where a publication is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Accepted, to go live at `publish_at`.
    Scheduled { publish_at: Timestamp },
    /// On the boards since `published_at` (for a scheduled one, its `publish_at`).
    Live { published_at: Timestamp },
    /// Taken off every board.
    Retracted {
        published_at: Timestamp,
        retracted_at: Timestamp,
    },
}

/// A publication as known from its events. The read side stores it too (as the
/// record a projector folds the next event into), hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationState {
    pub id: PublicationId,
    pub publisher: PublisherId,
    /// The token that created it: editors may only change what their token created.
    pub author: TokenId,
    pub content: Content,
    pub notify: bool,
    pub status: Status,
    pub updated_at: Option<Timestamp>,
    /// Number of events folded so far: the stream version.
    pub version: u64,
}

/// The aggregate's state: nothing yet, or a publication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Publication {
    #[default]
    Absent,
    Present(Box<PublicationState>),
}

impl Publication {
    pub fn version(&self) -> u64 {
        match self {
            Publication::Absent => 0,
            Publication::Present(state) => state.version,
        }
    }

    pub fn state(&self) -> Option<&PublicationState> {
        match self {
            Publication::Absent => None,
            Publication::Present(state) => Some(state),
        }
    }
}

/// A change to some fields of a publication. `None` leaves a field as it is; for
/// the optional window bounds, `Some(None)` removes the bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    pub communes: Option<CommuneSet>,
    pub title: Option<Title>,
    pub body: Option<Body>,
    pub category: Option<Category>,
    pub priority: Option<Priority>,
    pub visible_from: Option<Option<Timestamp>>,
    pub visible_until: Option<Option<Timestamp>>,
    pub attachments: Option<Attachments>,
    /// Only while scheduled: moves the moment it goes live.
    pub publish_at: Option<Timestamp>,
}

impl Amendment {
    pub fn is_empty(&self) -> bool {
        *self == Amendment::default()
    }

    /// The same amendment without the fields that would not change `current`.
    fn without_no_ops(mut self, current: &PublicationState) -> Self {
        let content = &current.content;
        if self.communes.as_ref() == Some(&content.communes) {
            self.communes = None;
        }
        if self.title.as_ref() == Some(&content.title) {
            self.title = None;
        }
        if self.body.as_ref() == Some(&content.body) {
            self.body = None;
        }
        if self.category == Some(content.category) {
            self.category = None;
        }
        if self.priority == Some(content.priority) {
            self.priority = None;
        }
        if self.visible_from == Some(content.window.from()) {
            self.visible_from = None;
        }
        if self.visible_until == Some(content.window.until()) {
            self.visible_until = None;
        }
        if self.attachments.as_ref() == Some(&content.attachments) {
            self.attachments = None;
        }
        if let Status::Scheduled { publish_at } = current.status
            && self.publish_at == Some(publish_at)
        {
            self.publish_at = None;
        }
        self
    }
}

/// What a publisher (or the scheduler) asks of a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Put a new publication on the boards now.
    Publish {
        id: PublicationId,
        issuer: Issuer,
        content: Content,
        notify: bool,
    },
    /// Accept a new publication that goes live at `publish_at`, in the future.
    Schedule {
        id: PublicationId,
        issuer: Issuer,
        content: Content,
        notify: bool,
        publish_at: Timestamp,
    },
    /// Put a scheduled publication live once its time has come (the scheduler's command).
    GoLive,
    /// Change some fields.
    Amend {
        issuer: Issuer,
        amendment: Amendment,
    },
    /// Take it off every board.
    Retract { issuer: Issuer },
}

/// A publication was put live at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationPublished {
    pub id: PublicationId,
    pub publisher: PublisherId,
    pub author: TokenId,
    pub content: Content,
    pub notify: bool,
    pub published_at: Timestamp,
}

/// A publication was accepted to go live at `publish_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationScheduled {
    pub id: PublicationId,
    pub publisher: PublisherId,
    pub author: TokenId,
    pub content: Content,
    pub notify: bool,
    pub publish_at: Timestamp,
    pub scheduled_at: Timestamp,
}

/// A scheduled publication went live (recorded by the scheduler at `at`, on or
/// after its `publish_at`). This is what the notifier waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationWentLive {
    pub id: PublicationId,
    pub at: Timestamp,
}

/// Some fields of a publication changed; only the changed fields are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationAmended {
    pub id: PublicationId,
    pub changes: Amendment,
    pub at: Timestamp,
}

/// A publication was taken off every board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationRetracted {
    pub id: PublicationId,
    pub at: Timestamp,
}

/// Everything that can happen to a publication. Each variant has a stable wire
/// name and version (see [`PublicationEvent::event_type`]); a new shape gets a new
/// version and an upcaster, never an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationEvent {
    Published(PublicationPublished),
    Scheduled(PublicationScheduled),
    WentLive(PublicationWentLive),
    Amended(PublicationAmended),
    Retracted(PublicationRetracted),
}

impl PublicationEvent {
    /// The stable wire name of the event.
    pub fn event_type(&self) -> &'static str {
        match self {
            PublicationEvent::Published(_) => "PublicationPublished",
            PublicationEvent::Scheduled(_) => "PublicationScheduled",
            PublicationEvent::WentLive(_) => "PublicationWentLive",
            PublicationEvent::Amended(_) => "PublicationAmended",
            PublicationEvent::Retracted(_) => "PublicationRetracted",
        }
    }

    /// The version of the wire form written today.
    pub fn schema_version(&self) -> u16 {
        1
    }

    pub fn publication_id(&self) -> PublicationId {
        match self {
            PublicationEvent::Published(e) => e.id,
            PublicationEvent::Scheduled(e) => e.id,
            PublicationEvent::WentLive(e) => e.id,
            PublicationEvent::Amended(e) => e.id,
            PublicationEvent::Retracted(e) => e.id,
        }
    }
}

/// A rule a command broke. Each variant says what the HTTP edge answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicationError {
    /// 404: there is no such publication.
    #[error("no such publication")]
    NotFound,
    /// 409: a publication with this id already exists.
    #[error("a publication with this id already exists")]
    AlreadyExists,
    /// 410: the publication was retracted and accepts no further change.
    #[error("the publication was retracted")]
    AlreadyRetracted,
    /// 403: some communes are outside the token's scope.
    #[error("outside your scope: {}", list(.communes))]
    OutOfScope { communes: Vec<InseeCode> },
    /// 403: the publication belongs to another publisher.
    #[error("the publication belongs to another publisher")]
    NotOwner,
    /// 403: an editor may only change what their own token published.
    #[error("an editor may only change publications made with their own token; ask an admin")]
    EditorMayOnlyChangeOwn,
    /// 422: `visible_until` is already past.
    #[error("visible_until is in the past")]
    VisibleUntilPassed,
    /// 422: `publish_at` must be in the future to schedule.
    #[error("publish_at must be in the future")]
    PublishAtNotInFuture,
    /// 422: the visibility window would end before it starts (or before `publish_at`).
    #[error("visible_until must be after visible_from and after publish_at")]
    WindowEndsBeforeStart,
    /// 422: the amendment would change nothing.
    #[error("the amendment changes nothing")]
    NothingToAmend,
    /// 409: `publish_at` can only move while the publication is scheduled.
    #[error("the publication is already live; publish_at can no longer change")]
    AlreadyLive,
    /// 409: a scheduled publication cannot go live before its `publish_at`.
    #[error("the publication is not due yet")]
    NotDue,
}

fn list(codes: &[InseeCode]) -> String {
    codes
        .iter()
        .map(InseeCode::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides which events a command produces, or which rule it breaks.
///
/// # Errors
/// The [`PublicationError`] naming the rule broken; nothing is recorded then.
pub fn decide(
    state: &Publication,
    command: Command,
    now: Timestamp,
) -> Result<Vec<PublicationEvent>, PublicationError> {
    match command {
        Command::Publish {
            id,
            issuer,
            content,
            notify,
        } => {
            ensure_absent(state)?;
            ensure_in_scope(&issuer, content.communes.iter())?;
            ensure_window_open(&content.window, now, now)?;
            Ok(vec![PublicationEvent::Published(PublicationPublished {
                id,
                publisher: issuer.publisher,
                author: issuer.token,
                content,
                notify,
                published_at: now,
            })])
        }
        Command::Schedule {
            id,
            issuer,
            content,
            notify,
            publish_at,
        } => {
            ensure_absent(state)?;
            ensure_in_scope(&issuer, content.communes.iter())?;
            if publish_at <= now {
                return Err(PublicationError::PublishAtNotInFuture);
            }
            ensure_window_open(&content.window, publish_at, now)?;
            Ok(vec![PublicationEvent::Scheduled(PublicationScheduled {
                id,
                publisher: issuer.publisher,
                author: issuer.token,
                content,
                notify,
                publish_at,
                scheduled_at: now,
            })])
        }
        Command::GoLive => {
            let current = present(state)?;
            match current.status {
                Status::Retracted { .. } => Err(PublicationError::AlreadyRetracted),
                Status::Live { .. } => Err(PublicationError::AlreadyLive),
                Status::Scheduled { publish_at } if publish_at > now => {
                    Err(PublicationError::NotDue)
                }
                Status::Scheduled { .. } => {
                    Ok(vec![PublicationEvent::WentLive(PublicationWentLive {
                        id: current.id,
                        at: now,
                    })])
                }
            }
        }
        Command::Amend { issuer, amendment } => {
            let current = present(state)?;
            ensure_not_retracted(current)?;
            ensure_may_change(current, &issuer)?;
            let changes = amendment.without_no_ops(current);
            if changes.is_empty() {
                return Err(PublicationError::NothingToAmend);
            }
            if let Some(communes) = &changes.communes {
                let touched = communes
                    .as_set()
                    .symmetric_difference(current.content.communes.as_set());
                ensure_in_scope(&issuer, touched)?;
            }
            let start = match (current.status, changes.publish_at) {
                (Status::Scheduled { .. }, Some(at)) if at <= now => {
                    return Err(PublicationError::PublishAtNotInFuture);
                }
                (Status::Scheduled { .. }, Some(at)) => at,
                (Status::Scheduled { publish_at }, None) => publish_at,
                (_, Some(_)) => return Err(PublicationError::AlreadyLive),
                (Status::Live { published_at } | Status::Retracted { published_at, .. }, None) => {
                    published_at
                }
            };
            let window = VisibilityWindow::new(
                changes
                    .visible_from
                    .unwrap_or_else(|| current.content.window.from()),
                changes
                    .visible_until
                    .unwrap_or_else(|| current.content.window.until()),
            )
            .map_err(|_| PublicationError::WindowEndsBeforeStart)?;
            if let Some(until) = window.until()
                && until <= window.from().map_or(start, |from| from.max(start))
            {
                return Err(PublicationError::WindowEndsBeforeStart);
            }
            if let Some(Some(until)) = changes.visible_until
                && until <= now
            {
                return Err(PublicationError::VisibleUntilPassed);
            }
            Ok(vec![PublicationEvent::Amended(PublicationAmended {
                id: current.id,
                changes,
                at: now,
            })])
        }
        Command::Retract { issuer } => {
            let current = present(state)?;
            ensure_not_retracted(current)?;
            ensure_may_change(current, &issuer)?;
            Ok(vec![PublicationEvent::Retracted(PublicationRetracted {
                id: current.id,
                at: now,
            })])
        }
    }
}

fn ensure_absent(state: &Publication) -> Result<(), PublicationError> {
    match state {
        Publication::Absent => Ok(()),
        Publication::Present(_) => Err(PublicationError::AlreadyExists),
    }
}

fn present(state: &Publication) -> Result<&PublicationState, PublicationError> {
    state.state().ok_or(PublicationError::NotFound)
}

fn ensure_not_retracted(current: &PublicationState) -> Result<(), PublicationError> {
    match current.status {
        Status::Retracted { .. } => Err(PublicationError::AlreadyRetracted),
        _ => Ok(()),
    }
}

fn ensure_may_change(current: &PublicationState, issuer: &Issuer) -> Result<(), PublicationError> {
    if current.publisher != issuer.publisher {
        return Err(PublicationError::NotOwner);
    }
    if issuer.role == Role::Editor && current.author != issuer.token {
        return Err(PublicationError::EditorMayOnlyChangeOwn);
    }
    Ok(())
}

fn ensure_in_scope<'a>(
    issuer: &Issuer,
    communes: impl Iterator<Item = &'a InseeCode>,
) -> Result<(), PublicationError> {
    let outside: Vec<InseeCode> = communes
        .filter(|c| !issuer.scope.contains(c))
        .copied()
        .collect();
    if outside.is_empty() {
        Ok(())
    } else {
        Err(PublicationError::OutOfScope { communes: outside })
    }
}

/// A new publication's window must end after it starts being shown (`start`, or
/// `visible_from` when later), and not already be over.
fn ensure_window_open(
    window: &VisibilityWindow,
    start: Timestamp,
    now: Timestamp,
) -> Result<(), PublicationError> {
    if let Some(until) = window.until() {
        if until <= now {
            return Err(PublicationError::VisibleUntilPassed);
        }
        if until <= window.from().map_or(start, |from| from.max(start)) {
            return Err(PublicationError::WindowEndsBeforeStart);
        }
    }
    Ok(())
}

/// Folds one event into the state. Total and rule-free: every recorded event is
/// accepted, whatever the state, so old logs always replay.
pub fn evolve(state: Publication, event: &PublicationEvent) -> Publication {
    match (state, event) {
        (_, PublicationEvent::Published(e)) => Publication::Present(Box::new(PublicationState {
            id: e.id,
            publisher: e.publisher,
            author: e.author,
            content: e.content.clone(),
            notify: e.notify,
            status: Status::Live {
                published_at: e.published_at,
            },
            updated_at: None,
            version: 1,
        })),
        (_, PublicationEvent::Scheduled(e)) => Publication::Present(Box::new(PublicationState {
            id: e.id,
            publisher: e.publisher,
            author: e.author,
            content: e.content.clone(),
            notify: e.notify,
            status: Status::Scheduled {
                publish_at: e.publish_at,
            },
            updated_at: None,
            version: 1,
        })),
        (Publication::Absent, _) => Publication::Absent,
        (Publication::Present(mut current), PublicationEvent::WentLive(_)) => {
            if let Status::Scheduled { publish_at } = current.status {
                current.status = Status::Live {
                    published_at: publish_at,
                };
            }
            current.version += 1;
            Publication::Present(current)
        }
        (Publication::Present(mut current), PublicationEvent::Amended(e)) => {
            apply_amendment(&mut current, &e.changes);
            current.updated_at = Some(e.at);
            current.version += 1;
            Publication::Present(current)
        }
        (Publication::Present(mut current), PublicationEvent::Retracted(e)) => {
            let published_at = match current.status {
                Status::Scheduled { publish_at } => publish_at,
                Status::Live { published_at } | Status::Retracted { published_at, .. } => {
                    published_at
                }
            };
            current.status = Status::Retracted {
                published_at,
                retracted_at: e.at,
            };
            current.version += 1;
            Publication::Present(current)
        }
    }
}

/// Applies the changed fields. Shared with the projections, which keep their own
/// copy of each publication.
pub fn apply_amendment(current: &mut PublicationState, changes: &Amendment) {
    let content = &mut current.content;
    if let Some(communes) = &changes.communes {
        content.communes = communes.clone();
    }
    if let Some(title) = &changes.title {
        content.title = title.clone();
    }
    if let Some(body) = &changes.body {
        content.body = body.clone();
    }
    if let Some(category) = changes.category {
        content.category = category;
    }
    if let Some(priority) = changes.priority {
        content.priority = priority;
    }
    let from = changes
        .visible_from
        .unwrap_or_else(|| content.window.from());
    let until = changes
        .visible_until
        .unwrap_or_else(|| content.window.until());
    // `decide` only records windows that are valid; should a log ever hold one that
    // is not, keep the previous window rather than refuse to replay.
    if let Ok(window) = VisibilityWindow::new(from, until) {
        content.window = window;
    }
    if let Some(attachments) = &changes.attachments {
        content.attachments = attachments.clone();
    }
    if let (Status::Scheduled { .. }, Some(at)) = (current.status, changes.publish_at) {
        current.status = Status::Scheduled { publish_at: at };
    }
}

#[cfg(test)]
mod tests;
