//! The agent as a service: OpenAI chat-completions requests in, responses out. Validates the
//! request, waits its turn, runs the engine off the async runtime, and reports usage, truncation
//! and timings. The HTTP routes and the in-process agent both go through [`AgentService::chat`].

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::http::StatusCode;
use ifs_api::ApiError;
use ifs_api::openai::{ChatRequest, ChatResponse, ChatRole, Choice, ReplyMessage, Stop};
use ifs_domain::Usage;
use serde_json::json;
use tokio::sync::mpsc;

use crate::batch::{OnEnd, OnText};
use crate::engine::{Completion, Engine, EngineError, Finish, Job, Turn, TurnRole};
use ifs_admission::{Admission, Busy};

/// Seconds a client turned away as busy is told to wait.
pub const BUSY_RETRY_AFTER: u64 = 2;
/// OpenAI accepts at most this many stop strings.
const MAX_STOPS: usize = 4;
/// The longest stop string, in characters: every token is searched for each, and four of a
/// million characters made each token cost two seconds.
pub const MAX_STOP_CHARS: usize = 64;
/// The most messages one request may hold: twice the Dialogue Manager's longest memory is far
/// beyond any dialogue it sends, and 50,000 one-character messages took two minutes to trim.
pub const MAX_MESSAGES: usize = 2048;
/// The longest `user`, in characters.
pub const MAX_USER_CHARS: usize = 256;

/// Limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Used when the request names none.
    pub default_max_tokens: u32,
    /// Requests above this are refused.
    pub max_tokens_limit: u32,
    /// Largest chat-completions body, in bytes: a dialogue's memory is many long messages.
    pub body_limit: usize,
}

/// Why a chat request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
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

/// What a streamed generation sends, in order: pieces of text, then how it ended.
#[derive(Debug)]
pub enum Streamed {
    Text(String),
    End(Result<Completion, ChatError>),
}

/// A generation under way. Dropping it ends the generation at the decode loop's next step and
/// frees its slot.
#[derive(Debug)]
pub struct ChatStream {
    /// One id, creation time and model name for every chunk of the stream.
    pub id: String,
    pub created: i64,
    pub model: String,
    events: mpsc::UnboundedReceiver<Streamed>,
    ended: bool,
}

impl ChatStream {
    /// The next event; after `End`, None. A generation that died without saying how it ended
    /// (a panic) ends as a failure.
    pub async fn next(&mut self) -> Option<Streamed> {
        if self.ended {
            return None;
        }
        let event = self.events.recv().await.unwrap_or_else(|| {
            Streamed::End(Err(ChatError::Failed(anyhow::anyhow!("the generation ended without a result"))))
        });
        self.ended = matches!(event, Streamed::End(_));
        Some(event)
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

    /// Answers one chat-completions request, whole.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ChatError> {
        let mut stream = self.chat_stream(request).await?;
        let model = stream.model.clone();
        while let Some(event) = stream.next().await {
            if let Streamed::End(end) = event {
                return end.map(|completion| self.response(completion, model));
            }
        }
        Err(ChatError::Failed(anyhow::anyhow!("the generation ended without a result")))
    }

    /// Starts answering one chat-completions request as a stream of text. Validation and
    /// admission come first: a refused request never starts a stream.
    pub async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, ChatError> {
        let job = self.job(request)?;
        let permit = self.admission.enter().await.map_err(|Busy| ChatError::Busy)?;
        let observer = self.observer.clone();
        let (sender, events) = mpsc::unbounded_channel();
        // The decode loop asks after every step whether anyone still reads the stream, and ends
        // the generation at once when nobody does.
        let on_text: OnText = {
            let sender = sender.clone();
            Box::new(move |text| {
                if sender.is_closed()
                    || (!text.is_empty() && sender.send(Streamed::Text(text.to_owned())).is_err())
                {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        };
        // The permit goes with the work and comes back when it ends.
        let on_end: OnEnd = Box::new(move |result| {
            if let (Ok(completion), Some(observer)) = (&result, &observer) {
                observer(&completion.prompt);
            }
            let end = result.map_err(|e| match e {
                overflow @ (EngineError::ContextOverflow { .. } | EngineError::TooLong { .. }) => {
                    ChatError::ContextOverflow(overflow)
                }
                EngineError::Failed(cause) => ChatError::Failed(cause),
            });
            // The slot is free before anyone hears the generation ended: whoever asks next as
            // soon as a reply arrives finds it free.
            drop(permit);
            // Nobody may be listening any more; that is how a cancelled stream ends.
            let _ = sender.send(Streamed::End(end));
        });
        // Fitting the prompt tokenizes the messages: CPU work, off the async runtime.
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || engine.start(job, on_text, on_end));
        Ok(ChatStream {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            created: chrono::Utc::now().timestamp(),
            model: self.engine.info().name.clone(),
            events,
            ended: false,
        })
    }

    fn job(&self, request: ChatRequest) -> Result<Job, ChatError> {
        job(request, self.limits)
    }

    fn response(&self, completion: Completion, model: String) -> ChatResponse {
        ChatResponse {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            object: "chat.completion".into(),
            created: chrono::Utc::now().timestamp(),
            model,
            choices: vec![Choice {
                index: 0,
                message: ReplyMessage { role: ChatRole::Assistant, content: Some(completion.text.clone()) },
                finish_reason: Some(finish_reason(completion.finish).into()),
            }],
            usage: Some(Usage::of(completion.prompt_tokens, completion.completion_tokens)),
            ifs: Some(extension(&completion)),
        }
    }
}

/// OpenAI's name for how a generation ended.
#[must_use]
pub fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Cancelled => "cancelled",
    }
}

