//! The publisher API: town halls, prefectures and other publishers publish,
//! amend and retract, within the scope of their token, and read their audit trail.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use panneau_domain::{
    Actor, Amendment, Attachments, Body, Category, Command, CommuneSet, Content, Issuer, Priority,
    PublicationError, PublicationEvent, PublicationId, PublicationState, Status, StreamId,
    Timestamp, Title, VisibilityWindow,
};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{ApiError, FieldError, ProblemBody};
use super::extract::{ApiJson, ApiPath, if_match};
use super::public::parse_publication_id;
use super::{AppState, request_id_of};
use crate::commands::{CommandError, Context};
use crate::store::{IdempotencyRecord, Refusal, StoreError, TokenRecord};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/publications", post(publish))
        .route("/v1/publications/{id}/history", get(history))
        .route("/v1/publisher/publications", get(own_publications))
        .route("/v1/publisher/stats", get(own_stats))
}

/// An authenticated publisher token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token: TokenRecord,
    pub request_id: Option<panneau_domain::RequestId>,
}

impl Authenticated {
    pub fn issuer(&self) -> Issuer {
        Issuer {
            publisher: self.token.publisher,
            token: self.token.id,
            role: self.token.role,
            scope: self.token.scope.clone(),
        }
    }

    fn context(&self) -> Context {
        Context {
            actor: Actor::Publisher {
                publisher: self.token.publisher,
                token: self.token.id,
            },
            request_id: self.request_id.clone(),
            now: crate::now(),
        }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = |detail: &str| ApiError::unauthorized("Bearer", detail);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("send Authorization: Bearer TOKEN"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| unauthorized("expected Authorization: Bearer TOKEN"))?;
        let hash = app.token_hasher.hash(token);
        let record = match app.tokens.get(&hash).await {
            Some(record) => record,
            None => {
                let record = app
                    .state
                    .token_by_hash(&hash)
                    .await?
                    .filter(|t| t.revoked_at.is_none())
                    .ok_or_else(|| unauthorized("unknown or revoked token"))?;
                app.tokens.insert(hash, record.clone()).await;
                record
            }
        };
        Ok(Authenticated {
            token: record,
            request_id: request_id_of(&parts.extensions),
        })
    }
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn normal() -> Priority {
    Priority::Normal
}

fn yes() -> bool {
    true
}

/// Documentation shape of the category enumeration.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Category)]
#[allow(dead_code, non_camel_case_types)]
pub enum CategoryDoc {
    info,
    alert,
    event,
    roadworks,
    school,
    health,
    weather,
}

/// Documentation shape of an INSEE commune code.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = InseeCode, value_type = String, pattern = "^([0-9]{5}|2[AB][0-9]{3})$", example = "35238")]
#[allow(dead_code)]
pub struct InseeCodeDoc(String);

/// Documentation shape of the priority enumeration.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Priority)]
#[allow(dead_code, non_camel_case_types)]
pub enum PriorityDoc {
    normal,
    urgent,
}

/// A new publication.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// INSEE codes of the communes it is for (up to a whole department).
    #[schema(value_type = Vec<InseeCodeDoc>, min_items = 1, max_items = 1000, example = json!(["35238", "35047"]))]
    communes: CommuneSet,
    #[schema(value_type = String, min_length = 1, max_length = 140, example = "Coupure d'eau rue des Lilas")]
    title: Title,
    #[schema(value_type = String, min_length = 1, max_length = 8000, example = "Travaux sur le réseau mardi de 8 h à 12 h.")]
    body: Body,
    #[schema(value_type = CategoryDoc)]
    category: Category,
    #[serde(default = "normal")]
    #[schema(value_type = PriorityDoc)]
    priority: Priority,
    #[schema(value_type = Option<String>, format = DateTime)]
    visible_from: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    visible_until: Option<Timestamp>,
    /// In the future: scheduled, and notified when it goes live.
    #[schema(value_type = Option<String>, format = DateTime)]
    publish_at: Option<Timestamp>,
    /// Send push notifications (default true).
    #[serde(default = "yes")]
    notify: bool,
    #[schema(value_type = Option<Vec<panneau_projections::feed::AttachmentView>>, max_items = 10)]
    attachments: Option<Attachments>,
}

