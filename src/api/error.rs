//! The one error type of the HTTP edge, rendered as RFC 9457 problem+json.
//!
//! 4xx bodies say precisely what is wrong; 5xx bodies reveal nothing. The cause of
//! a 5xx travels in the response extensions to the logging middleware, which
//! logs it once with the request id.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use panneau_domain::PublicationError;
use serde::Serialize;

use crate::commands::CommandError;
use crate::readmodel::ReadModelError;
use crate::store::StoreError;

/// Seconds a client should wait before retrying after a dependency failure.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where in the request: `title`, `communes[2]`, `attachments[0].url`, or a
    /// header or query parameter name.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// A URI naming the kind of problem, e.g. `urn:panneau:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The cause of a server error, for the log (never for the client).
#[derive(Clone)]
pub struct ErrorCause(pub Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Debug for ErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", error_chain(self.0.as_ref()))
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An answer other than success (boxed: errors are rare, results stay small).
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

#[derive(Debug)]
struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    retry_after: Option<u64>,
    www_authenticate: Option<&'static str>,
    cause: Option<ErrorCause>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            www_authenticate: None,
            cause: None,
        }))
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// 400: the request cannot be read (malformed JSON, bad query, bad header).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 400 with the fields at fault.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid request",
            detail,
        );
        error.0.errors = errors;
        error
    }

    /// 400 for one field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn unauthorized(scheme: &'static str, detail: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        );
        error.0.www_authenticate = Some(scheme);
        error
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this resource does not support that method",
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn gone(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", "Gone", detail)
    }

    pub fn precondition_failed(current: u64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "version-mismatch",
            "Precondition failed",
            format!(
                "the publication is at version {current}; read it again and retry with If-Match: \"{current}\""
            ),
        )
    }

    pub fn precondition_required() -> Self {
        Self::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if-match-required",
            "Precondition required",
            "send If-Match with the version you are changing, e.g. If-Match: \"1\"",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("request bodies are limited to {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("send the body as {expected}"),
        )
    }

    pub fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "Unprocessable request",
            detail,
        )
    }

    pub fn unprocessable_fields(slug: &'static str, errors: Vec<FieldError>) -> Self {
        let mut error = Self::invalid(errors);
        error.0.status = StatusCode::UNPROCESSABLE_ENTITY;
        error.0.slug = slug;
        error.0.title = "Unprocessable request";
        error
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("slow down; retry in {retry_after} s"),
        );
        error.0.retry_after = Some(retry_after);
        error
    }

    /// 503: a dependency failed; nothing was acknowledged, retrying is safe.
    pub fn unavailable(what: &str, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            format!("{what} is unavailable; nothing was changed, retry later"),
        );
        error.0.retry_after = Some(RETRY_AFTER_SECONDS);
        error.0.cause = Some(ErrorCause(Arc::new(cause)));
        error
    }

    /// 500: a bug. The body says nothing of it; the log says everything.
    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "something went wrong on our side; it has been logged, quote the X-Request-Id if you report it",
        );
        error.0.cause = Some(ErrorCause(Arc::new(cause)));
        error
    }

    pub fn body(&self) -> ProblemBody {
        let problem = &self.0;
        ProblemBody {
            kind: format!("urn:panneau:problem:{}", problem.slug),
            title: problem.title.to_owned(),
            status: problem.status.as_u16(),
            detail: problem.detail.clone(),
            errors: problem.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("a problem serialises");
        let problem = *self.0;
        let mut response = (problem.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = problem.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(scheme) = problem.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        if let Some(cause) = problem.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => ApiError::unavailable("the database", error),
            StoreError::VersionConflict => {
                ApiError::conflict("the publication was changed concurrently; retry")
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ReadModelError> for ApiError {
    fn from(error: ReadModelError) -> Self {
        match error {
            ReadModelError::Unavailable(_) | ReadModelError::Conflict => {
                ApiError::unavailable("the feed store", error)
            }
            ReadModelError::Corrupt(_) => ApiError::internal(error),
        }
    }
}

impl From<PublicationError> for ApiError {
    fn from(error: PublicationError) -> Self {
        use PublicationError as E;
        let detail = error.to_string();
        match error {
            E::NotFound => ApiError::not_found(detail),
            E::AlreadyExists | E::AlreadyLive | E::NotDue => ApiError::conflict(detail),
            E::AlreadyRetracted => ApiError::gone(detail),
            E::OutOfScope { .. } | E::NotOwner | E::EditorMayOnlyChangeOwn => {
                ApiError::forbidden(detail)
            }
            E::VisibleUntilPassed => field_rule("visible_until", detail),
            E::PublishAtNotInFuture => field_rule("publish_at", detail),
            E::WindowEndsBeforeStart => field_rule("visible_until", detail),
            E::NothingToAmend => ApiError::unprocessable("nothing-to-amend", detail),
        }
    }
}

fn field_rule(field: &str, message: String) -> ApiError {
    ApiError::unprocessable_fields(
        "rule-broken",
        vec![FieldError {
            field: field.to_owned(),
            message,
        }],
    )
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Refused(e) => e.into(),
            CommandError::VersionMismatch { current } => ApiError::precondition_failed(current),
            CommandError::Store(e) => e.into(),
        }
    }
}