/// ifs-guide's extension of a reply: truncation, the prompt cache and timings.
#[must_use]
pub fn extension(completion: &Completion) -> serde_json::Value {
    let timings = completion.timings;
    let per_second =
        |tokens: u32, seconds: f64| if seconds > 0.0 { f64::from(tokens) / seconds } else { 0.0 };
    let evaluated = completion.prompt_tokens - completion.cached_tokens;
    json!({
        "truncated_messages": completion.truncated_messages,
        "cached_prompt_tokens": completion.cached_tokens,
        "timings": {
            "prompt_ms": timings.prompt.as_secs_f64() * 1000.0,
            "generation_ms": timings.generation.as_secs_f64() * 1000.0,
            "time_to_first_token_ms": timings.time_to_first_token.as_secs_f64() * 1000.0,
            "prompt_tokens_per_second": per_second(evaluated, timings.prompt.as_secs_f64()),
            "tokens_per_second": per_second(completion.completion_tokens, timings.generation.as_secs_f64()),
        }
    })
}

/// What the engine is asked to do for `request`, or which field makes it unacceptable.
fn job(request: ChatRequest, limits: Limits) -> Result<Job, ChatError> {
    if request.messages.is_empty() {
        return Err(ChatError::invalid("messages", "must not be empty"));
    }
    if request.messages.len() > MAX_MESSAGES {
        return Err(ChatError::invalid("messages", format!("must be at most {MAX_MESSAGES}")));
    }
    if request.user.as_ref().is_some_and(|user| user.chars().count() > MAX_USER_CHARS) {
        return Err(ChatError::invalid("user", format!("must be at most {MAX_USER_CHARS} characters")));
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
    let max_tokens = requested.unwrap_or(limits.default_max_tokens);
    if !(1..=limits.max_tokens_limit).contains(&max_tokens) {
        return Err(ChatError::invalid(field, format!("must be from 1 to {}", limits.max_tokens_limit)));
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
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS) {
        return Err(ChatError::invalid(
            "stop",
            format!("must be at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters"),
        ));
    }
    Ok(Job { turns, max_tokens, temperature, top_p, seed: request.seed, stop, cache_key: request.user })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const LIMITS: Limits = Limits { default_max_tokens: 256, max_tokens_limit: 1024, body_limit: 1 << 20 };

    /// Any JSON scalar a careless client might send in any field.
    fn loose() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
            ".{0,6}".prop_map(Value::from),
        ]
    }

    fn message() -> impl Strategy<Value = Value> {
        let role = prop_oneof![
            4 => prop::sample::select(vec!["user", "assistant", "system"]).prop_map(Value::from),
            1 => prop::sample::select(vec!["tool", "User", ""]).prop_map(Value::from),
            1 => loose(),
        ];
        let content = prop_oneof![
            4 => ".{1,20}".prop_map(Value::from),
            1 => prop::sample::select(vec!["", "  \n\t"]).prop_map(Value::from),
            1 => loose(),
        ];
        (role, content).prop_map(|(role, content)| json!({"role": role, "content": content}))
    }

    /// A field's value: absent, plausible, at its edges, or anything at all.
    fn field(plausible: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![2 => Just(None), 3 => plausible.prop_map(Some), 1 => loose().prop_map(Some)]
    }

    fn request() -> impl Strategy<Value = Value> {
        let tokens =
            prop_oneof![(0_i64..=1100).prop_map(Value::from), Just(json!(u32::MAX)), Just(json!(-1))];
        let unit = (-0.5_f64..2.5).prop_map(Value::from);
        let stop = prop_oneof![
            ".{0,4}".prop_map(Value::from),
            prop::collection::vec(".{0,4}", 0..6).prop_map(Value::from),
            prop::collection::vec(".{60,70}", 1..3).prop_map(Value::from),
        ];
        (
            prop::collection::vec(message(), 0..4),
            (field(tokens.clone()), field(tokens), field(unit.clone()), field(unit)),
            (
                field(stop),
                field(any::<u64>().prop_map(Value::from)),
                field(any::<bool>().prop_map(Value::from)),
                field(prop_oneof![".{0,3}".prop_map(Value::from), ".{250,260}".prop_map(Value::from)]),
            ),
        )
            .prop_map(
                |(
                    messages,
                    (max_tokens, max_completion_tokens, temperature, top_p),
                    (stop, seed, stream, user),
                )| {
                    let mut request = json!({"messages": messages});
                    for (name, value) in [
                        ("max_tokens", max_tokens),
                        ("max_completion_tokens", max_completion_tokens),
                        ("temperature", temperature),
                        ("top_p", top_p),
                        ("stop", stop),
                        ("seed", seed),
                        ("stream", stream),
                        ("user", user),
                    ] {
                        if let Some(value) = value {
                            request[name] = value;
                        }
                    }
                    request
                },
            )
    }

    #[test]
    fn too_many_messages_long_stops_and_long_users_are_refused_before_any_work() {
        let say = |n: usize| json!({"messages": vec![json!({"role": "user", "content": "x"}); n]});
        let refused = |body: Value| match job(serde_json::from_value(body).unwrap(), LIMITS) {
            Err(ChatError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert!(job(serde_json::from_value(say(MAX_MESSAGES)).unwrap(), LIMITS).is_ok());
        assert_eq!(refused(say(MAX_MESSAGES + 1)), "messages");
        let mut body = say(1);
        body["stop"] = json!(["x".repeat(MAX_STOP_CHARS + 1)]);
        assert_eq!(refused(body), "stop");
        let mut body = say(1);
        body["user"] = json!("u".repeat(MAX_USER_CHARS + 1));
        assert_eq!(refused(body), "user");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever a client sends, the agent either cannot read it (the JSON extractor's 400) or
        /// makes a job that keeps every limit, or refuses it as a 400 naming the field at fault.
        #[test]
        fn every_request_becomes_a_job_within_limits_or_a_400_naming_its_field(body in request()) {
            let Ok(request) = serde_json::from_value::<ChatRequest>(body.clone()) else { return Ok(()) };
            match job(request.clone(), LIMITS) {
                Ok(job) => {
                    prop_assert!((1..=LIMITS.max_tokens_limit).contains(&job.max_tokens));
                    prop_assert!((0.0..=2.0).contains(&job.temperature) && job.top_p > 0.0 && job.top_p <= 1.0);
                    prop_assert!(job.turns.iter().any(|t| t.role == TurnRole::User));
                    prop_assert!(job.turns.iter().all(|t| !t.content.trim().is_empty()));
                    prop_assert!(job.stop.len() <= MAX_STOPS && job.stop.iter().all(|s| !s.is_empty() && s.chars().count() <= MAX_STOP_CHARS));
                    prop_assert!(job.turns.len() <= MAX_MESSAGES);
                    prop_assert_eq!(job.cache_key, request.user.clone());
                    prop_assert_eq!(job.turns.len(), request.messages.len());
                }
                Err(ChatError::Invalid { field, problem }) => {
                    let at_fault = match field.as_str() {
                        "messages" => request.messages.is_empty()
                            || request.messages.len() > MAX_MESSAGES
                            || !request.messages.iter().any(|m| m.role == ChatRole::User),
                        "user" => request.user.as_ref().is_some_and(|u| u.chars().count() > MAX_USER_CHARS),
                        "max_tokens" | "max_completion_tokens" => {
                            let n = request.max_completion_tokens.or(request.max_tokens).unwrap_or(0);
                            n == 0 || n > LIMITS.max_tokens_limit
                        }
                        "temperature" => !(0.0..=2.0).contains(&request.temperature.unwrap_or(1.0)),
                        "top_p" => request.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)),
                        "stop" => true,
                        content => content.starts_with("messages[") && content.ends_with("].content"),
                    };
                    prop_assert!(at_fault, "{}: {} for {}", field, problem, body);
                    let error = ChatError::Invalid { field, problem }.into_api_error();
                    prop_assert_eq!(error.status(), StatusCode::BAD_REQUEST);
                }
                Err(other) => prop_assert!(false, "{other} for {body}"),
            }
        }
    }
}
