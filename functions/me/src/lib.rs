//! `GET /api/v1/me`: who the bearer of a token is, and until when their session lasts;
//! `GET /api/v1/me/export`: everything the account holds, as one download;
//! `DELETE /api/v1/me`: the account erased, with everything it holds.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router};
use ifs_api::{ApiError, AuthUser, Route};
use ifs_auth::{Authenticator, PasswordHasher, Throttle};
use ifs_domain::{Clock, Email, Password, Timestamp, UserId};
use ifs_store::{Counter, Counters, DialogueStore, SessionStore, UserStore};
use serde::{Deserialize, Serialize};

/// What `/me` needs: the authenticator, and every store that holds something of a user.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct MeState {
    pub auth: Authenticator,
    pub users: Arc<dyn UserStore>,
    pub dialogues: Arc<dyn DialogueStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    /// Checks the password that confirms a deletion.
    pub hasher: PasswordHasher,
    pub clock: Arc<dyn Clock>,
    /// Wrong passwords count with wrong logins for the same email.
    pub throttle: Throttle,
    /// Agent tokens a user may use per UTC day (`DAILY_TOKEN_LIMIT`); 0 is no limit.
    pub daily_token_limit: u32,
}

/// Who the bearer is.
pub const ME: Route = Route::get("/api/v1/me");
/// Everything the account holds.
pub const EXPORT: Route = Route::get("/api/v1/me/export");
/// The account erased.
pub const DELETE: Route = Route::delete("/api/v1/me");
/// Every route of this function, for what maps requests to it.
pub const UPDATE: Route = Route::patch("/api/v1/me");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[ME, UPDATE, EXPORT, DELETE];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: MeState) -> Router {
    Router::new()
        .route(ME.path, ME.to(me).merge(UPDATE.to(update_me)).merge(DELETE.to(delete_account)))
        .route(EXPORT.path, EXPORT.to(export))
        .with_state(state)
}

/// The password that confirms an account's deletion.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"password": "correct horse battery staple"}))]
pub struct DeleteAccountRequest {
    password: String,
}

/// What `PATCH /api/v1/me` changes: today, the country.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"country": "GB"}))]
pub struct UpdateMeRequest {
    /// A two-letter ISO 3166-1 code (whose crisis lines the person is given), or null to forget
    /// it (then their `Accept-Language` decides, else the international lines). Required.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{2}$", min_length = 2, max_length = 2)]
    country: Option<Option<String>>,
}

/// A field that is there, null or not: `Some(None)` is null, `None` is absent.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// The bearer and their session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    #[schema(value_type = String, format = Uuid)]
    id: UserId,
    #[schema(value_type = String, format = Email)]
    email: Email,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    session_expires_at: Timestamp,
    /// Where they said they are (two letters, upper case); null if they did not.
    #[schema(value_type = Option<String>)]
    country: Option<ifs_domain::Country>,
    usage: DailyUsage,
}

/// The bearer's use of the agent today (UTC).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DailyUsage {
    /// Agent tokens (prompt + completion) their replies used since midnight UTC (not counted,
    /// so 0, when there is no limit).
    tokens_today: u32,
    /// How many they may use a day; 0 is no limit. Past it a turn is refused (429
    /// `quota_exceeded`) until `resets_at`.
    daily_token_limit: u32,
    /// The next midnight UTC, when the count starts again.
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    resets_at: Timestamp,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(me, update_me, export, delete_account))]
pub struct Api;

/// Who the bearer of the token is, and until when their session lasts.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The bearer", body = MeResponse),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn me(
    AuthUser(principal): AuthUser,
    State(state): State<MeState>,
) -> Result<Json<MeResponse>, ApiError> {
    // A valid session for a user who no longer exists is as good as no session.
    let user = state.users.user_by_id(principal.user_id).await?.ok_or_else(ApiError::unauthorized)?;
    described(&state, &principal, user).await
}

/// Changes the bearer's profile (their country) and answers it as `GET /api/v1/me` does.
#[utoipa::path(
    patch,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "update_me",
    security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The bearer, changed", body = MeResponse),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn update_me(
    AuthUser(principal): AuthUser,
    State(state): State<MeState>,
    ifs_api::Json(request): ifs_api::Json<UpdateMeRequest>,
) -> Result<Json<MeResponse>, ApiError> {
    let country =
        request.country.ok_or_else(|| ApiError::invalid_field("country", "is required (null forgets it)"))?;
    let country = country
        .as_deref()
        .map(ifs_domain::Country::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_field("country", e))?;
    let user = match state.users.set_country(principal.user_id, country).await {
        Err(ifs_store::StoreError::NotFound) => return Err(ApiError::unauthorized()),
        other => other?,
    };
    described(&state, &principal, user).await
}

/// The bearer as `/me` describes them.
async fn described(
    state: &MeState,
    principal: &ifs_auth::Principal,
    user: ifs_store::UserRecord,
) -> Result<Json<MeResponse>, ApiError> {
    let now = state.clock.now();
    let today = state.counters.peek(Counter::TokensToday(user.id), now).await?;
    Ok(Json(MeResponse {
        id: user.id,
        email: user.email,
        created_at: user.created_at,
        session_expires_at: principal.session_expires_at,
        country: user.country,
        usage: DailyUsage {
            tokens_today: today.map_or(0, |w| w.hits),
            daily_token_limit: state.daily_token_limit,
            resets_at: today.map_or_else(|| ifs_domain::next_utc_midnight(now), |w| w.resets_at),
        },
    }))
}