/// A change to some fields; `null` removes `visible_from` or `visible_until`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<InseeCodeDoc>>, min_items = 1, max_items = 1000)]
    communes: Option<CommuneSet>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 140)]
    title: Option<Title>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 8000)]
    body: Option<Body>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CategoryDoc>)]
    category: Option<Category>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PriorityDoc>)]
    priority: Option<Priority>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime, nullable)]
    visible_from: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime, nullable)]
    visible_until: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<panneau_projections::feed::AttachmentView>>, max_items = 10)]
    attachments: Option<Attachments>,
    /// Only while scheduled.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    publish_at: Option<Timestamp>,
}

/// The id and version of a publication after a command.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    #[schema(value_type = String, format = Uuid)]
    pub id: PublicationId,
    pub version: u64,
}

/// 422 for codes that are well formed but name no current commune.
fn check_communes_exist(app: &AppState, communes: &CommuneSet) -> Result<(), ApiError> {
    let unknown: Vec<FieldError> = communes
        .iter()
        .filter(|c| app.communes.get(c).is_none())
        .map(|c| FieldError {
            field: "communes".into(),
            message: format!("no current commune has the INSEE code {c}"),
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable_fields("unknown-commune", unknown))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(|v| Some(v.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid_field("Idempotency-Key", "1 to 255 visible ASCII characters")
        })
}

fn created(id: PublicationId, version: u64, body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/publications/{id}")).expect("ASCII id"),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits"),
    );
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The stored answer to an earlier request with the same key, or 422 when that
/// request had another body.
fn replay(existing: &IdempotencyRecord, request_hash: &[u8; 32]) -> Result<Response, ApiError> {
    if existing.request_hash != *request_hash {
        return Err(ApiError::unprocessable(
            "idempotency-key-reused",
            "this Idempotency-Key was already used with another body; use a new key for a new publication",
        ));
    }
    let accepted: Accepted = serde_json::from_slice(&existing.response)
        .map_err(|e| ApiError::internal(StoreError::Database(sqlx::Error::Decode(Box::new(e)))))?;
    Ok(created(
        accepted.id,
        accepted.version,
        existing.response.clone(),
        true,
    ))
}

/// Records a refusal for lack of rights in the audit trail, then answers 403.
async fn refuse(
    app: &AppState,
    auth: &Authenticated,
    action: &'static str,
    publication: Option<PublicationId>,
    error: ApiError,
    reason: String,
) -> ApiError {
    let refusal = Refusal {
        at: crate::now(),
        publisher: auth.token.publisher,
        token: auth.token.id,
        request_id: auth.request_id.clone(),
        action,
        publication,
        reason,
    };
    if let Err(e) = app.state.record_refusal(&refusal).await {
        tracing::error!(error = %e, action, "cannot record a refusal in the audit trail");
    }
    error
}

/// Maps a command error, recording refusals for lack of rights.
async fn command_error(
    app: &AppState,
    auth: &Authenticated,
    action: &'static str,
    publication: Option<PublicationId>,
    error: CommandError,
) -> ApiError {
    match error {
        CommandError::Refused(
            e @ (PublicationError::OutOfScope { .. }
            | PublicationError::NotOwner
            | PublicationError::EditorMayOnlyChangeOwn),
        ) => {
            let reason = e.to_string();
            refuse(app, auth, action, publication, e.into(), reason).await
        }
        other => other.into(),
    }
}

