//! Feed pages rendered to the JSON bytes the apps read.

use panneau_domain::Timestamp;
use serde::Serialize;

use crate::communes::CommuneView;
use crate::feed::{FeedDocument, PublicationView, SortKey};

/// Publications per page.
pub const PAGE_SIZE: usize = 20;

#[derive(Serialize)]
struct FeedPage<'a> {
    commune: &'a CommuneView,
    publications: Vec<&'a PublicationView>,
    next: Option<String>,
}

/// Documentation shape of a feed page (what [`render_page`] writes).
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Feed)]
#[allow(dead_code)]
pub struct FeedPageView {
    commune: CommuneView,
    publications: Vec<PublicationView>,
    /// Pass as `?cursor=` to get older publications; `null` on the last page.
    next: Option<String>,
}

/// A rendered page and how long it stays right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPage {
    pub json: Vec<u8>,
    /// When the set of visible publications next changes by time alone (a
    /// `visible_from` or `visible_until` passing); the page must not be served
    /// from a cache after that.
    pub next_change: Option<Timestamp>,
}

/// Renders the page of `doc` visible at `now` that follows `after` (the first
/// page when `None`).
pub fn render_page(
    commune: &CommuneView,
    doc: &FeedDocument,
    now: Timestamp,
    after: Option<SortKey>,
    page_size: usize,
) -> RenderedPage {
    let mut visible = doc.visible_after(now, after);
    let page: Vec<_> = visible.by_ref().take(page_size).collect();
    let next = match (page.last(), visible.next()) {
        (Some(last), Some(_)) => Some(last.sort_key().to_cursor()),
        _ => None,
    };
    let json = serde_json::to_vec(&FeedPage {
        commune,
        publications: page.iter().map(|e| &e.view).collect(),
        next,
    })
    .expect("a feed page always serialises");
    RenderedPage {
        json,
        next_change: doc.next_change_after(now),
    }
}
