//! The public API the mobile apps read: communes, feeds, publications, view beacons.
//! Everything here is served from memory; nothing touches the write side.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use panneau_domain::{InseeCode, PublicationId};
use panneau_projections::{CommuneView, SortKey};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ProblemBody};
use super::extract::{ApiPath, ApiQuery};
use crate::readmodel::cache::{PublicationLookup, Rendered};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/communes", get(search_communes))
        .route("/v1/communes/{code}", get(get_commune))
        .route(super::fast::FEED_ROUTE, get(get_feed))
        .route(
            "/v1/publications/{id}",
            get(get_publication)
                .patch(super::publisher::amend)
                .delete(super::publisher::retract),
        )
        .route("/v1/publications/{id}/views", post(count_view))
}

/// Search query: `q` and `limit` are parsed by hand for precise errors.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A name prefix ("st etienne", "saint-étienne"), a postal-code prefix ("3500")
    /// or an INSEE code ("42218").
    #[param(min_length = 1, max_length = 100, example = "st etienne")]
    q: Option<String>,
    /// At most this many communes (1–50, default 20).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommuneList {
    communes: Vec<CommuneView>,
}

const SEARCH_DEFAULT_LIMIT: usize = 20;
const SEARCH_MAX_LIMIT: usize = 50;

/// Find communes by name, postal code or INSEE code.
#[utoipa::path(
    get, path = "/v1/communes", tag = "public", params(SearchQuery),
    responses(
        (status = 200, description = "Matching communes, best first", body = CommuneList),
        (status = 400, description = "Missing or invalid q or limit", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn search_communes(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Response, ApiError> {
    let q = query.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::invalid_field(
            "q",
            "give a commune name, postal code or INSEE code",
        ));
    }
    if q.chars().count() > 100 {
        return Err(ApiError::invalid_field("q", "at most 100 characters"));
    }
    let limit = match query.limit {
        None => SEARCH_DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=SEARCH_MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::invalid_field("limit", "a whole number from 1 to 50"))?,
    };
    let communes = app
        .communes
        .search(&q, limit)
        .into_iter()
        .cloned()
        .collect();
    Ok(json_response(
        &CommuneList { communes },
        "public, max-age=3600",
    ))
}

/// Parses a commune code from a path and checks the commune exists.
///
/// # Errors
/// 400 when malformed, 404 when no current commune has that code.
pub fn known_commune(app: &AppState, code: &str) -> Result<InseeCode, ApiError> {
    let code =
        InseeCode::parse(code).map_err(|e| ApiError::invalid_field("code", e.to_string()))?;
    if app.communes.get(&code).is_none() {
        return Err(ApiError::not_found(format!(
            "no current commune has the INSEE code {code}"
        )));
    }
    Ok(code)
}