/// Publish (or schedule) a publication.
#[utoipa::path(
    post, path = "/v1/publications", tag = "publisher", request_body = PublishRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body get the same answer")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Published or scheduled", body = Accepted, headers(("Location" = String), ("ETag" = String))),
        (status = 400, description = "Invalid body or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Outside the token's scope (recorded)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown commune, a rule broken, or the key reused with another body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; nothing was published", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn publish(
    State(app): State<AppState>,
    auth: Authenticated,
    headers: HeaderMap,
    ApiJson {
        value: request,
        canonical,
    }: ApiJson<PublishRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let window = VisibilityWindow::new(request.visible_from, request.visible_until)
        .map_err(|e| ApiError::invalid_field("visible_until", e.to_string()))?;
    check_communes_exist(&app, &request.communes)?;
    let request_hash: [u8; 32] = Sha256::digest(canonical.to_string().as_bytes()).into();
    if let Some(key) = &key
        && let Some(existing) = app.log.idempotency(auth.token.publisher, key).await?
    {
        return replay(&existing, &request_hash);
    }
    let context = auth.context();
    let id = PublicationId::new(Uuid::now_v7()).expect("now_v7 makes a v7 UUID");
    let content = Content {
        communes: request.communes,
        title: request.title,
        body: request.body,
        category: request.category,
        priority: request.priority,
        window,
        attachments: request.attachments.unwrap_or_default(),
    };
    let issuer = auth.issuer();
    let command = match request.publish_at {
        Some(publish_at) if publish_at > context.now => Command::Schedule {
            id,
            issuer,
            content,
            notify: request.notify,
            publish_at,
        },
        _ => Command::Publish {
            id,
            issuer,
            content,
            notify: request.notify,
        },
    };
    let response = serde_json::to_vec(&Accepted { id, version: 1 }).expect("serialises");
    let idempotency = key.map(|key| IdempotencyRecord {
        publisher: auth.token.publisher,
        key,
        request_hash,
        stream: StreamId::publication(id),
        status: StatusCode::CREATED.as_u16(),
        response: response.clone(),
        created_at: context.now,
    });
    match app
        .commands
        .execute(
            id,
            command,
            None,
            &context,
            Some(auth.token.publisher),
            idempotency,
        )
        .await
    {
        Ok(accepted) => Ok(created(id, accepted.version, response, false)),
        Err(CommandError::Store(StoreError::IdempotencyKeyUsed(existing))) => {
            replay(&existing, &request_hash)
        }
        Err(error) => Err(command_error(&app, &auth, "publish", Some(id), error).await),
    }
}

/// Change some fields of a publication.
#[utoipa::path(
    patch, path = "/v1/publications/{id}", tag = "publisher", request_body = AmendRequest,
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "Publication id (UUIDv7)"), ("If-Match" = String, Header, description = "The version being changed, e.g. \"1\"")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Amended", body = Accepted, headers(("ETag" = String))),
        (status = 400, description = "Invalid body, id or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not yours, or outside the scope (recorded)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such publication", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "publish_at can no longer move", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "Retracted", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown commune, a rule broken, or nothing changes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; nothing was changed", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn amend(
    State(app): State<AppState>,
    auth: Authenticated,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson { value: request, .. }: ApiJson<AmendRequest>,
) -> Result<Response, ApiError> {
    let id = parse_publication_id(&id)?;
    let expected = if_match(&headers)?.ok_or_else(ApiError::precondition_required)?;
    if let Some(communes) = &request.communes {
        check_communes_exist(&app, communes)?;
    }
    let amendment = Amendment {
        communes: request.communes,
        title: request.title,
        body: request.body,
        category: request.category,
        priority: request.priority,
        visible_from: request.visible_from,
        visible_until: request.visible_until,
        attachments: request.attachments,
        publish_at: request.publish_at,
    };
    if amendment.is_empty() {
        return Err(ApiError::bad_request("send at least one field to change"));
    }
    let command = Command::Amend {
        issuer: auth.issuer(),
        amendment,
    };
    match app
        .commands
        .execute(id, command, Some(expected), &auth.context(), None, None)
        .await
    {
        Ok(accepted) => {
            let body = serde_json::to_vec(&Accepted {
                id,
                version: accepted.version,
            })
            .expect("serialises");
            let mut response = (StatusCode::OK, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&format!("\"{}\"", accepted.version)).expect("digits"),
            );
            Ok(response)
        }
        Err(error) => Err(command_error(&app, &auth, "amend", Some(id), error).await),
    }
}

/// Retract a publication: it leaves every feed.
#[utoipa::path(
    delete, path = "/v1/publications/{id}", tag = "publisher",
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "Publication id (UUIDv7)"), ("If-Match" = Option<String>, Header, description = "Optional: the version being retracted")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Retracted"),
        (status = 400, description = "Invalid id or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not yours (recorded)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such publication", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "Already retracted", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; nothing was changed", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn retract(
    State(app): State<AppState>,
    auth: Authenticated,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = parse_publication_id(&id)?;
    let expected = if_match(&headers)?;
    let command = Command::Retract {
        issuer: auth.issuer(),
    };
    match app
        .commands
        .execute(id, command, expected, &auth.context(), None, None)
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(error) => Err(command_error(&app, &auth, "retract", Some(id), error).await),
    }
}

