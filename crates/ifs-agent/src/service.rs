//! The agent as a service: OpenAI chat-completions requests in, responses out. Validates the
//! request, waits its turn, runs the engine off the async runtime, and reports usage, truncation
//! and timings. The HTTP routes and the in-process agent both go through [`AgentService::chat`].

use std::sync::Arc;

use axum::http::StatusCode;
use ifs_api::ApiError;
use ifs_api::openai::{ChatRequest, ChatResponse, ChatRole, Choice, ReplyMessage, Stop};
use ifs_domain::Usage;
use serde_json::json;

use crate::engine::{Completion, Engine, EngineError, Finish, Job, Turn, TurnRole};
use ifs_admission::{Admission, Busy};

/// Seconds a client turned away as busy is told to wait.
pub const BUSY_RETRY_AFTER: u64 = 2;
/// OpenAI accepts at most this many stop strings.
const MAX_STOPS: usize = 4;

/// Token limits for one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Used when the request names none.
    pub default_max_tokens: u32,
    /// Requests above this are refused.
    pub max_tokens_limit: u32,
}

/// Why a chat request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    ContextOverflow(EngineError),
    #[error("the agent is busy")]
    Busy,
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl ChatError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), problem: problem.into() }
    }

    /// The API error clients see.
    #[must_use]
    pub fn into_api_error(self) -> ApiError {
        match self {
            Self::Invalid { field, problem } => ApiError::invalid_field(&field, problem),
            Self::Unsupported(what) => ApiError::new(StatusCode::BAD_REQUEST, "unsupported", what),
            Self::ContextOverflow(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "context_overflow", e.to_string())
            }
            Self::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_busy",
                "the agent is busy with other requests; try again shortly",
            )
            .retry_after(BUSY_RETRY_AFTER),
            Self::Failed(cause) => ApiError::internal(cause),
        }
    }
}

/// Receives the exact prompt of every generation; for tests that check what the model saw.
pub type PromptObserver = Arc<dyn Fn(&str) + Send + Sync>;

/// The engine behind admission control.
pub struct AgentService {
    engine: Arc<Engine>,
    admission: Admission,
    limits: Limits,
    observer: Option<PromptObserver>,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("engine", &self.engine)
            .field("admission", &self.admission)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AgentService {
    #[must_use]
    pub fn new(engine: Arc<Engine>, admission: Admission, limits: Limits) -> Self {
        Self { engine, admission, limits, observer: None }
    }

    /// Calls `observer` with each prompt as rendered by the chat template.
    #[must_use]
    pub fn observing_prompts(mut self, observer: PromptObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    #[must_use]
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Answers one chat-completions request.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ChatError> {
        let job = self.job(request)?;
        let permit = self.admission.enter().await.map_err(|Busy| ChatError::Busy)?;
        let engine = Arc::clone(&self.engine);
        // The permit goes with the work: if the caller goes away, the slot stays taken until the
        // generation really ends.
        let completion = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.generate(&job)
        })
        .await
        .map_err(|e| ChatError::Failed(anyhow::anyhow!("generation task failed: {e}")))?
        .map_err(|e| match e {
            overflow @ EngineError::ContextOverflow { .. } => ChatError::ContextOverflow(overflow),
            EngineError::Failed(cause) => ChatError::Failed(cause),
        })?;
        if let Some(observer) = &self.observer {
            observer(&completion.prompt);
        }
        Ok(self.response(completion))
    }

    fn job(&self, request: ChatRequest) -> Result<Job, ChatError> {
        if request.stream == Some(true) {
            return Err(ChatError::Unsupported("stream: streaming responses are not supported yet"));
        }
        if request.messages.is_empty() {
            return Err(ChatError::invalid("messages", "must not be empty"));
        }
        let mut turns = Vec::with_capacity(request.messages.len());
        for (i, message) in request.messages.into_iter().enumerate() {
            if message.content.trim().is_empty() {
                return Err(ChatError::invalid(format!("messages[{i}].content"), "must not be empty"));
            }
            let role = match message.role {
                ChatRole::System => TurnRole::System,
                ChatRole::User => TurnRole::User,
                ChatRole::Assistant => TurnRole::Assistant,
            };
            turns.push(Turn { role, content: message.content });
        }
        if !turns.iter().any(|t| t.role == TurnRole::User) {
            return Err(ChatError::invalid("messages", "must include a user message"));
        }
        let (field, requested) = match (request.max_completion_tokens, request.max_tokens) {
            (Some(n), _) => ("max_completion_tokens", Some(n)),
            (None, n) => ("max_tokens", n),
        };
        let max_tokens = requested.unwrap_or(self.limits.default_max_tokens);
        if !(1..=self.limits.max_tokens_limit).contains(&max_tokens) {
            return Err(ChatError::invalid(
                field,
                format!("must be from 1 to {}", self.limits.max_tokens_limit),
            ));
        }
        let temperature = request.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ChatError::invalid("temperature", "must be from 0 to 2"));
        }
        let top_p = request.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ChatError::invalid("top_p", "must be greater than 0 and at most 1"));
        }
        let stop = match request.stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        };
        if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
            return Err(ChatError::invalid("stop", format!("must be at most {MAX_STOPS} non-empty strings")));
        }
        Ok(Job { turns, max_tokens, temperature, top_p, seed: request.seed, stop })
    }

    fn response(&self, completion: Completion) -> ChatResponse {
        let timings = completion.timings;
        let per_second =
            |tokens: u32, seconds: f64| if seconds > 0.0 { f64::from(tokens) / seconds } else { 0.0 };
        let created = chrono::Utc::now().timestamp();
        ChatResponse {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            object: "chat.completion".into(),
            created,
            model: self.engine.info().name.clone(),
            choices: vec![Choice {
                index: 0,
                message: ReplyMessage { role: ChatRole::Assistant, content: Some(completion.text) },
                finish_reason: Some(
                    match completion.finish {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    }
                    .into(),
                ),
            }],
            usage: Some(Usage::of(completion.prompt_tokens, completion.completion_tokens)),
            ifs: Some(json!({
                "truncated_messages": completion.truncated_messages,
                "timings": {
                    "prompt_ms": timings.prompt.as_secs_f64() * 1000.0,
                    "generation_ms": timings.generation.as_secs_f64() * 1000.0,
                    "time_to_first_token_ms": timings.time_to_first_token.as_secs_f64() * 1000.0,
                    "prompt_tokens_per_second": per_second(completion.prompt_tokens, timings.prompt.as_secs_f64()),
                    "tokens_per_second": per_second(completion.completion_tokens, timings.generation.as_secs_f64()),
                }
            })),
        }
    }
}
