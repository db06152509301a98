//! `POST /api/v1/login`: exchanges an email and password for an access token bound to a new
//! session. Accepts JSON `{email, password}` and the OAuth2 password form (`username`,
//! `password`). Attempts for one email are counted before the password is checked, so that no
//! more than a handful of guesses per window are ever evaluated, however many arrive at once.

use std::sync::Arc;

pub mod signing_key;

use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::{Form, Router};
use ifs_api::{ApiError, Json, Route};
use ifs_auth::{PasswordHasher, TokenIssuer};
use ifs_domain::{Clock, Email, Password, SessionId};
use ifs_store::{Counter, Counters, Session, SessionStore, UserStore};
use serde::{Deserialize, Serialize};

pub use ifs_auth::Throttle;

/// What login needs: users to check, sessions to open, and the signing key.
#[derive(Debug, Clone)]
pub struct LoginState {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    pub hasher: PasswordHasher,
    pub issuer: Arc<TokenIssuer>,
    pub clock: Arc<dyn Clock>,
    pub throttle: Throttle,
}

/// The one route of this function.
pub const LOGIN: Route = Route::post("/api/v1/login");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[LOGIN];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: LoginState) -> Router {
    Router::new().route(LOGIN.path, LOGIN.to(login)).with_state(state)
}

/// Credentials as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
pub struct JsonCredentials {
    #[schema(format = Email, max_length = 254)]
    email: String,
    password: String,
}

/// Credentials as the OAuth2 password form sends them (`grant_type` and `scope` are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FormCredentials {
    /// The email address.
    #[schema(format = Email, max_length = 254)]
    username: String,
    password: String,
}

/// Credentials from either body format.
#[derive(Debug)]
struct Credentials {
    email: String,
    password: String,
}

impl<S: Send + Sync> FromRequest<S> for Credentials {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            let Form(form) = Form::<FormCredentials>::from_request(request, state).await?;
            Ok(Self { email: form.username, password: form.password })
        } else {
            let Json(json) = Json::<JsonCredentials>::from_request(request, state).await?;
            Ok(Self { email: json.email, password: json.password })
        }
    }
}

/// An access token for `Authorization: Bearer …`, bound to a new session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// An EdDSA-signed JWT naming the user and the session.
    access_token: String,
    #[schema(value_type = String, example = "bearer")]
    token_type: &'static str,
    /// Seconds until the token (and its session) expires.
    #[schema(example = 3600)]
    expires_in: i64,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(login))]
pub struct Api;

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the email or password is wrong")
}