/// Who caused an event, as the audit trail shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ActorView {
    Publisher {
        #[schema(value_type = String, format = Uuid)]
        publisher: Uuid,
        #[schema(value_type = String, format = Uuid)]
        token: Uuid,
    },
    System {
        component: String,
    },
}

impl From<&Actor> for ActorView {
    fn from(actor: &Actor) -> Self {
        match actor {
            Actor::Publisher { publisher, token } => ActorView::Publisher {
                publisher: publisher.as_uuid(),
                token: token.as_uuid(),
            },
            Actor::System { component } => ActorView::System {
                component: component.clone(),
            },
        }
    }
}

/// One event of a publication's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEvent {
    version: u64,
    /// The event's wire name, e.g. `PublicationAmended`.
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u16,
    #[schema(value_type = String, format = Uuid)]
    event_id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    occurred_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    recorded_at: Timestamp,
    actor: ActorView,
    request_id: Option<String>,
    /// The event's fields (for an amendment, only the fields that changed).
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// A refused attempt on a publication.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryRefusal {
    #[schema(value_type = String, format = DateTime)]
    at: Timestamp,
    #[schema(value_type = String, format = Uuid)]
    publisher: Uuid,
    #[schema(value_type = String, format = Uuid)]
    token: Uuid,
    action: String,
    reason: String,
    request_id: Option<String>,
}

/// The audit trail of a publication.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    #[schema(value_type = String, format = Uuid)]
    id: PublicationId,
    /// What was done, in order.
    events: Vec<HistoryEvent>,
    /// What was attempted and refused, in order.
    refusals: Vec<HistoryRefusal>,
}

fn event_data(event: &PublicationEvent) -> serde_json::Value {
    let value = match event {
        PublicationEvent::Published(e) => serde_json::to_value(e),
        PublicationEvent::Scheduled(e) => serde_json::to_value(e),
        PublicationEvent::WentLive(e) => serde_json::to_value(e),
        PublicationEvent::Amended(e) => serde_json::to_value(e),
        PublicationEvent::Retracted(e) => serde_json::to_value(e),
    };
    value.expect("events serialise to JSON")
}

/// The ordered events of a publication, with who did what and when.
#[utoipa::path(
    get, path = "/v1/publications/{id}/history", tag = "publisher",
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", description = "Publication id (UUIDv7)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The audit trail", body = History),
        (status = 400, description = "Malformed id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Another publisher's publication (recorded)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such publication", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(app): State<AppState>,
    auth: Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_publication_id(&id)?;
    let (state, events) = app.commands.load(id).await?;
    let Some(current) = state.state() else {
        return Err(ApiError::not_found("no such publication"));
    };
    if current.publisher != auth.token.publisher {
        let error = ApiError::forbidden("the publication belongs to another publisher");
        return Err(refuse(
            &app,
            &auth,
            "history",
            Some(id),
            error,
            "not the owner".into(),
        )
        .await);
    }
    let refusals = app.state.refusals_for(id).await?;
    let body = History {
        id,
        events: events
            .iter()
            .map(|e| {
                let envelope = &e.envelope;
                HistoryEvent {
                    version: envelope.stream_version,
                    event_type: envelope.event_type.to_owned(),
                    schema_version: envelope.schema_version,
                    event_id: envelope.event_id.as_uuid(),
                    occurred_at: envelope.occurred_at,
                    recorded_at: envelope.recorded_at,
                    actor: ActorView::from(&envelope.actor),
                    request_id: envelope.request_id.as_ref().map(|r| r.as_str().to_owned()),
                    data: event_data(&envelope.payload),
                }
            })
            .collect(),
        refusals: refusals
            .into_iter()
            .map(|r| HistoryRefusal {
                at: r.at,
                publisher: r.publisher.as_uuid(),
                token: r.token.as_uuid(),
                action: r.action.to_owned(),
                reason: r.reason,
                request_id: r.request_id.map(|r| r.as_str().to_owned()),
            })
            .collect(),
    };
    Ok(json(&body))
}

