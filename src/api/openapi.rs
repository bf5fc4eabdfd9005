//! The OpenAPI document, generated from the handlers' annotations and served at
//! `/openapi.json`, so that it cannot drift from the code.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Panneau",
        description = "Notices and alerts from town halls, prefectures and other publishers, \
                       for the communes residents follow. Errors are RFC 9457 problem+json.",
        license(name = "AGPL-3.0-or-later")
    ),
    paths(
        super::public::search_communes,
        super::public::get_commune,
        super::public::get_feed,
        super::public::get_publication,
        super::public::count_view,
        super::publisher::publish,
        super::publisher::amend,
        super::publisher::retract,
        super::publisher::history,
        super::publisher::own_publications,
        super::publisher::own_stats,
        super::devices::register,
        super::devices::set_communes,
        super::devices::set_token,
        super::devices::remove,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "public", description = "Anonymous reads for the mobile apps"),
        (name = "publisher", description = "Publishing, with a publisher's bearer token"),
        (name = "devices", description = "Push notification registrations of the apps"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, serialised once.
static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    Bytes::from(
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises"),
    )
});

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

async fn document() -> Response {
    let mut response = DOCUMENT.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
