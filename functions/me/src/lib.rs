//! `GET /api/v1/me`: who the bearer of a token is, and until when their session lasts;
//! `GET /api/v1/me/export`: everything the account holds, as one download.

use std::sync::Arc;

use axum::extract::State;
use axum::{Json, Router};
use ifs_api::{ApiError, AuthUser, Route};
use ifs_auth::Authenticator;
use ifs_domain::{Email, Timestamp, UserId};
use ifs_store::{DialogueStore, UserStore};
use serde::Serialize;

/// What `/me` needs: the authenticator and the users.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct MeState {
    pub auth: Authenticator,
    pub users: Arc<dyn UserStore>,
    pub dialogues: Arc<dyn DialogueStore>,
}

/// Who the bearer is.
pub const ME: Route = Route::get("/api/v1/me");
/// Everything the account holds.
pub const EXPORT: Route = Route::get("/api/v1/me/export");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[ME, EXPORT];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: MeState) -> Router {
    Router::new().route(ME.path, ME.to(me)).route(EXPORT.path, EXPORT.to(export)).with_state(state)
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
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(me, export))]
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
    State(users): State<Arc<dyn UserStore>>,
) -> Result<Json<MeResponse>, ApiError> {
    // A valid session for a user who no longer exists is as good as no session.
    let user = users.user_by_id(principal.user_id).await?.ok_or_else(ApiError::unauthorized)?;
    Ok(Json(MeResponse {
        id: user.id,
        email: user.email,
        created_at: user.created_at,
        session_expires_at: principal.session_expires_at,
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

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use ifs_api::testing::{World, call, empty_request};

    use super::*;

    fn app(world: &World) -> Router {
        router(MeState {
            auth: world.authenticator(),
            users: world.backends.users.clone(),
            dialogues: world.backends.dialogues.clone(),
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
