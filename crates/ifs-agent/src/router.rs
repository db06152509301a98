//! The agent's HTTP routes, the same locally and on Lambda: chat completions at
//! `POST /api/v1/agent` and `POST /v1/chat/completions` (whole, or streamed as OpenAI's server-sent
//! events with `"stream": true`), model information at `GET /api/v1/agent`, and OpenAI's
//! `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json as JsonResponse, Router};
use ifs_api::openai::ChatResponse;
use ifs_api::openai::{ChatChunk, ChatRequest, ChatRole, ChunkChoice, Delta};
use ifs_api::{ApiError, Json, Route};
use ifs_domain::Usage;
use serde_json::Value;

use crate::batch::Reuse;
use crate::engine::TemplateSource;
use crate::service::{AgentService, ChatError, ChatStream, Streamed, extension, finish_reason};

/// Model information, ours.
pub const INFO: Route = Route::get("/api/v1/agent");
/// Chat completions at our path.
pub const COMPLETE: Route = Route::post("/api/v1/agent");
/// Chat completions at OpenAI's path, for OpenAI clients.
pub const CHAT_COMPLETIONS: Route = Route::post("/v1/chat/completions");
/// OpenAI's model list.
pub const MODELS: Route = Route::get("/v1/models");
/// Every route of the agent function, for what maps requests to it.
pub const ROUTES: &[Route] = &[INFO, COMPLETE, CHAT_COMPLETIONS, MODELS];

/// The routes of the agent function.
pub fn router(service: Arc<AgentService>) -> Router {
    // Chat completions carry a dialogue's whole memory: their own body limit, not the edge's.
    let body_limit = DefaultBodyLimit::max(service.limits().body_limit);
    Router::new()
        .route(INFO.path, INFO.to(info))
        .route(COMPLETE.path, COMPLETE.to(complete).layer(body_limit))
        .route(CHAT_COMPLETIONS.path, CHAT_COMPLETIONS.to(complete).layer(body_limit))
        .route(MODELS.path, MODELS.to(models))
        .with_state(service)
}

async fn complete(
    State(service): State<Arc<AgentService>>,
    Json(request): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    if request.stream == Some(true) {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        let stream = service.chat_stream(request).await.map_err(ChatError::into_api_error)?;
        return Ok(Sse::new(chunks(stream, include_usage)).into_response());
    }
    service
        .chat(request)
        .await
        .map(|reply| JsonResponse(reply).into_response())
        .map_err(ChatError::into_api_error)
}

/// Where an OpenAI stream is: the role first, then text, then the end, usage and `[DONE]`.
enum Phase {
    Role,
    Text,
    Usage(Usage),
    Done,
    Over,
}

/// The generation as OpenAI's `chat.completion.chunk` events. Dropping this (the client went
/// away) drops the generation, which stops it.
fn chunks(stream: ChatStream, include_usage: bool) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((stream, Phase::Role), move |(mut stream, phase)| async move {
        let (id, created, model) = (stream.id.clone(), stream.created, stream.model.clone());
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>, ifs: Option<Value>| ChatChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            ifs,
        };
        let delta = |delta: Delta, finish_reason: Option<String>| {
            vec![ChunkChoice { index: 0, delta, finish_reason }]
        };
        let (event, next) = match phase {
            Phase::Role => {
                let role = Delta { role: Some(ChatRole::Assistant), content: None };
                (json_event(&chunk(delta(role, None), None, None)), Phase::Text)
            }
            Phase::Text => match stream.next().await {
                Some(Streamed::Text(text)) => {
                    let content = Delta { role: None, content: Some(text) };
                    (json_event(&chunk(delta(content, None), None, None)), Phase::Text)
                }
                Some(Streamed::End(Ok(completion))) => {
                    let usage = Usage::of(completion.prompt_tokens, completion.completion_tokens);
                    let last = chunk(
                        delta(Delta::default(), Some(finish_reason(completion.finish).into())),
                        None,
                        Some(extension(&completion)),
                    );
                    (json_event(&last), if include_usage { Phase::Usage(usage) } else { Phase::Done })
                }
                Some(Streamed::End(Err(error))) => {
                    (json_event(&error.into_api_error().into_body()), Phase::Over)
                }
                None => return None,
            },
            Phase::Usage(usage) => (json_event(&chunk(Vec::new(), Some(usage), None)), Phase::Done),
            Phase::Done => (Event::default().data("[DONE]"), Phase::Over),
            Phase::Over => return None,
        };
        Some((Ok(event), (stream, next)))
    })
}