fn json<T: Serialize>(value: &T) -> Response {
    let mut response = (
        StatusCode::OK,
        serde_json::to_vec(value).expect("serialises"),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

/// One of the publisher's own publications, with its figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnPublication {
    #[schema(value_type = String, format = Uuid)]
    id: PublicationId,
    title: String,
    /// `scheduled`, `live` or `retracted`.
    status: &'static str,
    #[schema(value_type = Vec<String>)]
    communes: CommuneSet,
    #[schema(value_type = CategoryDoc)]
    category: Category,
    #[schema(value_type = PriorityDoc)]
    priority: Priority,
    /// When it went (or goes) live.
    #[schema(value_type = String, format = DateTime)]
    published_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    updated_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    visible_until: Option<Timestamp>,
    version: u64,
    /// Readers who read it for more than 3 s.
    views: u64,
    /// Devices notified.
    notifications: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnPublications {
    publications: Vec<OwnPublication>,
}

fn own(state: &PublicationState, views: u64, notifications: u64) -> OwnPublication {
    let (status, published_at) = match state.status {
        Status::Scheduled { publish_at } => ("scheduled", publish_at),
        Status::Live { published_at } => ("live", published_at),
        Status::Retracted { published_at, .. } => ("retracted", published_at),
    };
    OwnPublication {
        id: state.id,
        title: state.content.title.as_str().to_owned(),
        status,
        communes: state.content.communes.clone(),
        category: state.content.category,
        priority: state.content.priority,
        published_at,
        updated_at: state.updated_at,
        visible_until: state.content.window.until(),
        version: state.version,
        views,
        notifications,
    }
}

/// The publisher's own publications (newest first, at most 100), with view and
/// notification counts.
#[utoipa::path(
    get, path = "/v1/publisher/publications", tag = "publisher",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Own publications", body = OwnPublications),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn own_publications(
    State(app): State<AppState>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let ids = app.log.publications_of(auth.token.publisher, 100).await?;
    let views = app.state.views(&ids).await?;
    let mut publications = Vec::with_capacity(ids.len());
    for (id, views) in views {
        let (state, _) = app.commands.load(id).await?;
        let notifications = app.jobs.job(id).await?.map_or(0, |job| job.sent);
        if let Some(state) = state.state() {
            publications.push(own(state, views, notifications));
        }
    }
    Ok(json(&OwnPublications { publications }))
}

/// The publisher's statistics, folded from the event log by the stats projector.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnStats {
    /// Publications ever made (scheduled, live or retracted).
    publications: u64,
    scheduled: u64,
    live: u64,
    retracted: u64,
    urgent: u64,
    amendments: u64,
    /// Sum over publications of the communes each is addressed to.
    commune_notices: u64,
    /// Publications per category; categories never used are left out.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    by_category: std::collections::BTreeMap<Category, u64>,
}

/// The publisher's statistics: its publications by status and category,
/// amendments and reach. Served from the statistics read model (the database
/// is only asked to check the token).
#[utoipa::path(
    get, path = "/v1/publisher/stats", tag = "publisher",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The publisher's statistics", body = OwnStats),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Statistics unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn own_stats(
    State(app): State<AppState>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let publisher = auth.token.publisher;
    let keys: Vec<String> = (0..panneau_projections::stats::SHARDS)
        .map(|shard| crate::readmodel::stats_key(&publisher, shard))
        .collect();
    let shards =
        futures_util::future::try_join_all(keys.iter().map(|key| app.stats.get(key))).await?;
    let mut summary = panneau_projections::StatsSummary::default();
    for document in shards.into_iter().flatten() {
        let stats: panneau_projections::PublisherStats =
            crate::codec::decode_document(&document.value)
                .map_err(|e| ApiError::from(crate::readmodel::ReadModelError::from(e)))?;
        stats.add_to(&mut summary);
    }
    Ok(json(&OwnStats {
        publications: summary.publications,
        scheduled: summary.scheduled,
        live: summary.live,
        retracted: summary.retracted,
        urgent: summary.urgent,
        amendments: summary.amendments,
        commune_notices: summary.commune_notices,
        by_category: summary.by_category,
    }))
}
