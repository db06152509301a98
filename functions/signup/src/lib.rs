//! `POST /api/v1/signup`: registers a user with an email and a password.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Router, response::IntoResponse};
use ifs_api::{ApiError, Json, Route};
use ifs_auth::PasswordHasher;
use ifs_domain::{Clock, Email, Password, Timestamp, UserId};
use ifs_store::{UserRecord, UserStore};
use serde::{Deserialize, Serialize};

/// What sign-up needs: somewhere to keep users, a hasher, a clock.
#[derive(Debug, Clone)]
pub struct SignupState {
    pub users: Arc<dyn UserStore>,
    pub hasher: PasswordHasher,
    pub clock: Arc<dyn Clock>,
}

/// The one route of this function.
pub const SIGNUP: Route = Route::post("/api/v1/signup");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[SIGNUP];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: SignupState) -> Router {
    Router::new().route(SIGNUP.path, SIGNUP.to(signup)).with_state(state)
}

/// A new account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
pub struct SignupRequest {
    /// Normalised (NFKC, trimmed, lowercased) before it is stored; invisible characters, quoted
    /// names, IP literals and dotless domains are refused.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8 to 128 characters, any of them.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    /// Where the person is, as a two-letter ISO 3166-1 code (GB, DE, …): whose crisis lines
    /// they are given if they write about being in danger. Optional; `PATCH /api/v1/me` changes it.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z]{2}$", min_length = 2, max_length = 2)]
    country: Option<String>,
}

/// The account created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignupResponse {
    #[schema(value_type = String, format = Uuid)]
    id: UserId,
    /// As normalised and stored.
    #[schema(value_type = String, format = Email)]
    email: Email,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    created_at: Timestamp,
    /// As given, upper case; null when not given.
    #[schema(value_type = Option<String>)]
    country: Option<ifs_domain::Country>,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(signup))]
pub struct Api;

/// Registers a user. The password is kept only as an Argon2id hash.
#[utoipa::path(
    post,
    path = "/api/v1/signup",
    tag = "auth",
    operation_id = "signup",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "The account was created", body = SignupResponse,
         links(("login" = (operation_id = "login", request_body = "$request.body",
            description = "Log in with the same email and password")))),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 409, description = "An account with this email exists",
         body = ifs_api::openapi::ErrorBody,
         example = json!({"error": {"code": "email_taken", "message": "an account with this email already exists"}})),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn signup(
    State(state): State<SignupState>,
    Json(request): Json<SignupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = Email::parse(&request.email).map_err(|e| ApiError::invalid_field("email", e))?;
    let password = Password::parse(request.password).map_err(|e| ApiError::invalid_field("password", e))?;
    let country = request
        .country
        .as_deref()
        .map(ifs_domain::Country::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_field("country", e))?;
    let user = UserRecord {
        id: UserId::generate(),
        email,
        password_hash: state.hasher.hash(&password).await?,
        created_at: state.clock.now(),
        country,
    };
    state.users.create_user(&user).await?;
    tracing::info!(user_id = %user.id, "signed up");
    let body =
        SignupResponse { id: user.id, email: user.email, created_at: user.created_at, country: user.country };
    Ok((StatusCode::CREATED, axum::Json(body)))
}

#[cfg(test)]
mod tests {
    use ifs_api::testing::{World, call, json_request};
    use serde_json::json;

    use super::*;

    fn app(world: &World) -> Router {
        router(SignupState {
            users: world.backends.users.clone(),
            hasher: world.hasher.clone(),
            clock: world.clock.clone(),
        })
    }

    #[tokio::test]
    async fn signing_up_normalises_the_email_and_stores_a_hash_not_the_password() {
        let world = World::new();
        let body = json!({"email": "  Ada@Example.com ", "password": "eight chars"});
        let (status, json) = call(app(&world), json_request("POST", "/api/v1/signup", None, &body)).await;

        assert_eq!(status, StatusCode::CREATED, "{json}");
        assert_eq!(json["email"], "ada@example.com");
        assert_eq!(json["created_at"], "2026-01-01T00:00:00Z");
        let stored = world
            .backends
            .users
            .user_by_email(&Email::parse("ada@example.com").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(json["id"], stored.id.to_string());
        assert!(stored.password_hash.starts_with("$argon2id$"));
        assert!(json.get("password").is_none() && json.get("password_hash").is_none());
    }

    #[tokio::test]
    async fn a_second_signup_with_the_same_email_in_any_case_is_a_conflict() {
        let world = World::new();
        let first = json!({"email": "bob@example.com", "password": "password one"});
        let again = json!({"email": "BOB@example.com", "password": "password two"});
        assert_eq!(
            call(app(&world), json_request("POST", "/api/v1/signup", None, &first)).await.0,
            StatusCode::CREATED
        );

        let (status, json) = call(app(&world), json_request("POST", "/api/v1/signup", None, &again)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["error"]["code"], "email_taken");
    }

    #[tokio::test]
    async fn invalid_input_is_a_400_that_names_the_field() {
        let world = World::new();
        let cases = [
            (json!({"email": "not-an-email", "password": "long enough"}), "email"),
            (json!({"email": "a@example.com", "password": "short"}), "password"),
            (json!({"email": "a@example.com", "password": "x".repeat(129)}), "password"),
            (json!({"email": "a@example.com", "password": 12345678}), "password"),
            (json!({"email": "a@example.com"}), "password"),
            (json!({"password": "long enough"}), "email"),
            (json!("a@example.com"), "invalid type"),
        ];
        for (body, field) in cases {
            let (status, json) = call(app(&world), json_request("POST", "/api/v1/signup", None, &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json["error"]["code"], "invalid_request");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(message.contains(field), "{body} → {message}");
        }
    }
}
