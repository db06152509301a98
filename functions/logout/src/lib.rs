//! `POST /api/v1/logout`: revokes the session behind the token, so the token is refused
//! everywhere from then on.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use ifs_api::{ApiError, AuthUser, Route};
use ifs_auth::Authenticator;
use ifs_store::SessionStore;

/// What logout needs: the authenticator and the sessions.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct LogoutState {
    pub auth: Authenticator,
    pub sessions: Arc<dyn SessionStore>,
}

/// The one route of this function.
pub const LOGOUT: Route = Route::post("/api/v1/logout");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[LOGOUT];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: LogoutState) -> Router {
    Router::new().route(LOGOUT.path, LOGOUT.to(logout)).with_state(state)
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(logout))]
pub struct Api;

/// Revokes the session behind the token: the token is refused everywhere from then on.
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "auth",
    operation_id = "logout",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session is revoked"),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn logout(
    AuthUser(principal): AuthUser,
    State(sessions): State<Arc<dyn SessionStore>>,
) -> Result<StatusCode, ApiError> {
    sessions.revoke_session(principal.session_id).await?;
    tracing::info!(user_id = %principal.user_id, session_id = %principal.session_id, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use ifs_api::testing::{World, call, empty_request};

    use super::*;

    #[tokio::test]
    async fn after_logout_the_token_is_refused_but_other_sessions_live_on() {
        let world = World::new();
        let app =
            router(LogoutState { auth: world.authenticator(), sessions: world.backends.sessions.clone() });
        let (_, token) = world.signed_in("ada").await;
        let (_, other) = world.signed_in("bob").await;

        assert_eq!(
            call(app.clone(), empty_request("POST", "/api/v1/logout", Some(&token))).await.0,
            StatusCode::NO_CONTENT
        );

        let (status, json) = call(app.clone(), empty_request("POST", "/api/v1/logout", Some(&token))).await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        assert!(world.authenticator().authenticate(&token).await.is_err());
        assert!(world.authenticator().authenticate(&other).await.is_ok());
    }
}
