//! The one error type of the API. Every failure becomes `{"error": {"code", "message"}}` with the
//! right status; causes of 5xx are logged with the request's span and never sent.

use std::borrow::Cow;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ifs_auth::{AuthError, HashError};
use ifs_store::StoreError;
use serde_json::{Map, Value, json};

/// An error response. Build one with the constructors; extra fields go beside `code` and `message`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<u64>,
    extra: Map<String, Value>,
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, extra: Map::new(), cause: None }
    }

    /// 400 for a value that does not parse; the message names the field.
    pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::invalid_request(format!("{field}: {problem}"))
    }

    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    #[must_use]
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500; `cause` is logged, the client sees a generic message.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut error =
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "something went wrong on our side");
        error.cause = Some(cause.into());
        error
    }

    /// 503: a backend could not be reached in time; `cause` is logged, the client is told to retry.
    pub fn unavailable(cause: impl Into<anyhow::Error>) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service cannot reach its data right now; try again shortly",
        )
        .retry_after(2);
        error.cause = Some(cause.into());
        error
    }

    /// Adds `Retry-After` (seconds).
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Adds a field beside `code` and `message`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Keeps a cause for the log of a non-500 error.
    #[must_use]
    pub fn caused_by(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }

    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error a bare status stands for, used for responses that axum or tower-http produce
    /// without a body of ours (405, 413 from the body limit, a caught panic…).
    #[must_use]
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status.as_u16() {
            400 => ("invalid_request", "the request is malformed"),
            401 => ("unauthorized", "a valid bearer token is required"),
            404 => ("not_found", "no such resource"),
            405 => ("method_not_allowed", "this method is not allowed on this path"),
            408 => ("request_timeout", "the request took too long"),
            413 => ("payload_too_large", "the request body is larger than this endpoint accepts"),
            415 => ("unsupported_media_type", "the content type is not supported here"),
            429 => ("too_many_requests", "too many requests"),
            503 => ("unavailable", "the service is busy; try again shortly"),
            504 => ("timeout", "the request took too long"),
            s if s >= 500 => ("internal", "something went wrong on our side"),
            _ => ("error", "the request failed"),
        };
        Self::new(status, code, message)
    }
}

impl ApiError {
    /// The envelope, `{"error": {"code", "message", …}}`, logging the cause. For an error that
    /// ends a stream already under way, where the status line has long been sent.
    #[must_use]
    pub fn into_body(self) -> Value {
        match &self.cause {
            Some(cause) if self.status.is_server_error() => {
                tracing::error!(code = self.code, error = ?cause, "request failed");
            }
            Some(cause) => tracing::warn!(code = self.code, error = %cause, "request refused"),
            None => {}
        }
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), Value::String(self.message.into_owned()));
        error.extend(self.extra);
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, retry_after) = (self.status, self.retry_after);
        let mut response = (status, axum::Json(self.into_body())).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::not_found("no such dialogue"),
            StoreError::EmailTaken => {
                Self::new(StatusCode::CONFLICT, "email_taken", "an account with this email already exists")
            }
            StoreError::Regenerate(refusal) => Self::new(
                StatusCode::CONFLICT,
                match refusal {
                    ifs_domain::RegenerateRefusal::NotLastReply => "not_last_reply",
                    ifs_domain::RegenerateRefusal::NoReply => "nothing_to_regenerate",
                    ifs_domain::RegenerateRefusal::VersionsFull => "too_many_versions",
                },
                refusal.to_string(),
            ),
            StoreError::ForkTooLong => Self::new(
                StatusCode::CONFLICT,
                "fork_too_long",
                format!(
                    "a fork copies at most {} messages: fork at an earlier message",
                    ifs_domain::FORK_MAX_MESSAGES
                ),
            ),
            StoreError::Unavailable(cause) => Self::unavailable(cause),
            StoreError::Unexpected(cause) => Self::internal(cause),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unavailable(cause) => Self::unavailable(cause),
            AuthError::Unexpected(cause) => Self::internal(cause),
            refused => Self::unauthorized().caused_by(refused),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many sign-ups and logins at once; try again in a moment",
            )
            .retry_after(1),
            HashError::Unexpected(cause) => Self::internal(cause),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        Self::internal(cause)
    }
}

/// Maps an axum rejection's status: 422 (well-formed JSON of the wrong shape) is still a bad
/// request to our clients; 413 and 415 keep their meaning.
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::for_status(status),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(status, "unsupported_media_type", text),
        s if s.is_server_error() => ApiError::internal(anyhow::anyhow!(text)),
        _ => ApiError::invalid_request(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}