fn json_event(value: &impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// The loaded model and the limits requests meet.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentInfo {
    /// The GGUF's `general.name`, or its file name.
    model: String,
    /// The GGUF file's name.
    file: Option<String>,
    parameters: u64,
    size_bytes: u64,
    /// Tokens of one context: prompt and reply together.
    context_size: u32,
    /// The context the model was trained with.
    context_train: u32,
    chat_template: ChatTemplate,
    /// CPU threads per generation.
    threads: u32,
    /// Finished prompts whose KV state is kept for prompts that begin like them
    /// (`AGENT_PROMPT_CACHE`), beside the running generations.
    prompt_cache: u32,
    /// What a next prompt reuses of a kept state (`AGENT_PROMPT_CACHE_REUSE`): `auto`, `exact` or `all`.
    prompt_cache_reuse: Reuse,
    /// Generations that run at once, and that may wait for a turn.
    parallel: usize,
    queue: usize,
    /// `max_tokens` unless a request names one, and the most it may name.
    max_tokens: u32,
    max_tokens_limit: u32,
    /// Largest chat-completions body, in bytes.
    body_limit: usize,
    /// What ifs-guide is not: to show wherever people talk to it.
    disclaimer: &'static str,
}

/// Where the chat template comes from.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ChatTemplate {
    /// Whether the GGUF has one of its own.
    present: bool,
    /// `gguf`, or `built-in` (then `name` says which).
    #[schema(example = "gguf")]
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// OpenAI's model list: the one model this agent serves.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<ModelEntry>,
}

/// One model, as OpenAI lists it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    id: String,
    #[schema(example = "model")]
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

/// The operations of the agent as annotated; [`openapi`] adds the one at OpenAI's path.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(info, complete_ours, models))]
struct Api;

/// The agent's operations, for the OpenAPI document. `POST /v1/chat/completions` is the same
/// handler as `POST /api/v1/agent` under OpenAI's path, so its entry is that one's, renamed,
/// rather than a second annotation to keep in step.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = Api::openapi();
    if let Some(mut operation) = doc.paths.paths.get(COMPLETE.path).and_then(|item| item.post.clone()) {
        operation.operation_id = Some("chat_completions".to_owned());
        operation.summary = Some(
            "The same chat completion at OpenAI's path, for OpenAI's clients (base URL `…/v1`).".to_owned(),
        );
        let item = utoipa::openapi::PathItem::new(utoipa::openapi::HttpMethod::Post, operation);
        doc.paths.paths.insert(CHAT_COMPLETIONS.path.to_owned(), item);
    }
    doc
}

/// The loaded model and the limits requests meet.
#[utoipa::path(
    get,
    path = "/api/v1/agent",
    tag = "agent",
    operation_id = "agent_info",
    security((), ("agent_key" = [])),
    responses(
        (status = 200, description = "The model and its limits", body = AgentInfo),
        (status = 401, response = ifs_api::openapi::Unauthorized),
    )
)]
async fn info(State(service): State<Arc<AgentService>>) -> JsonResponse<AgentInfo> {
    let info = service.engine().info();
    let limits = service.limits();
    let chat_template = match &info.template {
        TemplateSource::Gguf => ChatTemplate { present: true, source: "gguf", name: None },
        TemplateSource::BuiltIn(name) => {
            ChatTemplate { present: false, source: "built-in", name: Some(name.clone()) }
        }
    };
    JsonResponse(AgentInfo {
        model: info.name.clone(),
        file: info.file.file_name().map(|f| f.to_string_lossy().into_owned()),
        parameters: info.parameters,
        size_bytes: info.size_bytes,
        context_size: info.context,
        context_train: info.context_train,
        chat_template,
        threads: info.threads,
        prompt_cache: info.cached_prompts,
        prompt_cache_reuse: info.reuse,
        parallel: service.admission().parallel(),
        queue: service.admission().queue(),
        max_tokens: limits.default_max_tokens,
        max_tokens_limit: limits.max_tokens_limit,
        body_limit: limits.body_limit,
        disclaimer: ifs_domain::DISCLAIMER,
    })
}

/// OpenAI's model list.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "agent",
    operation_id = "list_models",
    security((), ("agent_key" = [])),
    responses(
        (status = 200, description = "The one model served", body = ModelList),
        (status = 401, response = ifs_api::openapi::Unauthorized),
    )
)]
async fn models(State(service): State<Arc<AgentService>>) -> JsonResponse<ModelList> {
    JsonResponse(ModelList {
        object: "list",
        data: vec![ModelEntry {
            id: service.engine().info().name.clone(),
            object: "model",
            created: 0,
            owned_by: "ifs-guide",
        }],
    })
}

/// A chat completion (OpenAI's format): the reply whole, or with `"stream": true` as
/// `chat.completion.chunk` server-sent events ending in `data: [DONE]`.
#[utoipa::path(
    post,
    path = "/api/v1/agent",
    tag = "agent",
    operation_id = "agent_complete",
    security((), ("agent_key" = [])),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The reply, or its stream",
         content((ChatResponse = "application/json"), (ifs_api::openapi::ChatCompletionEvent = "text/event-stream"))),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
#[allow(dead_code)] // documents COMPLETE (and, through `openapi`, CHAT_COMPLETIONS), which `complete` serves
fn complete_ours() {}
