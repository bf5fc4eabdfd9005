//! Panneau's read models as pure folds of events, and their rendering.
//!
//! No I/O here: projectors in the binary feed events in and store what comes
//! out. Because every function is a plain fold, the same code serves the live
//! projectors, `panneau replay`, and the property tests that prove a read model
//! depends only on the set of events.

pub mod communes;
pub mod feed;
pub mod render;
pub mod stats;

pub use communes::{CommuneView, Communes};
pub use feed::{
    FeedChange, FeedDocument, FeedEntry, FeedProjection, PendingPublication, PublicationView,
    SortKey, Step, step,
};
pub use render::{PAGE_SIZE, RenderedPage, page_board, render_known_page, render_page};
pub use stats::{PublisherStats, StatsProjection, StatsStep, StatsSummary};
