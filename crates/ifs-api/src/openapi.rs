//! The pieces of the OpenAPI contract every endpoint shares: the error envelope, one reusable
//! response per error status the API answers, and the bearer scheme. Each function documents its
//! own operations beside its handlers (`#[utoipa::path]`); `ifs-guide` assembles the whole.

use serde::Serialize;
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{ToResponse, ToSchema};

/// The name of the bearer scheme that protected operations list under `security`.
pub const BEARER: &str = "bearer";
/// The name of the standalone agent's key scheme (`AGENT_API_KEY`).
pub const AGENT_KEY: &str = "agent_key";

/// Every error: `{"error": {"code", "message"}}`, sometimes with fields of its own beside them
/// (a failed dialogue turn names `dialogue_id` and `message_id`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable `code` and a sentence for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable across releases: `invalid_request`, `unauthorized`, `not_found`, …
    #[schema(example = "invalid_request")]
    pub code: String,
    #[schema(example = "email: is not a valid email address")]
    pub message: String,
}

/// The request is malformed: unreadable JSON, a missing or mistyped field, a value out of range
/// (the message names the field).
#[derive(Debug, ToResponse)]
#[response(
    description = "The request is malformed; the message names the field at fault",
    example = json!({"error": {"code": "invalid_request", "message": "email: is not a valid email address"}})
)]
pub struct BadRequest(pub ErrorBody);

/// No valid bearer token, or its session has ended.
#[derive(Debug, ToResponse)]
#[response(
    description = "No bearer token, a token that is malformed, forged or expired, or a session that has ended",
    example = json!({"error": {"code": "unauthorized", "message": "a valid bearer token is required"}})
)]
pub struct Unauthorized(pub ErrorBody);

/// Nothing by that id belongs to the caller.
#[derive(Debug, ToResponse)]
#[response(
    description = "No such dialogue for this user",
    example = json!({"error": {"code": "not_found", "message": "no such dialogue"}})
)]
pub struct NotFound(pub ErrorBody);

/// The body is larger than the route accepts.
#[derive(Debug, ToResponse)]
#[response(
    description = "The request body is larger than this route accepts",
    example = json!({"error": {"code": "payload_too_large", "message": "the request body is larger than this endpoint accepts"}})
)]
pub struct PayloadTooLarge(pub ErrorBody);

/// The body is not JSON (or, at login, a form).
#[derive(Debug, ToResponse)]
#[response(
    description = "The body's content type is not one this route reads",
    example = json!({"error": {"code": "unsupported_media_type", "message": "the content type is not supported here"}})
)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// A limit per user or per email was reached; `Retry-After` says when to try again.
#[derive(Debug, ToResponse)]
#[response(
    description = "Too many requests of this kind for now; wait the seconds Retry-After names",
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again")),
    example = json!({"error": {"code": "too_many_requests", "message": "at most 120 messages a minute; try again shortly"}})
)]
pub struct TooManyRequests(pub ErrorBody);

/// Something failed on the server's side; the cause is logged, never sent.
#[derive(Debug, ToResponse)]
#[response(
    description = "Something failed on the server's side; the cause is in its log, under the request id",
    example = json!({"error": {"code": "internal", "message": "something went wrong on our side"}})
)]
pub struct Internal(pub ErrorBody);

/// A backend is out of reach or full (the store, password hashing, the agent); try again.
#[derive(Debug, ToResponse)]
#[response(
    description = "The service is busy or cannot reach a backend; wait the seconds Retry-After names",
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again")),
    example = json!({"error": {"code": "unavailable", "message": "the service cannot reach its data right now; try again shortly"}})
)]
pub struct Unavailable(pub ErrorBody);

/// The agent failed or answered something unusable.
#[derive(Debug, ToResponse)]
#[response(
    description = "The agent failed or could not be reached",
    example = json!({"error": {"code": "agent_unavailable", "message": "the agent could not answer; your message was kept", "dialogue_id": EXAMPLE_ID, "message_id": EXAMPLE_ID}})
)]
pub struct BadGateway(pub ErrorBody);

/// The agent did not answer in time.
#[derive(Debug, ToResponse)]
#[response(
    description = "The agent did not answer in time; the user's message was kept",
    example = json!({"error": {"code": "agent_timeout", "message": "the agent did not answer in time; your message was kept", "dialogue_id": EXAMPLE_ID, "message_id": EXAMPLE_ID}})
)]
pub struct GatewayTimeout(pub ErrorBody);

/// One server-sent event of a streamed dialogue turn, in order: `message` (the stored user
/// message with `dialogue_id`), `delta`s (`{"content": "…"}`, pieces of the reply as the agent
/// writes it), then `reply` (the stored reply with `dialogue_id`) or `error` (the error envelope
/// with `dialogue_id` and `message_id`; the text so far is stored).
#[derive(Debug, Serialize, ToSchema)]
pub struct DialogueEvent {
    pub event: DialogueEventName,
    /// The event's JSON, as the event's name says.
    pub data: String,
}

/// The names of a dialogue turn's events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DialogueEventName {
    Message,
    Delta,
    Reply,
    Error,
}

/// One server-sent event of a streamed chat completion, as OpenAI sends them: a
/// `chat.completion.chunk` as JSON, an `{"error": …}` envelope if the generation fails midway,
/// and finally `[DONE]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionEvent {
    pub data: String,
}

/// The bearer scheme: an access token from `POST /api/v1/login`.
#[must_use]
pub fn bearer_scheme() -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "The access_token of POST /api/v1/login: an EdDSA-signed JWT bound to a session",
            ))
            .build(),
    )
}

/// The standalone agent's key: `Authorization: Bearer <AGENT_API_KEY>`, required only when the
/// agent was started with one.
#[must_use]
pub fn agent_key_scheme() -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The key the agent was started with (AGENT_API_KEY, as llama-server's --api-key); \
                 without one the agent's operations are open. A missing or wrong key is 401 \
                 invalid_api_key in OpenAI's error shape.",
            ))
            .build(),
    )
}

/// An example id, for the examples of several operations.
pub const EXAMPLE_ID: &str = "01937a1e-8b2c-7d4e-9f10-2a3b4c5d6e7f";

/// An example error body with `code`, for `json!` examples that need one inline.
#[must_use]
pub fn example_error(code: &str, message: &str) -> serde_json::Value {
    json!({"error": {"code": code, "message": message}})
}
