//! Feed pages rendered to the JSON bytes the apps read.

use panneau_domain::Timestamp;
use serde::{Deserialize, Serialize};

use crate::communes::CommuneView;
use crate::feed::{FeedDocument, FeedEntry, PublicationView, SortKey};

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

/// What [`page_board`] reads back from a rendered page.
#[derive(Deserialize)]
struct RenderedFeedPage {
    publications: Vec<PublicationView>,
    next: Option<String>,
}

/// The board a rendered first page shows, read back from its JSON, and its
/// horizon: the position of its last entry when the board it was rendered
/// from held more (`None` when the page showed the whole board). Nothing is
/// known of the board past the horizon.
///
/// # Errors
/// When `json` is not a page [`render_page`] wrote.
pub fn page_board(json: &[u8]) -> Result<(FeedDocument, Option<SortKey>), serde_json::Error> {
    let page: RenderedFeedPage = serde_json::from_slice(json)?;
    let horizon = page.next.as_deref().and_then(SortKey::from_cursor);
    let entries = page
        .publications
        .into_iter()
        .map(|view| FeedEntry {
            // It was visible when rendered, which is all a board needs of it.
            shown_from: view.published_at,
            view,
        })
        .collect();
    Ok((FeedDocument::from_sorted(entries), horizon))
}

/// [`render_page`] for a board known only down to `horizon` (see
/// [`page_board`]): entries past the horizon are left out, since the board's
/// own entries there are not known, and the page links on from its last entry
/// (the board goes on). `None` when no known entry follows `after`; the first
/// page is always rendered, empty if need be, linking on from the horizon.
pub fn render_known_page(
    commune: &CommuneView,
    doc: &FeedDocument,
    now: Timestamp,
    after: Option<SortKey>,
    page_size: usize,
    horizon: Option<SortKey>,
) -> Option<RenderedPage> {
    let Some(horizon) = horizon else {
        return Some(render_page(commune, doc, now, after, page_size));
    };
    let page: Vec<_> = doc
        .visible_after(now, after)
        .take_while(|e| e.sort_key() <= horizon)
        .take(page_size)
        .collect();
    let next = match page.last() {
        Some(last) => last.sort_key(),
        None if after.is_none() => horizon,
        None => return None,
    };
    let json = serde_json::to_vec(&FeedPage {
        commune,
        publications: page.iter().map(|e| &e.view).collect(),
        next: Some(next.to_cursor()),
    })
    .expect("a feed page always serialises");
    Some(RenderedPage {
        json,
        next_change: doc.next_change_after(now),
    })
}
