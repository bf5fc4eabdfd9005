//! The device API: the app registers the phone for push notifications on the
//! communes the user chose, changes them, rotates the push token, and erases
//! the device. A device authenticates with the secret it got at registration
//! (`Authorization: Device SECRET`), of which only a hash is kept.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use base64::Engine;
use panneau_domain::{InseeCode, Locale, Platform, PushToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, FieldError, ProblemBody};
use super::extract::{ApiJson, ApiPath};
use super::views::PerClientLimit;
use crate::store::NewDevice;
use crate::subscription::WebPushSubscription;

/// At most this many communes per device.
pub const MAX_COMMUNES: usize = 50;
/// Registrations one client address may make per window.
pub const REGISTRATIONS_PER_WINDOW: u32 = 60;
pub const REGISTRATION_WINDOW: Duration = Duration::from_secs(60);

pub fn registration_limit() -> PerClientLimit {
    PerClientLimit::new(REGISTRATIONS_PER_WINDOW, REGISTRATION_WINDOW)
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/devices", post(register))
        .route("/v1/devices/{id}", delete(remove))
        .route("/v1/devices/{id}/communes", put(set_communes))
        .route("/v1/devices/{id}/token", put(set_token))
}

fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Documentation shape of the platform enumeration.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Platform)]
#[allow(dead_code, non_camel_case_types)]
pub enum PlatformDoc {
    fcm,
    apns,
    webpush,
}

fn french() -> Locale {
    Locale::parse("fr").expect("fr is a language tag")
}

/// A device to register.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    #[schema(value_type = PlatformDoc)]
    platform: Platform,
    /// The push token; for `webpush`, the JSON of the browser's PushSubscription.
    #[schema(value_type = String, min_length = 1, max_length = 4096)]
    token: PushToken,
    /// The language of the notifications (default `fr`).
    #[serde(default = "french")]
    #[schema(value_type = String, example = "fr")]
    locale: Locale,
    /// The communes to be notified for (at most 50).
    #[serde(default)]
    #[schema(value_type = Vec<super::publisher::InseeCodeDoc>, max_items = 50)]
    communes: Vec<InseeCode>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCommunes {
    #[schema(value_type = Vec<super::publisher::InseeCodeDoc>, max_items = 50)]
    communes: Vec<InseeCode>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceToken {
    #[schema(value_type = String, min_length = 1, max_length = 4096)]
    token: PushToken,
}

/// The registered device and its secret, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    #[schema(value_type = String, format = Uuid)]
    device_id: Uuid,
    /// Send it as `Authorization: Device SECRET` to change or erase the device.
    device_secret: String,
}

/// Checks the commune list: at most 50, each once (400), each a current commune (422).
fn check_communes(app: &AppState, communes: &[InseeCode]) -> Result<(), ApiError> {
    if communes.len() > MAX_COMMUNES {
        return Err(ApiError::invalid_field(
            "communes",
            format!("at most {MAX_COMMUNES} communes (got {})", communes.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = communes.iter().find(|c| !seen.insert(**c)) {
        return Err(ApiError::invalid_field(
            "communes",
            format!("commune {twice} is listed twice"),
        ));
    }
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

fn check_token(app: &AppState, platform: Platform, token: &PushToken) -> Result<(), ApiError> {
    if platform == Platform::Webpush {
        WebPushSubscription::parse(token.as_str(), app.webpush_endpoints)
            .map_err(|message| ApiError::invalid_field("token", message))?;
    }
    Ok(())
}

/// Register a device for push notifications.
#[utoipa::path(
    post, path = "/v1/devices", tag = "devices", request_body = RegisterDevice,
    responses(
        (status = 201, description = "Registered; the secret is shown once", body = Registered, headers(("Location" = String))),
        (status = 400, description = "Invalid body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown commune", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations from this address", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
        (status = 503, description = "Database unavailable; nothing was registered", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(app): State<AppState>,
    parts: Parts,
    ApiJson { value: request, .. }: ApiJson<RegisterDevice>,
) -> Result<Response, ApiError> {
    if !app.registrations.allow(app.client_ip(&parts)) {
        return Err(ApiError::too_many_requests(app.registrations.retry_after()));
    }
    check_token(&app, request.platform, &request.token)?;
    check_communes(&app, &request.communes)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    let secret = format!(
        "dsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let device = NewDevice {
        platform: request.platform,
        token: request.token,
        locale: request.locale,
        communes: request.communes,
        secret_hash: secret_hash(&secret),
    };
    let id = app.devices.register_device(&device, crate::now()).await?;
    let body = serde_json::to_vec(&Registered {
        device_id: id,
        device_secret: secret,
    })
    .expect("serialises");
    let mut response = (StatusCode::CREATED, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/devices/{id}")).expect("ASCII id"),
    );
    Ok(response)
}

/// A request authenticated with a device's secret.
#[derive(Debug)]
pub struct DeviceAuth {
    pub id: Uuid,
    pub platform: Platform,
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, app).await?;
        let id = Uuid::try_parse(&id)
            .ok()
            .filter(|_| id.len() == 36)
            .ok_or_else(|| ApiError::invalid_field("id", "expected a device id (UUID)"))?;
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Device "))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "Device",
                    "send Authorization: Device SECRET (the secret given at registration)",
                )
            })?;
        let Some((hash, platform)) = app.devices.device_secret(id).await? else {
            return Err(ApiError::not_found("no such device"));
        };
        let given = secret_hash(secret);
        // Compare without an early exit, so timing says nothing of the hash.
        let same = given
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !same {
            return Err(ApiError::forbidden("wrong device secret"));
        }
        Ok(DeviceAuth { id, platform })
    }
}

/// Change the communes a device is notified for.
#[utoipa::path(
    put, path = "/v1/devices/{id}/communes", tag = "devices", request_body = DeviceCommunes,
    params(("id" = String, Path, format = Uuid), ("Authorization" = String, Header, description = "Device SECRET")),
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "Invalid body or id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Wrong device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown commune", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn set_communes(
    State(app): State<AppState>,
    device: DeviceAuth,
    ApiJson { value: request, .. }: ApiJson<DeviceCommunes>,
) -> Result<StatusCode, ApiError> {
    check_communes(&app, &request.communes)?;
    app.devices
        .set_device_communes(device.id, &request.communes)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the push token (token rotation).
#[utoipa::path(
    put, path = "/v1/devices/{id}/token", tag = "devices", request_body = DeviceToken,
    params(("id" = String, Path, format = Uuid), ("Authorization" = String, Header, description = "Device SECRET")),
    responses(
        (status = 204, description = "Replaced"),
        (status = 400, description = "Invalid body or id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Wrong device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn set_token(
    State(app): State<AppState>,
    device: DeviceAuth,
    ApiJson { value: request, .. }: ApiJson<DeviceToken>,
) -> Result<StatusCode, ApiError> {
    check_token(&app, device.platform, &request.token)?;
    app.devices
        .set_device_token(device.id, &request.token, crate::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erase a device: its token, its communes, every trace of it.
#[utoipa::path(
    delete, path = "/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, format = Uuid), ("Authorization" = String, Header, description = "Device SECRET")),
    responses(
        (status = 204, description = "Erased"),
        (status = 400, description = "Invalid id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Wrong device secret", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(app): State<AppState>,
    device: DeviceAuth,
) -> Result<StatusCode, ApiError> {
    app.devices.delete_device(device.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
