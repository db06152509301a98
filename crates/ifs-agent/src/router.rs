//! The agent's HTTP routes, the same locally and on Lambda: chat completions at
//! `POST /api/v1/agent` and `POST /v1/chat/completions`, model information at `GET /api/v1/agent`,
//! and OpenAI's `GET /v1/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::{Json as JsonResponse, Router};
use ifs_api::openai::{ChatRequest, ChatResponse};
use ifs_api::{ApiError, Json, Route};
use serde_json::{Value, json};

use crate::engine::TemplateSource;
use crate::service::AgentService;

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
    Router::new()
        .route(INFO.path, INFO.to(info))
        .route(COMPLETE.path, COMPLETE.to(complete))
        .route(CHAT_COMPLETIONS.path, CHAT_COMPLETIONS.to(complete))
        .route(MODELS.path, MODELS.to(models))
        .with_state(service)
}

async fn complete(
    State(service): State<Arc<AgentService>>,
    Json(request): Json<ChatRequest>,
) -> Result<JsonResponse<ChatResponse>, ApiError> {
    service.chat(request).await.map(JsonResponse).map_err(crate::service::ChatError::into_api_error)
}

async fn info(State(service): State<Arc<AgentService>>) -> JsonResponse<Value> {
    let info = service.engine().info();
    let limits = service.limits();
    JsonResponse(json!({
        "model": info.name,
        "file": info.file.file_name().map(|f| f.to_string_lossy()),
        "parameters": info.parameters,
        "size_bytes": info.size_bytes,
        "context_size": info.context,
        "context_train": info.context_train,
        "chat_template": match &info.template {
            TemplateSource::Gguf => json!({"present": true, "source": "gguf"}),
            TemplateSource::BuiltIn(name) => json!({"present": false, "source": "built-in", "name": name}),
        },
        "threads": info.threads,
        "parallel": service.admission().parallel(),
        "queue": service.admission().queue(),
        "max_tokens": limits.default_max_tokens,
        "max_tokens_limit": limits.max_tokens_limit,
    }))
}

async fn models(State(service): State<Arc<AgentService>>) -> JsonResponse<Value> {
    JsonResponse(json!({
        "object": "list",
        "data": [{"id": service.engine().info().name, "object": "model", "created": 0, "owned_by": "ifs-guide"}],
    }))
}