/// Exchanges an email and password for an access token bound to a new session. At most 5
/// attempts per email are evaluated in 15 minutes; a successful login starts the count afresh.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "auth",
    operation_id = "login",
    request_body(content(
        (JsonCredentials = "application/json"),
        (FormCredentials = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, description = "The email or password is wrong (the same answer for an unknown email)",
         body = ifs_api::openapi::ErrorBody,
         example = json!({"error": {"code": "invalid_credentials", "message": "the email or password is wrong"}})),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 429, response = ifs_api::openapi::TooManyRequests),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn login(
    State(state): State<LoginState>,
    credentials: Credentials,
) -> Result<axum::Json<TokenResponse>, ApiError> {
    let email = Email::parse(&credentials.email).map_err(|e| ApiError::invalid_field("email", e))?;
    let password = Password::offered(credentials.password);
    let now = state.clock.now();

    // Counted before the (slow) check: parallel guesses each take a count, and only those within
    // the limit are evaluated at all.
    let attempts = state.counters.hit(Counter::LoginAttempts(&email), now, state.throttle.window).await?;
    if attempts.hits > state.throttle.max_attempts {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many failed logins for this email; try again later",
        )
        .retry_after(attempts.seconds_left(now)));
    }

    // Unknown users are verified against a dummy hash: the same work, the same answer.
    let user = state.users.user_by_email(&email).await?;
    let verified = state.hasher.verify(&password, user.as_ref().map(|u| u.password_hash.as_str())).await?;
    let Some(user) = user.filter(|_| verified) else {
        tracing::info!(attempts = attempts.hits, "login refused");
        return Err(invalid_credentials());
    };
    state.counters.reset(Counter::LoginAttempts(&email)).await?;

    let ttl = state.issuer.ttl();
    let session =
        Session { id: SessionId::generate(), user_id: user.id, created_at: now, expires_at: now + ttl };
    state.sessions.create_session(&session).await?;
    let access_token = state.issuer.issue(user.id, session.id, now)?;
    tracing::info!(user_id = %user.id, session_id = %session.id, "logged in");
    Ok(axum::Json(TokenResponse { access_token, token_type: "bearer", expires_in: ttl.num_seconds() }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use ifs_api::testing::{World, call, json_request};
    use ifs_store::UserRecord;
    use serde_json::json;

    use super::*;

    async fn app_with_user(world: &World) -> Router {
        let user = UserRecord {
            id: ifs_domain::UserId::generate(),
            email: Email::parse("ada@example.com").unwrap(),
            password_hash: world
                .hasher
                .hash(&Password::parse("right password".into()).unwrap())
                .await
                .unwrap(),
            created_at: world.clock.now(),
            country: None,
        };
        world.backends.users.create_user(&user).await.unwrap();
        router(LoginState {
            users: world.backends.users.clone(),
            sessions: world.backends.sessions.clone(),
            counters: world.backends.counters.clone(),
            hasher: world.hasher.clone(),
            issuer: Arc::new(world.issuer()),
            clock: world.clock.clone(),
            throttle: Throttle::default(),
        })
    }

    fn attempt(email: &str, password: &str) -> Request {
        json_request("POST", "/api/v1/login", None, &json!({"email": email, "password": password}))
    }

    #[tokio::test]
    async fn the_right_password_gets_a_token_that_authenticates() {
        let world = World::new();
        let app = app_with_user(&world).await;
        let (status, json) = call(app, attempt(" ADA@example.com", "right password")).await;

        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!((json["token_type"].as_str(), json["expires_in"].as_i64()), (Some("bearer"), Some(3600)));
        let principal =
            world.authenticator().authenticate(json["access_token"].as_str().unwrap()).await.unwrap();
        assert_eq!(principal.session_expires_at, world.clock.now() + chrono::Duration::hours(1));
    }

    #[tokio::test]
    async fn the_oauth2_password_form_is_accepted_too() {
        let world = World::new();
        let app = app_with_user(&world).await;
        let form = Request::post("/api/v1/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("grant_type=password&username=ada%40example.com&password=right+password"))
            .unwrap();
        let (status, json) = call(app, form).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert!(json["access_token"].is_string());
    }

    #[tokio::test]
    async fn an_unknown_email_and_a_wrong_password_look_the_same() {
        let world = World::new();
        let app = app_with_user(&world).await;
        let wrong = call(app.clone(), attempt("ada@example.com", "wrong password")).await;
        let unknown = call(app, attempt("nobody@example.com", "right password")).await;
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.1["error"]["code"], "invalid_credentials");
    }

    #[tokio::test]
    async fn five_failures_lock_the_email_until_the_window_passes() {
        let world = World::new();
        let app = app_with_user(&world).await;
        for _ in 0..5 {
            world.clock.advance(chrono::Duration::seconds(10));
            assert_eq!(
                call(app.clone(), attempt("ada@example.com", "guess")).await.0,
                StatusCode::UNAUTHORIZED
            );
        }

        // Even the right password is refused while locked, with how long to wait.
        world.clock.advance(chrono::Duration::minutes(10));
        let response = crate::tests::raw(app.clone(), attempt("ada@example.com", "right password")).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        // The window opened at the first failure (+10 s); it is now +50 s +10 min.
        assert_eq!(retry_after, 15 * 60 - (50 + 10 * 60 - 10));

        world.clock.advance(chrono::Duration::seconds(retry_after as i64));
        assert_eq!(call(app, attempt("ada@example.com", "right password")).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_success_resets_the_failure_count() {
        let world = World::new();
        let app = app_with_user(&world).await;
        for _ in 0..4 {
            call(app.clone(), attempt("ada@example.com", "guess")).await;
        }
        assert_eq!(call(app.clone(), attempt("ada@example.com", "right password")).await.0, StatusCode::OK);
        for _ in 0..4 {
            assert_eq!(
                call(app.clone(), attempt("ada@example.com", "guess")).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(call(app, attempt("ada@example.com", "right password")).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_logins_are_400s() {
        let world = World::new();
        let app = app_with_user(&world).await;
        for body in
            [json!({"email": "ada@example.com"}), json!({"email": "nope", "password": "x"}), json!({})]
        {
            let (status, json) = call(app.clone(), json_request("POST", "/api/v1/login", None, &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {json}");
        }
    }

    async fn raw(app: Router, request: Request) -> axum::response::Response {
        use tower::ServiceExt as _;
        ifs_api::http::edge(app).oneshot(request).await.unwrap()
    }
}