/// One commune.
#[utoipa::path(
    get, path = "/v1/communes/{code}", tag = "public",
    params(("code" = String, Path, pattern = "^([0-9]{5}|2[AB][0-9]{3})$", description = "INSEE code", example = "35238")),
    responses(
        (status = 200, description = "The commune", body = CommuneView),
        (status = 400, description = "Malformed code", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such commune", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_commune(
    State(app): State<AppState>,
    ApiPath(code): ApiPath<String>,
) -> Result<Response, ApiError> {
    let code = known_commune(&app, &code)?;
    let commune = app.communes.get(&code).expect("checked above");
    Ok(json_response(commune, "public, max-age=86400"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `next` value of the previous page.
    cursor: Option<String>,
}

/// A commune's feed: urgent alerts first, then newest first, visible now.
#[utoipa::path(
    get, path = "/v1/communes/{code}/feed", tag = "public",
    params(("code" = String, Path, pattern = "^([0-9]{5}|2[AB][0-9]{3})$", description = "INSEE code", example = "35238"), FeedQuery),
    responses(
        (status = 200, description = "The feed (compressed when asked)", body = panneau_projections::render::FeedPageView,
            headers(("ETag" = String), ("Cache-Control" = String), ("Vary" = String))),
        (status = 304, description = "Not modified since the ETag given in If-None-Match"),
        (status = 400, description = "Malformed code or cursor", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such commune", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The feed is not cached and the feed store is unreachable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_feed(
    State(app): State<AppState>,
    ApiPath(code): ApiPath<String>,
    ApiQuery(query): ApiQuery<FeedQuery>,
    // The request itself, not a copy of its headers (a `HeaderMap` extractor
    // clones them all, on the hottest path of the service).
    request: Request,
) -> Result<Response, ApiError> {
    let code = known_commune(&app, &code)?;
    if let Some(cursor) = query.cursor {
        let key = SortKey::from_cursor(&cursor)
            .ok_or_else(|| ApiError::invalid_field("cursor", "not a cursor given by this API"))?;
        let json = app.cache.feed_page(code, key).await?;
        let policy = &app.cache_policy;
        let cache_control = format!("public, max-age={}", policy.max_age);
        let mut response = (StatusCode::OK, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&cache_control).expect("ASCII header"),
        );
        return Ok(response);
    }
    let rendered = app.cache.feed(code).await?;
    Ok(serve(&rendered, request.headers(), &app))
}

/// A publication.
#[utoipa::path(
    get, path = "/v1/publications/{id}", tag = "public",
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "Publication id (UUIDv7)")),
    responses(
        (status = 200, description = "The publication", body = panneau_projections::PublicationView,
            headers(("ETag" = String), ("Cache-Control" = String), ("Vary" = String))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such publication (or not shown yet)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "Retracted", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not cached and the feed store is unreachable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_publication(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_publication_id(&id)?;
    match app.cache.publication(id).await?.as_ref() {
        PublicationLookup::Visible(rendered) => Ok(serve(rendered, request.headers(), &app)),
        PublicationLookup::Retracted { .. } => {
            Err(ApiError::gone("this publication was retracted"))
        }
        PublicationLookup::NotFound { .. } => Err(ApiError::not_found("no such publication")),
    }
}

/// # Errors
/// 400 unless the text is a UUIDv7.
pub fn parse_publication_id(text: &str) -> Result<PublicationId, ApiError> {
    PublicationId::parse(text).map_err(|e| ApiError::invalid_field("id", e.to_string()))
}

/// Count a view ("read for more than 3 s").
#[utoipa::path(
    post, path = "/v1/publications/{id}/views", tag = "public",
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "Publication id (UUIDv7)")),
    responses(
        (status = 202, description = "Counted (eventually)"),
        (status = 400, description = "Malformed id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such publication", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "Retracted", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many beacons from this client", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
        (status = 503, description = "Not cached and the feed store is unreachable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn count_view(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    parts: Parts,
) -> Result<StatusCode, ApiError> {
    let id = parse_publication_id(&id)?;
    if !app.views.allow(app.client_ip(&parts)) {
        return Err(ApiError::too_many_requests(super::views::WINDOW.as_secs()));
    }
    match app.cache.publication(id).await?.as_ref() {
        PublicationLookup::Visible(_) => {
            app.views.count(id);
            Ok(StatusCode::ACCEPTED)
        }
        PublicationLookup::Retracted { .. } => {
            Err(ApiError::gone("this publication was retracted"))
        }
        PublicationLookup::NotFound { .. } => Err(ApiError::not_found("no such publication")),
    }
}

fn json_response<T: Serialize>(value: &T, cache_control: &'static str) -> Response {
    let body = serde_json::to_vec(value).expect("responses serialise");
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

/// Picks brotli, gzip or identity from `Accept-Encoding` (q-values honoured).
fn negotiate(headers: &HeaderMap) -> Encoding {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Encoding::Identity;
    };
    let (mut br, mut gzip, mut any) = (None, None, None);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "br" => br = Some(q),
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    let br = br.or(any).unwrap_or(0.0);
    let gzip = gzip.or(any).unwrap_or(0.0);
    if br > 0.0 && br >= gzip {
        Encoding::Brotli
    } else if gzip > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

/// Whether `If-None-Match` names the current representation (any encoding of it).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').any(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
        let base = tag
            .strip_suffix("-gzip")
            .or_else(|| tag.strip_suffix("-br"))
            .unwrap_or(tag);
        base == etag
    })
}

/// Answers from a rendered body: 304 when the client has it, else the body in
/// the best encoding the client accepts, with its validators and caching rules.
pub(crate) fn serve(rendered: &Rendered, request: &HeaderMap, app: &AppState) -> Response {
    let encoding = negotiate(request);
    let (body, etag, content_encoding): (&Bytes, &HeaderValue, Option<&'static str>) =
        match encoding {
            Encoding::Identity => (&rendered.identity, &rendered.etag_headers[0], None),
            Encoding::Gzip => (&rendered.gzip, &rendered.etag_headers[1], Some("gzip")),
            Encoding::Brotli => (&rendered.brotli, &rendered.etag_headers[2], Some("br")),
        };
    let policy = &app.cache_policy;
    let cache_control = policy.cache_control(rendered.max_age(policy.max_age));
    let unchanged = not_modified(request, &rendered.etag);
    let mut response = if unchanged {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::from(body.clone()))
    };
    let headers = response.headers_mut();
    // Room for every header of the answer, those added after this function
    // included (Content-Length, X-Request-Id): one allocation, where growing
    // from the default size cost a second one and a rehash per request.
    headers.reserve(8);
    if !unchanged {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(coding) = content_encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
    }
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, cache_control);
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn content_negotiation_prefers_brotli_then_gzip_and_honours_q_values() {
        assert_eq!(negotiate(&HeaderMap::new()), Encoding::Identity);
        assert_eq!(negotiate(&accept("gzip, deflate, br")), Encoding::Brotli);
        assert_eq!(negotiate(&accept("gzip")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("br;q=0, gzip")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("br;q=0.5, gzip;q=0.8")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("identity")), Encoding::Identity);
        assert_eq!(negotiate(&accept("*")), Encoding::Brotli);
        assert_eq!(negotiate(&accept("*;q=0")), Encoding::Identity);
    }

    #[test]
    fn if_none_match_accepts_any_encoding_of_the_same_content() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"abc-gzip\""),
        );
        assert!(not_modified(&h, "abc"));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"abc\", \"zzz\""),
        );
        assert!(not_modified(&h, "abc"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abd\""));
        assert!(!not_modified(&h, "abc"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "abc"));
    }
}