/// Everything the account holds, as one JSON document (`ifs-guide-export/1`): the profile, then
/// every dialogue, newest activity first, each with every message. Streamed a page at a time in
/// bounded memory; if it fails midway the body ends with an error, never as a shorter document.
#[utoipa::path(
    get,
    path = "/api/v1/me/export",
    tag = "auth",
    operation_id = "export_account",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account, as an attachment (`content-disposition`)",
         content((Object = "application/json")),
         headers(("content-disposition" = String, description = "attachment; filename=\"ifs-guide-account-<date>.json\""))),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn export(
    AuthUser(principal): AuthUser,
    State(users): State<Arc<dyn UserStore>>,
    State(dialogues): State<Arc<dyn DialogueStore>>,
) -> Result<axum::response::Response, ApiError> {
    let user = users.user_by_id(principal.user_id).await?.ok_or_else(ApiError::unauthorized)?;
    Ok(ifs_api::export::account(dialogues, user, chrono::Utc::now()))
}

/// Erases the account: every dialogue and message, every session (each token of the user is
/// refused from then on), its counters, then the user and their email, which can sign up again.
/// The password must be given again; wrong passwords count with wrong logins for this email
/// (429 past the limit). A deletion cut short can be asked for again after logging in: each step
/// finishes what an earlier attempt left.
#[utoipa::path(
    delete,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "delete_account",
    security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 204, description = "The account and everything it held are gone"),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, description = "No valid token, or the password is wrong (`invalid_credentials`): nothing was deleted",
         body = ifs_api::openapi::ErrorBody,
         example = json!({"error": {"code": "invalid_credentials", "message": "the password is wrong; nothing was deleted"}})),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 429, response = ifs_api::openapi::TooManyRequests),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn delete_account(
    AuthUser(principal): AuthUser,
    State(state): State<MeState>,
    ifs_api::Json(request): ifs_api::Json<DeleteAccountRequest>,
) -> Result<StatusCode, ApiError> {
    let user = state.users.user_by_id(principal.user_id).await?.ok_or_else(ApiError::unauthorized)?;
    let now = state.clock.now();
    let attempts =
        state.counters.hit(Counter::LoginAttempts(&user.email), now, state.throttle.window).await?;
    if attempts.hits > state.throttle.max_attempts {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many wrong passwords for this account; try again later",
        )
        .retry_after(attempts.seconds_left(now)));
    }
    let password = Password::offered(request.password);
    if !state.hasher.verify(&password, Some(&user.password_hash)).await? {
        tracing::info!(attempts = attempts.hits, "account deletion refused: wrong password");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the password is wrong; nothing was deleted",
        ));
    }
    ifs_store::erase_account(
        state.users.as_ref(),
        state.sessions.as_ref(),
        state.dialogues.as_ref(),
        state.counters.as_ref(),
        &user,
    )
    .await?;
    tracing::info!(user_id = %user.id, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use ifs_api::testing::{World, call, empty_request};

    use super::*;

    fn app(world: &World) -> Router {
        router(MeState {
            auth: world.authenticator(),
            users: world.backends.users.clone(),
            dialogues: world.backends.dialogues.clone(),
            sessions: world.backends.sessions.clone(),
            counters: world.backends.counters.clone(),
            hasher: world.hasher.clone(),
            clock: world.clock.clone(),
            throttle: Throttle::default(),
            daily_token_limit: 1000,
        })
    }

    #[tokio::test]
    async fn me_describes_the_bearer_and_their_session() {
        let world = World::new();
        let (id, token) = world.signed_in("ada").await;
        let (status, json) = call(app(&world), empty_request("GET", "/api/v1/me", Some(&token))).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["id"], id.to_string());
        assert_eq!(json["email"], "ada@example.com");
        assert_eq!(json["session_expires_at"], "2026-01-01T01:00:00Z");
        assert_eq!(
            json["usage"],
            serde_json::json!({"tokens_today": 0, "daily_token_limit": 1000, "resets_at": "2026-01-02T00:00:00Z"})
        );
        let now = world.clock.now();
        let midnight = ifs_domain::next_utc_midnight(now);
        world.backends.counters.add(Counter::TokensToday(id), 250, now, midnight).await.unwrap();
        let (_, json) = call(app(&world), empty_request("GET", "/api/v1/me", Some(&token))).await;
        assert_eq!(json["usage"]["tokens_today"], 250);
    }

    #[tokio::test]
    async fn no_token_a_garbled_token_or_an_expired_one_is_a_401() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        for bad in [None, Some("garbage"), Some("Bearer"), Some(token.as_str())] {
            if bad == Some(token.as_str()) {
                world.clock.advance(chrono::Duration::hours(2));
            }
            let (status, json) = call(app(&world), empty_request("GET", "/api/v1/me", bad)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert_eq!(json["error"]["code"], "unauthorized");
        }
    }
}
