//! `POST /api/v1/dialogue`: starts a dialogue with a first message, or continues one named by
//! `dialogue_id`. The user's message is stored before the agent is asked, so nothing the user
//! wrote is lost if the agent fails; the reply is appended after it. Each user may send a limited
//! number of turns a minute, so that no account can fill the store, even while the agent fails.
//!
//! With `"stream": true` (or `Accept: text/event-stream`) the answer is a stream of named
//! server-sent events: `message` (the stored user message), `delta`s of the reply as the agent
//! produces it, then `reply` (the stored reply) or `error`. The stream's work runs in its own task,
//! so a client that goes away stops the generation and what was produced is still stored.

use std::sync::Arc;
use std::time::Duration;

mod admit;
pub mod lambda_agent;
pub mod safety;

use std::convert::Infallible;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use ifs_api::agent::{Agent, AgentError, AgentEvent, Finished};
use ifs_api::openai::{ChatMessage, ChatRequest, ChatRole};
use ifs_api::views::MessageView;
use ifs_api::{ApiError, AuthUser, Json, Route};
use ifs_auth::Authenticator;
use ifs_domain::dialogue::{MESSAGE_MAX, memory_window};
use ifs_domain::{Clock, DialogueId, Message, MessageId, MessageText, NewMessage, ReplyMeta, Role};
use ifs_store::{Counter, Counters, DialogueStore};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::admit::TurnLease;
use crate::safety::{Decision, Locale};

/// Largest request body of this route. A message may hold [`MESSAGE_MAX`] characters however
/// JSON escapes them, and the longest escape is 12 bytes (`\ud83e\udd80`, a surrogate pair):
/// 16,000 × 12 = 192,000 bytes, plus room for the other fields.
pub const BODY_LIMIT: usize = 256 * 1024;

/// The window of the per-user turn limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How the dialogue talks to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogueSettings {
    /// Sent first, as the system message, on every turn.
    pub system_prompt: String,
    /// How many messages before the new one go along as memory.
    pub memory_messages: usize,
    /// The `model` field of requests to the agent.
    pub model: String,
    /// How long to wait for the agent's reply; when streaming, for each piece of it.
    pub agent_timeout: Duration,
    /// Turns one user may send per minute.
    pub turns_per_minute: u32,
    /// The longest `max_tokens` the agent takes (its `AGENT_MAX_TOKENS_LIMIT`): a turn asking for
    /// more is refused before anything is stored.
    pub max_tokens_limit: u32,
    /// Turns of one user answered at once.
    pub concurrent_turns: u32,
    /// Agent tokens one user may use per UTC day; 0 is no limit.
    pub daily_token_limit: u32,
}

impl DialogueSettings {
    /// The settings `config` gives, for an agent that takes `max_tokens` up to `max_tokens_limit`.
    #[must_use]
    pub fn new(config: &ifs_api::config::DialogueConfig, max_tokens_limit: u32) -> Self {
        Self {
            system_prompt: config.system_prompt.clone(),
            memory_messages: config.memory_messages as usize,
            model: config.agent_model.clone(),
            agent_timeout: config.agent_timeout(),
            turns_per_minute: config.dialogue_rate_limit,
            max_tokens_limit,
            concurrent_turns: config.dialogue_concurrent_turns,
            daily_token_limit: config.quota.daily_token_limit,
        }
    }
}

/// What the Dialogue Manager needs.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct DialogueState {
    pub auth: Authenticator,
    pub dialogues: Arc<dyn DialogueStore>,
    /// Read for the person's country when a turn needs crisis resources.
    pub users: Arc<dyn ifs_store::UserStore>,
    pub counters: Arc<dyn Counters>,
    pub agent: Arc<dyn Agent>,
    /// Screens every turn before the agent is asked, and every reply before it is given.
    pub screener: Arc<dyn ifs_safety::Screener>,
    /// Where every screening is counted, by day, level and screener, without identifiers.
    pub safety_counts: Arc<dyn ifs_store::SafetyCounts>,
    pub settings: Arc<DialogueSettings>,
    pub clock: Arc<dyn Clock>,
}

/// The screener `config` asks for: the built-in phrase list, and the classifier at SAFETY_URL if
/// one is set.
///
/// # Errors
/// A SAFETY_URL that is not http(s).
pub fn screener(config: &ifs_api::config::SafetyConfig) -> anyhow::Result<Arc<dyn ifs_safety::Screener>> {
    // Compiled now, at start-up (a Lambda's init), not in the first person's turn.
    let _ = (ifs_safety::PhraseList::built_in(), ifs_safety::Directory::built_in());
    let classifier = config
        .safety_url
        .as_ref()
        .map(|url| {
            let timeout = Duration::from_millis(config.safety_timeout_ms);
            ifs_safety::Classifier::new(url.as_str(), &config.safety_model, timeout)
        })
        .transpose()?;
    Ok(Arc::new(ifs_safety::Combined { built_in: ifs_safety::BuiltIn::default(), classifier }))
}

/// The one route of this function.
pub const DIALOGUE: Route = Route::post("/api/v1/dialogue");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[DIALOGUE];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: DialogueState) -> Router {
    Router::new()
        .route(DIALOGUE.path, DIALOGUE.to(dialogue).layer(DefaultBodyLimit::max(BODY_LIMIT)))
        .with_state(state)
}

/// One turn: a new dialogue's first message, the next message of `dialogue_id`, or with
/// `regenerate` another reply to the last message of `dialogue_id`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"message": "I keep putting off a call to my sister.", "stream": false}))]
pub struct DialogueRequest {
    /// At most 16,000 characters, at least one of them visible; required unless `regenerate`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 16000)]
    message: Option<String>,
    /// The dialogue to continue (the id of its first message); absent, a new one starts.
    #[serde(default)]
    #[schema(format = Uuid)]
    dialogue_id: Option<String>,
    /// Ask the agent again for the dialogue's last user message, without a `message`: the new
    /// reply becomes the last reply's current version, the earlier ones are kept (at most 10).
    /// Counts as a turn for every limit.
    #[serde(default)]
    regenerate: Option<bool>,
    /// With `regenerate`: the reply meant; if it is no longer the last, 409 `not_last_reply`.
    #[serde(default)]
    #[schema(format = Uuid)]
    reply_id: Option<String>,
    /// Longest reply, in tokens; at most the agent's `AGENT_MAX_TOKENS_LIMIT` (1024 unless set).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024)]
    max_tokens: Option<u32>,
    /// 0 answers deterministically.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f32>,
    /// Answer as server-sent events (`message`, `delta`s, then `reply` or `error`), as
    /// `Accept: text/event-stream` also asks.
    #[serde(default)]
    stream: Option<bool>,
}

/// The turn as stored: the user's message and the agent's reply after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DialogueResponse {
    #[schema(value_type = String, format = Uuid)]
    dialogue_id: DialogueId,
    message: MessageView,
    reply: MessageView,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(dialogue))]
pub struct Api;

/// What a turn asks for.
enum Ask {
    /// A new message, which is stored.
    Say(MessageText),
    /// Another reply to the last message; the reply meant, if the client named it.
    Regenerate(Option<MessageId>),
}

/// A validated turn.
struct Turn {
    ask: Ask,
    dialogue: Option<DialogueId>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    stream: bool,
}

impl Turn {
    /// Checks `request` against what this deployment's agent takes.
    fn parse(request: DialogueRequest, settings: &DialogueSettings) -> Result<Self, ApiError> {
        let dialogue = request
            .dialogue_id
            .as_deref()
            .map(DialogueId::parse)
            .transpose()
            .map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
        let ask = if request.regenerate == Some(true) {
            if request.message.is_some() {
                return Err(ApiError::invalid_field("message", "must be absent when regenerating"));
            }
            if dialogue.is_none() {
                return Err(ApiError::invalid_field("dialogue_id", "is required to regenerate a reply"));
            }
            let reply = request
                .reply_id
                .as_deref()
                .map(MessageId::parse)
                .transpose()
                .map_err(|e| ApiError::invalid_field("reply_id", e))?;
            Ask::Regenerate(reply)
        } else {
            if request.reply_id.is_some() {
                return Err(ApiError::invalid_field("reply_id", "is only for regenerating"));
            }
            let message = request.message.ok_or_else(|| ApiError::invalid_field("message", "is required"))?;
            Ask::Say(MessageText::parse(message).map_err(|e| ApiError::invalid_field("message", e))?)
        };
        let limit = settings.max_tokens_limit;
        if let Some(n) = request.max_tokens
            && !(1..=limit).contains(&n)
        {
            return Err(ApiError::invalid_field("max_tokens", format!("must be from 1 to {limit}")));
        }
        if let Some(t) = request.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid_field("temperature", "must be from 0 to 2"));
        }
        Ok(Self {
            ask,
            dialogue,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stream: request.stream.unwrap_or(false),
        })
    }
}

fn role(role: Role) -> ChatRole {
    match role {
        Role::User => ChatRole::User,
        Role::Assistant => ChatRole::Assistant,
    }
}

/// The prompt: system message, then memory oldest first, then the new message.
fn prompt(settings: &DialogueSettings, memory: &[Message], new: &Message) -> Vec<ChatMessage> {
    let system = ChatMessage { role: ChatRole::System, content: settings.system_prompt.clone() };
    let turns =
        memory.iter().chain([new]).map(|m| ChatMessage { role: role(m.role), content: m.content.clone() });
    std::iter::once(system).chain(turns).collect()
}

/// The `user` the agent is told: the same for every turn of one user, so the agent can keep
/// each user's prompt cache apart, and telling it nothing else (not the email, not the id).
fn agent_user(owner: ifs_domain::UserId) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("ifs-guide user {owner}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The error for an agent that turned the turn away before anything was stored.
fn busy(error: &AgentError) -> ApiError {
    let retry_after = match error {
        AgentError::Busy { retry_after } => *retry_after,
        _ => 2,
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "agent_busy",
        "the agent is busy with other conversations; nothing was stored, send your message again shortly",
    )
    .retry_after(retry_after)
}

/// The error for a failed agent call; the body says where the user's message was kept.
fn agent_failed(error: &AgentError, kept: &Message) -> ApiError {
    let failure = match error {
        AgentError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "agent_timeout",
            "the agent did not answer in time; your message was kept",
        ),
        AgentError::Unavailable(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_unavailable",
            "the agent could not answer; your message was kept",
        ),
        AgentError::Busy { retry_after } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_busy",
            "the agent is busy; your message was kept, try again shortly",
        )
        .retry_after(*retry_after),
        // The agent's own verdict (e.g. context_overflow) is about this request: pass it on.
        AgentError::Rejected { code, message } => {
            ApiError::new(StatusCode::BAD_REQUEST, code, format!("{message}; your message was kept"))
        }
    };
    failure
        .with("dialogue_id", kept.dialogue_id.to_string())
        .with("message_id", kept.id.to_string())
        .caused_by(anyhow::anyhow!("{error}"))
}

/// Cuts a reply to what a message may hold, on a character boundary.
fn fit(reply: &str) -> &str {
    fit_after(0, reply)
}

/// Cuts `piece` to what a message may still hold after `characters` characters.
fn fit_after(characters: usize, piece: &str) -> &str {
    let room = MESSAGE_MAX.saturating_sub(characters);
    piece.char_indices().nth(room).map_or(piece, |(at, _)| &piece[..at])
}

/// Whether the client asked for an event stream by its `Accept` header.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |media| media.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream")),
    )
}

/// A turn whose user message is stored, ready to ask the agent.
struct Asked {
    owner: ifs_domain::UserId,
    message: Message,
    request: ChatRequest,
    status: StatusCode,
    /// The reply being regenerated, which the new one replaces; none for a new message.
    regenerates: Option<MessageId>,
    /// What screening the turn decided; at crisis the agent is not asked.
    safety: Decision,
}

/// Sends a message and answers with the agent's reply, both stored. Without `dialogue_id` a new
/// dialogue starts (201); with it, the dialogue continues (200). The user's message is stored
/// before the agent is asked: if the agent fails, the error names where it was kept.
#[utoipa::path(
    post,
    path = "/api/v1/dialogue",
    tag = "dialogues",
    operation_id = "dialogue",
    security(("bearer" = [])),
    request_body = DialogueRequest,
    responses(
        (status = 200, description = "The dialogue continued",
         content(
            (DialogueResponse = "application/json"),
            (ifs_api::openapi::DialogueEvent = "text/event-stream"),
         ),
         links(("messages" = (operation_id = "messages",
            parameters(("dialogue_id" = "$response.body#/dialogue_id")),
            description = "The dialogue's messages")))),
        (status = 201, description = "A new dialogue started",
         content(
            (DialogueResponse = "application/json"),
            (ifs_api::openapi::DialogueEvent = "text/event-stream"),
         ),
         links(("messages" = (operation_id = "messages",
            parameters(("dialogue_id" = "$response.body#/dialogue_id")),
            description = "The dialogue's messages")))),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 429, response = ifs_api::openapi::TooManyRequests),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 502, response = ifs_api::openapi::BadGateway),
        (status = 503, response = ifs_api::openapi::Unavailable),
        (status = 504, response = ifs_api::openapi::GatewayTimeout),
    )
)]
async fn dialogue(
    AuthUser(principal): AuthUser,
    State(state): State<DialogueState>,
    headers: HeaderMap,
    Json(request): Json<DialogueRequest>,
) -> Result<Response, ApiError> {
    let turn = Turn::parse(request, &state.settings)?;
    let stream = turn.stream || accepts_event_stream(&headers);
    let locale = Locale::of(&headers);
    let (asked, lease) = store_and_ask(&state, &principal, turn, &locale).await?;
    if stream {
        let status = asked.status;
        return Ok((status, Sse::new(streamed(state, asked, lease))).into_response());
    }
    buffered(&state, asked, lease).await.map(IntoResponse::into_response)
}

/// Checks the turn limits, stores the user's message, screens it and builds the agent's request.
/// Every refusal comes before the message is stored. A message screened as a crisis is taken
/// whatever the daily quota and however busy the agent: it will not be asked.
async fn store_and_ask(
    state: &DialogueState,
    principal: &ifs_auth::Principal,
    turn: Turn,
    locale: &Locale,
) -> Result<(Asked, TurnLease), ApiError> {
    let owner = principal.user_id;
    let now = state.clock.now();
    let turns = state.counters.hit(Counter::DialogueTurns(owner), now, RATE_WINDOW).await?;
    if turns.hits > state.settings.turns_per_minute {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("at most {} messages a minute; try again shortly", state.settings.turns_per_minute),
        )
        .retry_after(turns.seconds_left(now)));
    }
    let said = match &turn.ask {
        Ask::Say(text) => Some(safety::screen_text(state, text.as_str()).await),
        Ask::Regenerate(_) => None,
    };
    let crisis = said.as_ref().is_some_and(|s| s.level == ifs_domain::SafetyLevel::Crisis);
    if !crisis {
        within_quota(state, owner, now).await?;
    }
    let id = MessageId::generate();
    let lease = TurnLease::take(state, owner, id).await?;
    if !crisis {
        state.agent.admits().map_err(|error| busy(&error))?;
    }
    let (message, memory, status, regenerates) = match (turn.ask, turn.dialogue) {
        (Ask::Say(text), dialogue) => {
            let new = NewMessage { id, role: Role::User, content: text, created_at: now, meta: None };
            let (message, status) = match dialogue {
                None => {
                    let started = state.dialogues.start_dialogue(owner, new).await?;
                    ifs_api::keep_if_signed_in(
                        &state.auth,
                        state.dialogues.as_ref(),
                        principal,
                        started.dialogue_id,
                    )
                    .await?;
                    (started, StatusCode::CREATED)
                }
                Some(id) => (state.dialogues.append_message(owner, id, new).await?, StatusCode::OK),
            };
            let window = recall(message.seq - 1, state.settings.memory_messages);
            let memory =
                state.dialogues.messages_before(owner, message.dialogue_id, message.seq, window).await?;
            (message, memory, status, None)
        }
        (Ask::Regenerate(meant), Some(dialogue)) => {
            let (message, memory, reply) = last_exchange(state, owner, dialogue, meant).await?;
            (message, memory, StatusCode::OK, Some(reply))
        }
        (Ask::Regenerate(_), None) => {
            return Err(ApiError::invalid_field("dialogue_id", "is required to regenerate a reply"));
        }
    };
    let screening = match said {
        Some(screening) => screening,
        None => safety::screen_text(state, &message.content).await,
    };
    let safety = safety::decide(state, owner, screening, &memory, locale).await;
    let memory = &memory
        [memory.len().saturating_sub(memory_window(message.seq - 1, state.settings.memory_messages))..];
    let mut messages = prompt(&state.settings, memory, &message);
    if safety.level == ifs_domain::SafetyLevel::Elevated {
        let instruction = ifs_safety::Directory::built_in().elevated_instruction();
        messages[0].content = format!("{}\n\n{instruction}", messages[0].content);
    }
    let request = ChatRequest {
        model: Some(state.settings.model.clone()),
        messages,
        max_tokens: turn.max_tokens,
        temperature: turn.temperature,
        user: Some(agent_user(owner)),
        ..ChatRequest::default()
    };
    Ok((Asked { owner, message, request, status, regenerates, safety }, lease))
}

/// How many of the `before` messages before a turn's to read: its memory, and at least those a
/// crisis is carried over (the prompt takes only the memory).
fn recall(before: u64, memory_messages: usize) -> usize {
    let carry = usize::try_from(before).unwrap_or(usize::MAX).min(safety::CARRY_MESSAGES);
    memory_window(before, memory_messages).max(carry)
}

/// What regenerating asks the agent about: the user's last message and the memory before it,
/// and the reply after it that will be replaced. Refused (409) unless the dialogue ends with a
/// reply to a message of the user's, and, if the client named a reply, that it is that one.
async fn last_exchange(
    state: &DialogueState,
    owner: ifs_domain::UserId,
    dialogue: DialogueId,
    meant: Option<MessageId>,
) -> Result<(Message, Vec<Message>, MessageId), ApiError> {
    let summary = state.dialogues.dialogue(owner, dialogue).await?;
    if meant.is_some_and(|reply| reply != summary.tail_id) {
        return Err(ifs_store::StoreError::from(ifs_domain::RegenerateRefusal::NotLastReply).into());
    }
    let window = recall(summary.message_count.saturating_sub(2), state.settings.memory_messages);
    let mut last =
        state.dialogues.messages_before(owner, dialogue, summary.message_count + 1, window + 2).await?;
    let no_reply = || ApiError::from(ifs_store::StoreError::from(ifs_domain::RegenerateRefusal::NoReply));
    let reply = last.pop().filter(|m| m.role == Role::Assistant).ok_or_else(no_reply)?;
    let message = last.pop().filter(|m| m.role == Role::User).ok_or_else(no_reply)?;
    Ok((message, last, reply.id))
}

/// Refuses a turn once the user's agent tokens today reached the daily limit, until midnight UTC.
async fn within_quota(
    state: &DialogueState,
    owner: ifs_domain::UserId,
    now: ifs_domain::Timestamp,
) -> Result<(), ApiError> {
    let limit = state.settings.daily_token_limit;
    if limit == 0 {
        return Ok(());
    }
    match state.counters.peek(Counter::TokensToday(owner), now).await? {
        Some(used) if used.hits >= limit => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("today's {limit} agent tokens are used up; the quota starts again at midnight UTC"),
        )
        .retry_after(used.seconds_left(now))),
        _ => Ok(()),
    }
}

/// Counts a reply's tokens against its user's day (UTC). The reply is stored already: a count that
/// cannot be kept is logged, not turned into a failed turn.
async fn count_tokens(state: &DialogueState, owner: ifs_domain::UserId, usage: Option<ifs_domain::Usage>) {
    let Some(usage) = usage else { return };
    let spent = usage
        .total_tokens
        .or_else(|| Some(usage.prompt_tokens?.saturating_add(usage.completion_tokens?)))
        .or(usage.prompt_tokens)
        .or(usage.completion_tokens);
    let Some(spent) = spent.filter(|n| *n > 0) else { return };
    // Without a limit nothing is counted: a write per turn that nothing reads.
    if state.settings.daily_token_limit == 0 {
        return;
    }
    let now = state.clock.now();
    let counted =
        state.counters.add(Counter::TokensToday(owner), spent, now, ifs_domain::next_utc_midnight(now)).await;
    if let Err(error) = counted {
        tracing::warn!(error = %error, spent, "a reply's tokens were not counted against the quota");
    }
}

/// Appends the agent's reply after the user's message, with the safety note it carries.
async fn store_reply(
    state: &DialogueState,
    asked: &Asked,
    content: &str,
    finished: Finished,
    safety: Option<ifs_domain::SafetyNote>,
) -> Result<Message, ApiError> {
    let text = MessageText::parse(fit(content).to_owned())
        .map_err(|_| agent_failed(&AgentError::Unavailable("the reply was empty".into()), &asked.message))?;
    let finished_usage = finished.usage;
    let reply = NewMessage {
        id: MessageId::generate(),
        role: Role::Assistant,
        content: text,
        created_at: state.clock.now(),
        meta: Some(ReplyMeta {
            model: Some(finished.model).filter(|m| !m.is_empty()),
            finish_reason: finished.finish_reason,
            usage: finished.usage,
            truncated_messages: finished.truncated_messages.filter(|n| *n > 0),
            version: None,
            safety,
        }),
    };
    // Spent whether or not the reply can still be stored.
    count_tokens(state, asked.owner, finished_usage).await;
    let dialogue = asked.message.dialogue_id;
    Ok(match asked.regenerates {
        Some(old) => state.dialogues.replace_reply(asked.owner, dialogue, old, reply).await?,
        None => state.dialogues.append_message(asked.owner, dialogue, reply).await?,
    })
}

/// The whole reply in one JSON answer.
async fn buffered(
    state: &DialogueState,
    asked: Asked,
    lease: TurnLease,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let (content, finished, note) = if asked.safety.level == ifs_domain::SafetyLevel::Crisis {
        crisis_reply(&asked.safety)
    } else {
        let timeout = state.settings.agent_timeout;
        let answer = tokio::time::timeout(timeout, state.agent.complete(asked.request.clone()))
            .await
            .unwrap_or(Err(AgentError::Timeout(timeout)))
            .map_err(|e| agent_failed(&e, &asked.message))?;
        let choice = answer.choices.into_iter().next();
        let finish_reason = choice.as_ref().and_then(|c| c.finish_reason.clone());
        let content = choice.and_then(|c| c.message.content).unwrap_or_default();
        let truncated_messages = ifs_api::agent::truncated_messages(answer.ifs.as_ref());
        let finished =
            Finished { finish_reason, model: answer.model, usage: answer.usage, truncated_messages };
        if safety::reply_is_unsafe(state, &asked.safety, &asked.message.content, &content).await {
            // The tokens were spent all the same.
            count_tokens(state, asked.owner, finished.usage).await;
            crisis_reply(&asked.safety)
        } else {
            (content, finished, asked.safety.note())
        }
    };
    let reply = store_reply(state, &asked, &content, finished, note).await?;
    lease.release().await;
    let mut message = asked.message;
    // The stored copy of the user's message was read before the reply was linked after it.
    if reply.prev_id == Some(message.id) {
        message.next_id = Some(reply.id);
    }
    let body =
        DialogueResponse { dialogue_id: message.dialogue_id, message: message.into(), reply: reply.into() };
    Ok((asked.status, axum::Json(body)))
}

/// The fixed crisis reply, as it is stored: `finish_reason` "safety", no model, no usage.
fn crisis_reply(decision: &Decision) -> (String, Finished, Option<ifs_domain::SafetyNote>) {
    let finished = Finished { finish_reason: Some("safety".into()), ..Finished::default() };
    (decision.crisis_reply(), finished, Some(decision.crisis_note()))
}

/// How a streamed reply ended, for what is stored.
enum Ending {
    Finished(Finished),
    /// The reply crossed into what must not be given: it was cut, and is replaced.
    Unsafe,
    /// The client went away: the generation was stopped.
    Cancelled,
    /// The agent failed before or during the reply.
    Failed(AgentError),
}

/// A stored message in a stream, with the dialogue it belongs to (a new dialogue's id is news).
#[derive(Debug, Serialize)]
struct StreamedMessage {
    dialogue_id: DialogueId,
    #[serde(flatten)]
    message: MessageView,
}

impl From<Message> for StreamedMessage {
    fn from(message: Message) -> Self {
        Self { dialogue_id: message.dialogue_id, message: message.into() }
    }
}

fn named(name: &str, value: &impl Serialize) -> Event {
    Event::default().event(name).data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// The turn as events. The work runs in a task of its own that outlives the response: when the
/// client goes away, the task notices (the events' receiver is gone), drops the agent's stream to
/// stop the generation, and stores what was produced.
fn streamed(
    state: DialogueState,
    asked: Asked,
    mut lease: TurnLease,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let (events, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = events.send(named("message", &StreamedMessage::from(asked.message.clone())));
        let mut holdback = safety::Holdback::default();
        let crisis = asked.safety.level == ifs_domain::SafetyLevel::Crisis;
        let (text, ending) = if crisis {
            // The agent is not asked: the fixed reply goes out as one piece.
            let (text, finished, _) = crisis_reply(&asked.safety);
            let _ = events.send(named("delta", &serde_json::json!({ "content": text })));
            (text, Ending::Finished(finished))
        } else {
            converse(&state, &asked, &mut lease, &events, &mut holdback).await
        };
        let unsafe_reply = if matches!(ending, Ending::Unsafe) {
            safety::replaced(&state, &asked.safety).await;
            true
        } else {
            // The pieces were screened as they came; the whole reply is screened once more, by
            // every screener, before what was held back is sent.
            !crisis
                && !text.trim().is_empty()
                && safety::reply_is_unsafe(&state, &asked.safety, &asked.message.content, &text).await
        };
        let marked = |reason: &str| Finished { finish_reason: Some(reason.into()), ..Finished::default() };
        let (text, finished, failure, note) = if unsafe_reply {
            // What was held back is never sent; the `reply` event carries the replacement,
            // which clients show in place of the pieces they got.
            let (text, finished, note) = crisis_reply(&asked.safety);
            (text, finished, None, note)
        } else {
            for piece in holdback.rest() {
                let _ = events.send(named("delta", &serde_json::json!({ "content": piece })));
            }
            // At crisis level this is the crisis note: the fixed reply's.
            let note = asked.safety.note();
            let (finished, failure) = match ending {
                Ending::Finished(finished) => (finished, None),
                Ending::Cancelled | Ending::Unsafe => (marked("cancelled"), None),
                Ending::Failed(error) => (marked("error"), Some(error)),
            };
            (text, finished, failure, note)
        };
        let stored = if text.trim().is_empty() && failure.is_some() {
            // Nothing to keep; the user's message stays the tail, as when a whole reply fails.
            None
        } else {
            Some(store_reply(&state, &asked, &text, finished, note).await)
        };
        lease.release().await;
        let event = match (stored, failure) {
            (Some(Err(error)), _) => named("error", &error.into_body()),
            (_, Some(failure)) => named("error", &agent_failed(&failure, &asked.message).into_body()),
            (Some(Ok(reply)), None) => named("reply", &StreamedMessage::from(reply)),
            (None, None) => return,
        };
        let _ = events.send(event);
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    })
}

/// Asks the agent and passes its text on as `delta` events; returns the text and how it ended.
async fn converse(
    state: &DialogueState,
    asked: &Asked,
    lease: &mut TurnLease,
    events: &mpsc::UnboundedSender<Event>,
    holdback: &mut safety::Holdback,
) -> (String, Ending) {
    let timeout = state.settings.agent_timeout;
    let mut text = String::new();
    let mut characters = 0;
    let started = tokio::select! {
        () = events.closed() => return (text, Ending::Cancelled),
        started = tokio::time::timeout(timeout, state.agent.stream(asked.request.clone())) => started,
    };
    let mut stream = match started.unwrap_or(Err(AgentError::Timeout(timeout))) {
        Ok(stream) => stream,
        Err(error) => return (text, Ending::Failed(error)),
    };
    loop {
        let next = tokio::select! {
            () = events.closed() => return (text, Ending::Cancelled),
            next = tokio::time::timeout(timeout, stream.next()) => next,
        };
        match next {
            Err(_) => return (text, Ending::Failed(AgentError::Timeout(timeout))),
            Ok(None) => {
                return (text, Ending::Failed(AgentError::Unavailable("the reply ended early".into())));
            }
            Ok(Some(Err(error))) => return (text, Ending::Failed(error)),
            Ok(Some(Ok(AgentEvent::Finished(finished)))) => return (text, Ending::Finished(finished)),
            Ok(Some(Ok(AgentEvent::Delta(piece)))) => {
                // What a message cannot hold is neither stored nor sent, nor read: a runaway
                // agent is stopped here, whatever it would go on to send.
                let piece = fit_after(characters, &piece);
                characters += piece.chars().count();
                text.push_str(piece);
                // Dropping the agent's stream on the way out stops the generation.
                let Some(ready) = holdback.push(piece) else { return (text, Ending::Unsafe) };
                for piece in ready {
                    if events.send(named("delta", &serde_json::json!({ "content": piece }))).is_err() {
                        return (text, Ending::Cancelled);
                    }
                }
                if events.is_closed() {
                    return (text, Ending::Cancelled);
                }
                if characters >= MESSAGE_MAX {
                    let finished = Finished { finish_reason: Some("length".into()), ..Finished::default() };
                    return (text, Ending::Finished(finished));
                }
                lease.renew(state).await;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ifs_api::openai::{ChatResponse, Choice, ReplyMessage};
    use ifs_api::testing::{World, call, json_request};
    use ifs_domain::{Limit, check_chain};
    use serde_json::json;

    use super::*;

    /// Answers with a fixed reply (or fails), and remembers every request it got.
    #[derive(Debug, Default)]
    pub(crate) struct ScriptedAgent {
        pub(crate) fail_with: Option<fn() -> AgentError>,
        pub(crate) reply: Option<String>,
        pub(crate) seen: Mutex<Vec<ChatRequest>>,
        /// Streams: after this many words, fail (Some(Ok)) or go silent forever (Some(Err)).
        pub(crate) stream_breaks: Option<(usize, bool)>,
        /// Set when a stream handed out is dropped: the generation would stop there.
        pub(crate) stream_dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    /// Sets its flag when dropped with the stream that owns it.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Agent for ScriptedAgent {
        async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
            let n = request.messages.len();
            self.seen.lock().unwrap().push(request);
            if let Some(fail) = self.fail_with {
                return Err(fail());
            }
            Ok(ChatResponse {
                id: "chatcmpl-test".into(),
                object: "chat.completion".into(),
                created: 0,
                model: "scripted".into(),
                choices: vec![Choice {
                    index: 0,
                    message: ReplyMessage {
                        role: ChatRole::Assistant,
                        content: Some(self.reply.clone().unwrap_or_else(|| format!("reply to {n} messages"))),
                    },
                    finish_reason: Some("stop".into()),
                }],
                usage: Some(ifs_domain::Usage::of(10, 4)),
                ifs: None,
            })
        }

        async fn stream(&self, request: ChatRequest) -> Result<ifs_api::agent::AgentStream, AgentError> {
            let reply = self.complete(request).await?;
            let text = reply.choices[0].message.content.clone().unwrap_or_default();
            let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
            let breaks = self.stream_breaks;
            let flag = DropFlag(Arc::clone(&self.stream_dropped));
            let mut events: Vec<Result<AgentEvent, AgentError>> = Vec::new();
            for (i, word) in words.into_iter().enumerate() {
                if breaks.is_some_and(|(at, _)| i == at) {
                    break;
                }
                events.push(Ok(AgentEvent::Delta(word)));
            }
            let tail: ifs_api::agent::AgentStream = match breaks {
                Some((_, true)) => {
                    Box::pin(futures::stream::iter([Err(AgentError::Unavailable("boom".into()))]))
                }
                Some((_, false)) => Box::pin(futures::stream::pending()),
                None => Box::pin(futures::stream::iter([Ok(AgentEvent::Finished(Finished {
                    finish_reason: Some("stop".into()),
                    model: "scripted".into(),
                    usage: reply.usage,
                    truncated_messages: None,
                }))])),
            };
            Ok(Box::pin(futures::stream::iter(events).chain(tail).map(move |event| {
                let _keep = &flag;
                event
            })))
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    pub(crate) fn stream_request(
        token: &str,
        body: serde_json::Value,
    ) -> axum::http::Request<axum::body::Body> {
        let mut request = json_request("POST", "/api/v1/dialogue", Some(token), &body);
        request.headers_mut().insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        request
    }

    pub(crate) fn data(event: &ifs_api::sse::Event) -> serde_json::Value {
        serde_json::from_str(&event.data).unwrap()
    }

    #[tokio::test]
    async fn a_streamed_turn_sends_the_message_then_deltas_then_the_stored_reply() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let agent =
            Arc::new(ScriptedAgent { reply: Some("one two three four".into()), ..ScriptedAgent::default() });
        let body = json!({"message": "hello", "stream": true});
        let (status, headers, mut events) = ifs_api::testing::open_stream(
            app(&world, agent, 10),
            json_request("POST", "/api/v1/dialogue", Some(&token), &body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
        let events = events.rest().await;
        let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["message", "delta", "delta", "delta", "delta", "reply"]);
        let message = data(&events[0]);
        assert_eq!(message["content"], "hello");
        let deltas: String =
            events[1..5].iter().map(|e| data(e)["content"].as_str().unwrap().to_owned()).collect();
        let reply = data(&events[5]);
        assert_eq!(reply["content"], deltas);
        assert_eq!(deltas, "one two three four");
        assert_eq!(reply["finish_reason"], "stop");
        assert_eq!(reply["prev_id"], message["id"]);
        let stored = whole(&world, user, message["dialogue_id"].as_str().unwrap()).await;
        check_chain(&stored).unwrap();
        assert_eq!(stored[1].content, "one two three four");
    }

    #[tokio::test]
    async fn accept_event_stream_asks_for_a_stream_and_bad_input_is_still_a_json_400() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent::default());
        let (status, _, mut events) = ifs_api::testing::open_stream(
            app(&world, agent.clone(), 10),
            stream_request(&token, json!({"message": "hi"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(events.next().await.unwrap().name.as_deref(), Some("message"));
        let (status, json) =
            call(app(&world, agent, 10), stream_request(&token, json!({"message": " "}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "invalid_request");
    }

    #[tokio::test]
    async fn an_agent_failing_mid_stream_leaves_the_partial_reply_marked_error_and_an_error_event() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent {
            reply: Some("one two three four".into()),
            stream_breaks: Some((2, true)),
            ..ScriptedAgent::default()
        });
        let (_, _, mut events) = ifs_api::testing::open_stream(
            app(&world, agent, 10),
            stream_request(&token, json!({"message": "hi"})),
        )
        .await;
        let events = events.rest().await;
        let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["message", "delta", "delta", "error"]);
        let message = data(&events[0]);
        let error = data(&events[3]);
        assert_eq!(error["error"]["code"], "agent_unavailable");
        assert_eq!(error["error"]["dialogue_id"], message["dialogue_id"]);
        assert_eq!(error["error"]["message_id"], message["id"]);
        let stored = whole(&world, user, message["dialogue_id"].as_str().unwrap()).await;
        check_chain(&stored).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].content, "one two ");
        assert_eq!(stored[1].meta.as_ref().unwrap().finish_reason.as_deref(), Some("error"));
    }

    /// Answers each stream with `piece`s for ever, as a runaway agent would.
    #[derive(Debug)]
    struct Runaway {
        piece: &'static str,
        sent: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait]
    impl Agent for Runaway {
        async fn complete(&self, _: ChatRequest) -> Result<ChatResponse, AgentError> {
            Err(AgentError::Unavailable("streams only".into()))
        }

        async fn stream(&self, _: ChatRequest) -> Result<ifs_api::agent::AgentStream, AgentError> {
            let (piece, sent) = (self.piece, Arc::clone(&self.sent));
            Ok(Box::pin(futures::stream::repeat_with(move || {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(AgentEvent::Delta(piece.to_owned()))
            })))
        }

        fn describe(&self) -> String {
            "runaway".into()
        }
    }

    #[tokio::test]
    async fn a_runaway_stream_is_read_only_as_far_as_a_message_holds() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let agent = Arc::new(Runaway { piece: "🦀 crab ", sent: Arc::clone(&sent) });
        let (_, _, mut events) = ifs_api::testing::open_stream(
            app_with(&world, agent, 10, 120, 2),
            stream_request(&token, json!({"message": "hi"})),
        )
        .await;
        let events = events.rest().await;
        let reply = data(events.last().unwrap());
        assert_eq!(events.last().unwrap().name.as_deref(), Some("reply"), "{reply}");
        assert_eq!(reply["finish_reason"], "length");
        let streamed: String = events
            .iter()
            .filter(|e| e.name.as_deref() == Some("delta"))
            .map(|e| data(e)["content"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(streamed.chars().count(), MESSAGE_MAX);
        assert_eq!(reply["content"].as_str(), Some(streamed.as_str()));
        // 7 characters a piece: what one message holds, and not a piece more than it needs.
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), MESSAGE_MAX.div_ceil(7));
        let stored = whole(&world, user, reply["dialogue_id"].as_str().unwrap()).await;
        assert_eq!(stored[1].content.chars().count(), MESSAGE_MAX);
    }

    #[tokio::test]
    async fn one_user_has_at_most_the_allowed_turns_in_flight_and_a_refused_one_stores_nothing() {
        let world = World::new();
        let (ada, ada_token) = world.signed_in("ada").await;
        let (_, bob_token) = world.signed_in("bob").await;
        // Each stream says one word, then nothing until its client leaves.
        let agent = Arc::new(ScriptedAgent {
            reply: Some("one two".into()),
            stream_breaks: Some((1, false)),
            ..ScriptedAgent::default()
        });
        let app = app_with(&world, agent, 10, 120, 2);
        let mut open = Vec::new();
        for _ in 0..2 {
            let (status, _, mut events) = ifs_api::testing::open_stream(
                app.clone(),
                stream_request(&ada_token, json!({"message": "hold"})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
            assert_eq!(events.next().await.unwrap().name.as_deref(), Some("message"));
            open.push(events);
        }
        let third = tower::ServiceExt::oneshot(
            app.clone(),
            json_request("POST", "/api/v1/dialogue", Some(&ada_token), &json!({"message": "third"})),
        )
        .await
        .unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()[header::RETRY_AFTER], "5");
        let listed = world.backends.dialogues.dialogues(ada, Limit::new_clamped(10, 10), None).await.unwrap();
        assert_eq!(listed.items.len(), 2, "the refused turn stored nothing");

        let (status, _, _) = ifs_api::testing::open_stream(
            app.clone(),
            stream_request(&bob_token, json!({"message": "mine"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "another user is not held up");

        // A turn that ends gives its place back.
        drop(open.pop());
        let mut status = StatusCode::TOO_MANY_REQUESTS;
        for _ in 0..200 {
            let (now, _, _) = ifs_api::testing::open_stream(
                app.clone(),
                stream_request(&ada_token, json!({"message": "again"})),
            )
            .await;
            status = now;
            if status != StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_mid_stream_stops_the_agent_and_leaves_a_cancelled_reply() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let words: Vec<String> = (1..=30).map(|i| format!("word{i} ")).collect();
        // The agent goes silent after twenty words: long enough for pieces to pass the holdback.
        let produced = words[..20].concat();
        let agent = Arc::new(ScriptedAgent {
            reply: Some(words.concat()),
            stream_breaks: Some((20, false)),
            ..ScriptedAgent::default()
        });
        let dropped = Arc::clone(&agent.stream_dropped);
        let (_, _, mut events) = ifs_api::testing::open_stream(
            app(&world, agent.clone(), 10),
            stream_request(&token, json!({"message": "hi"})),
        )
        .await;
        let message = data(&events.next().await.unwrap());
        for _ in 0..3 {
            assert_eq!(events.next().await.unwrap().name.as_deref(), Some("delta"));
        }
        drop(events);
        let dialogue = message["dialogue_id"].as_str().unwrap().to_owned();
        let mut stored = Vec::new();
        for _ in 0..200 {
            stored = whole(&world, user, &dialogue).await;
            if stored.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the agent's stream was dropped");
        check_chain(&stored).unwrap();
        assert_eq!(stored.len(), 2, "the partial reply was stored");
        assert_eq!(stored[1].content, produced, "what was produced is kept, held back or not");
        assert_eq!(stored[1].meta.as_ref().unwrap().finish_reason.as_deref(), Some("cancelled"));
        // The next turn continues after it, with it in memory.
        let (status, _) = call(
            app(&world, agent.clone(), 10),
            json_request(
                "POST",
                "/api/v1/dialogue",
                Some(&token),
                &json!({"message": "again", "dialogue_id": dialogue}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let seen = agent.seen.lock().unwrap();
        assert_eq!(seen.last().unwrap().messages[2].content, produced);
    }

    pub(crate) fn app(world: &World, agent: Arc<ScriptedAgent>, memory: usize) -> Router {
        app_limited(world, agent, memory, 120)
    }

    fn app_limited(world: &World, agent: Arc<ScriptedAgent>, memory: usize, turns_per_minute: u32) -> Router {
        app_with(world, agent, memory, turns_per_minute, 30)
    }

    fn app_with(
        world: &World,
        agent: Arc<dyn Agent>,
        memory: usize,
        turns_per_minute: u32,
        concurrent_turns: u32,
    ) -> Router {
        let settings =
            DialogueSettings { memory_messages: memory, turns_per_minute, concurrent_turns, ..settings() };
        router(state_with(world, agent, settings))
    }

    /// The app with a daily budget of `tokens` agent tokens a user.
    fn app_with_quota(world: &World, agent: Arc<dyn Agent>, tokens: u32) -> Router {
        router(state_with(world, agent, DialogueSettings { daily_token_limit: tokens, ..settings() }))
    }

    /// What the tests' turns are answered with unless they say otherwise.
    pub(crate) fn settings() -> DialogueSettings {
        DialogueSettings {
            system_prompt: "Be kind.".into(),
            memory_messages: 4,
            model: "m".into(),
            agent_timeout: Duration::from_secs(5),
            turns_per_minute: 100,
            max_tokens_limit: ifs_api::openai::MAX_TOKENS_LIMIT,
            concurrent_turns: 2,
            daily_token_limit: 0,
        }
    }

    pub(crate) fn state_with(
        world: &World,
        agent: Arc<dyn Agent>,
        settings: DialogueSettings,
    ) -> DialogueState {
        DialogueState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
            users: world.backends.users.clone(),
            counters: world.backends.counters.clone(),
            agent,
            screener: Arc::new(ifs_safety::BuiltIn::default()),
            safety_counts: world.backends.safety.clone(),
            settings: Arc::new(settings),
            clock: world.clock.clone(),
        }
    }

    #[tokio::test]
    async fn a_long_turn_renews_its_place_and_a_renewal_never_passes_the_limit() {
        let world = World::new();
        let (ada, _) = world.signed_in("ada").await;
        // Leases of 80 ms (twice the agent's timeout), renewed after a quarter of that.
        let state = state_with(
            &world,
            Arc::new(ScriptedAgent::default()),
            DialogueSettings {
                agent_timeout: Duration::from_millis(40),
                turns_per_minute: 120,
                concurrent_turns: 1,
                ..settings()
            },
        );
        let mut long = TurnLease::take(&state, ada, MessageId::generate()).await.unwrap();
        world.clock.advance(chrono::Duration::milliseconds(60));
        tokio::time::sleep(Duration::from_millis(25)).await;
        long.renew(&state).await;
        // Past the first lease's end, within the renewed one: the place is still taken.
        world.clock.advance(chrono::Duration::milliseconds(40));
        let refused = TurnLease::take(&state, ada, MessageId::generate()).await;
        assert_eq!(refused.err().map(|e| e.status()), Some(StatusCode::TOO_MANY_REQUESTS));

        // Once the renewed lease has run out too, another turn takes the place, and the long
        // turn's next renewal finds no room: it does not take a second place beside it.
        world.clock.advance(chrono::Duration::milliseconds(100));
        let other = TurnLease::take(&state, ada, MessageId::generate()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        long.renew(&state).await;
        other.release().await;
        let next = TurnLease::take(&state, ada, MessageId::generate()).await;
        assert!(next.is_ok(), "the long turn held no place after its renewal found none");
        long.release().await;
    }

    pub(crate) async fn whole(world: &World, owner: ifs_domain::UserId, id: &str) -> Vec<Message> {
        let id = DialogueId::parse(id).unwrap();
        world
            .backends
            .dialogues
            .messages(owner, id, Limit::new_clamped(1000, 1000), None)
            .await
            .unwrap()
            .items
    }

    #[tokio::test]
    async fn a_first_message_starts_a_dialogue_and_gets_a_reply() {
        let world = World::new();
        let agent = Arc::new(ScriptedAgent::default());
        let (owner, token) = world.signed_in("ada").await;
        let body = json!({"message": "Hello there"});
        let (status, json) = call(
            app(&world, agent.clone(), 20),
            json_request("POST", "/api/v1/dialogue", Some(&token), &body),
        )
        .await;

        assert_eq!(status, StatusCode::CREATED, "{json}");
        assert_eq!(json["dialogue_id"], json["message"]["id"]);
        assert_eq!(json["message"]["content"], "Hello there");
        assert_eq!(json["message"]["next_id"], json["reply"]["id"]);
        assert_eq!(json["reply"]["prev_id"], json["message"]["id"]);
        assert_eq!(
            (json["reply"]["role"].as_str(), json["reply"]["content"].as_str()),
            (Some("assistant"), Some("reply to 2 messages"))
        );
        assert_eq!(json["reply"]["finish_reason"], "stop");
        assert_eq!(json["reply"]["usage"]["total_tokens"], 14);

        let sent = agent.seen.lock().unwrap()[0].clone();
        assert_eq!(sent.messages[0], ChatMessage { role: ChatRole::System, content: "Be kind.".into() });
        assert_eq!(sent.messages[1], ChatMessage { role: ChatRole::User, content: "Hello there".into() });
        let stored = whole(&world, owner, json["dialogue_id"].as_str().unwrap()).await;
        assert_eq!(stored.len(), 2);
        assert_eq!(check_chain(&stored), Ok(()));
    }

    #[tokio::test]
    async fn memory_is_the_most_recent_messages_oldest_first_and_moves_in_steps() {
        let world = World::new();
        let agent = Arc::new(ScriptedAgent::default());
        let (_, token) = world.signed_in("ada").await;
        let app = app(&world, agent.clone(), 3);
        let (_, first) = call(
            app.clone(),
            json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": "one"})),
        )
        .await;
        let id = first["dialogue_id"].as_str().unwrap();
        for text in ["two", "three"] {
            let body = json!({"message": text, "dialogue_id": id});
            assert_eq!(
                call(app.clone(), json_request("POST", "/api/v1/dialogue", Some(&token), &body)).await.0,
                StatusCode::OK
            );
        }

        // Four messages before "three" do not fit a memory of three: the window jumps by two
        // (memory_window), so it starts at a user message and keeps that start next turn.
        let last = agent.seen.lock().unwrap().last().unwrap().clone();
        let contents: Vec<_> = last.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            contents,
            [
                (ChatRole::System, "Be kind."),
                (ChatRole::User, "two"),
                (ChatRole::Assistant, "reply to 4 messages"),
                (ChatRole::User, "three"),
            ]
        );
    }

    #[tokio::test]
    async fn when_the_agent_fails_the_message_is_kept_and_its_place_reported() {
        let world = World::new();
        let (owner, token) = world.signed_in("ada").await;
        for (fail, status, code) in [
            (
                (|| AgentError::Unavailable("down".into())) as fn() -> AgentError,
                StatusCode::BAD_GATEWAY,
                "agent_unavailable",
            ),
            (
                || AgentError::Timeout(std::time::Duration::from_secs(1)),
                StatusCode::GATEWAY_TIMEOUT,
                "agent_timeout",
            ),
            (|| AgentError::Busy { retry_after: 2 }, StatusCode::SERVICE_UNAVAILABLE, "agent_busy"),
            (
                || AgentError::Rejected { code: "context_overflow", message: "too long".into() },
                StatusCode::BAD_REQUEST,
                "context_overflow",
            ),
        ] {
            let agent = Arc::new(ScriptedAgent { fail_with: Some(fail), ..ScriptedAgent::default() });
            let body = json!({"message": "are you there?"});
            let (got, json) =
                call(app(&world, agent, 20), json_request("POST", "/api/v1/dialogue", Some(&token), &body))
                    .await;
            assert_eq!((got, json["error"]["code"].as_str()), (status, Some(code)), "{json}");
            assert!(!json.to_string().contains("down"), "the cause is not sent: {json}");

            let kept = whole(&world, owner, json["error"]["dialogue_id"].as_str().unwrap()).await;
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0].id.to_string(), json["error"]["message_id"].as_str().unwrap());
            assert_eq!(kept[0].content, "are you there?");
        }
    }

    #[tokio::test]
    async fn an_empty_reply_is_an_agent_failure_not_an_empty_message() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent { reply: Some("  \n".into()), ..ScriptedAgent::default() });
        let (status, json) = call(
            app(&world, agent, 20),
            json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": "hi"})),
        )
        .await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("agent_unavailable"))
        );
    }

    #[tokio::test]
    async fn bad_turns_are_400s_naming_the_field_and_store_nothing() {
        let world = World::new();
        let (ada, token) = world.signed_in("ada").await;
        let app = app(&world, Arc::new(ScriptedAgent::default()), 20);
        for (body, field) in [
            (json!({"message": ""}), "message"),
            (json!({"message": " \n "}), "message"),
            (json!({"message": "\u{200b}\u{200b}\u{2060}\u{feff}"}), "message"),
            (json!({"message": "x".repeat(MESSAGE_MAX + 1)}), "message"),
            (json!({"message": 5}), "message"),
            (json!({}), "message"),
            (json!({"message": "hi", "dialogue_id": "nope"}), "dialogue_id"),
            (json!({"message": "hi", "max_tokens": 0}), "max_tokens"),
            (json!({"message": "hi", "max_tokens": -1}), "max_tokens"),
            // What the agent would refuse after the message was stored.
            (json!({"message": "hi", "max_tokens": ifs_api::openai::MAX_TOKENS_LIMIT + 1}), "max_tokens"),
            (json!({"message": "hi", "temperature": 2.5}), "temperature"),
            (json!({"message": "hi", "temperature": "hot"}), "temperature"),
        ] {
            let (status, json) =
                call(app.clone(), json_request("POST", "/api/v1/dialogue", Some(&token), &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(json["error"]["message"].as_str().unwrap().contains(field), "{body} → {json}");
        }
        let listed = world.backends.dialogues.dialogues(ada, Limit::new_clamped(10, 10), None).await.unwrap();
        assert_eq!(listed.items, []);
    }

    #[test]
    fn the_documented_max_tokens_bound_is_the_agents() {
        let document = serde_json::to_value(<Api as utoipa::OpenApi>::openapi()).unwrap();
        let schema = &document["components"]["schemas"]["DialogueRequest"]["properties"]["max_tokens"];
        assert_eq!(schema["maximum"], json!(ifs_api::openai::MAX_TOKENS_LIMIT), "{schema}");
    }

    #[test]
    fn the_agent_is_told_an_opaque_user_the_same_each_turn() {
        let (ada, bob) = (ifs_domain::UserId::generate(), ifs_domain::UserId::generate());
        assert_eq!(agent_user(ada), agent_user(ada));
        assert_ne!(agent_user(ada), agent_user(bob));
        assert!(!agent_user(ada).contains(&ada.to_string()));
        assert_eq!(agent_user(ada).len(), 22);
    }

    #[tokio::test]
    async fn continuing_someone_elses_or_an_unknown_dialogue_is_not_found() {
        let world = World::new();
        let (_, ada) = world.signed_in("ada").await;
        let (_, bob) = world.signed_in("bob").await;
        let app = app(&world, Arc::new(ScriptedAgent::default()), 20);
        let (_, started) = call(
            app.clone(),
            json_request("POST", "/api/v1/dialogue", Some(&ada), &json!({"message": "mine"})),
        )
        .await;

        for id in [started["dialogue_id"].as_str().unwrap().to_owned(), DialogueId::generate().to_string()] {
            let body = json!({"message": "let me in", "dialogue_id": id});
            let (status, json) =
                call(app.clone(), json_request("POST", "/api/v1/dialogue", Some(&bob), &body)).await;
            assert_eq!((status, json["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        }
    }

    #[tokio::test]
    async fn a_user_past_the_turn_limit_gets_429_until_the_minute_is_over_even_while_the_agent_fails() {
        let world = World::new();
        let (ada_id, ada) = world.signed_in("ada").await;
        let (_, bob) = world.signed_in("bob").await;
        let agent = Arc::new(ScriptedAgent {
            fail_with: Some(|| AgentError::Unavailable("down".into())),
            ..ScriptedAgent::default()
        });
        let app = app_limited(&world, agent, 20, 3);
        let turn =
            |token: &str| json_request("POST", "/api/v1/dialogue", Some(token), &json!({"message": "hi"}));
        for _ in 0..3 {
            world.clock.advance(chrono::Duration::seconds(5));
            assert_eq!(call(app.clone(), turn(&ada)).await.0, StatusCode::BAD_GATEWAY);
        }

        world.clock.advance(chrono::Duration::seconds(20));
        let response = crate::tests::raw(app.clone(), turn(&ada)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        // The window opened with the first turn at +5 s and it is now +35 s.
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "30");
        let stored =
            world.backends.dialogues.dialogues(ada_id, Limit::new_clamped(100, 100), None).await.unwrap();
        assert_eq!(stored.items.len(), 3, "a refused turn stores nothing");
        assert_eq!(call(app.clone(), turn(&bob)).await.0, StatusCode::BAD_GATEWAY, "others are not limited");

        world.clock.advance(chrono::Duration::seconds(30));
        assert_eq!(call(app, turn(&ada)).await.0, StatusCode::BAD_GATEWAY, "a new minute, a new allowance");
    }

    #[tokio::test]
    async fn a_dialogue_started_after_its_session_ended_is_taken_back() {
        let world = World::new();
        let (ada, token) = world.signed_in("ada").await;
        let state = state_with(&world, Arc::new(ScriptedAgent::default()), settings());
        let principal = state.auth.authenticate(&token).await.unwrap();
        let first = NewMessage {
            id: MessageId::generate(),
            role: Role::User,
            content: MessageText::parse("hello".into()).unwrap(),
            created_at: world.clock.now(),
            meta: None,
        };
        let started = state.dialogues.start_dialogue(ada, first).await.unwrap().dialogue_id;
        ifs_api::keep_if_signed_in(&state.auth, state.dialogues.as_ref(), &principal, started).await.unwrap();
        assert_eq!(
            state.dialogues.dialogue(ada, started).await.unwrap().message_count,
            1,
            "a live session keeps it"
        );

        // The account's erasure (or a logout) ends the session between the check and the start.
        world.backends.sessions.revoke_user_sessions(ada).await.unwrap();
        let refused = ifs_api::keep_if_signed_in(&state.auth, state.dialogues.as_ref(), &principal, started)
            .await
            .unwrap_err();
        assert_eq!(refused.into_response().status(), StatusCode::UNAUTHORIZED);
        let gone = state.dialogues.dialogue(ada, started).await;
        assert!(matches!(gone, Err(ifs_store::StoreError::NotFound)), "{gone:?}");
    }

    #[tokio::test]
    async fn a_regeneration_is_a_turn_for_the_limits() {
        let world = World::new();
        let (_, ada) = world.signed_in("ada").await;
        let app = app_limited(&world, Arc::new(ScriptedAgent::default()), 20, 2);
        let (status, first) = call(
            app.clone(),
            json_request("POST", "/api/v1/dialogue", Some(&ada), &json!({"message": "hi"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let again = json!({"dialogue_id": first["dialogue_id"], "regenerate": true});
        let (status, regenerated) =
            call(app.clone(), json_request("POST", "/api/v1/dialogue", Some(&ada), &again)).await;
        assert_eq!(status, StatusCode::OK, "{regenerated}");
        assert_eq!(regenerated["reply"]["id"], first["reply"]["id"]);
        let (status, refused) = call(app, json_request("POST", "/api/v1/dialogue", Some(&ada), &again)).await;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
        );
    }

    #[tokio::test]
    async fn past_the_daily_token_budget_a_turn_is_refused_until_midnight_and_stores_nothing() {
        let world = World::new();
        let (ada_id, ada) = world.signed_in("ada").await;
        let (_, bob) = world.signed_in("bob").await;
        // Every reply of the double uses 14 tokens: the third turn passes 30, the fourth is refused.
        let app = app_with_quota(&world, Arc::new(ScriptedAgent::default()), 30);
        let turn = |token: &str, stream: bool| {
            json_request("POST", "/api/v1/dialogue", Some(token), &json!({"message": "hi", "stream": stream}))
        };
        for stream in [false, true, false] {
            let response = crate::tests::raw(app.clone(), turn(&ada, stream)).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            drop(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap());
        }
        let tokens =
            world.backends.counters.peek(Counter::TokensToday(ada_id), world.clock.now()).await.unwrap();
        assert_eq!(tokens.map(|w| w.hits), Some(42), "streamed replies count too");

        world.clock.advance(chrono::Duration::minutes(30));
        let response = crate::tests::raw(app.clone(), turn(&ada, true)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        // The world's clock started at midnight UTC; the next is 23.5 hours away.
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "84600");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "quota_exceeded");
        let stored =
            world.backends.dialogues.dialogues(ada_id, Limit::new_clamped(100, 100), None).await.unwrap();
        assert_eq!(stored.items.len(), 3, "a refused turn stores nothing");
        assert_eq!(call(app.clone(), turn(&bob, false)).await.0, StatusCode::CREATED, "a budget is per user");

        // Tokens last an hour, so the new day is read from the counter that decides.
        let tomorrow = world.clock.now() + chrono::Duration::hours(24);
        let budget = world.backends.counters.peek(Counter::TokensToday(ada_id), tomorrow).await.unwrap();
        assert_eq!(budget, None, "a new day, a new budget");
    }

    #[tokio::test]
    async fn a_message_of_the_longest_allowed_length_is_accepted_however_json_escapes_it() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let app = app(&world, Arc::new(ScriptedAgent::default()), 20);
        let escaped = |unit: &str, n: usize| format!(r#"{{"message":"{}"}}"#, unit.repeat(n));
        let send = |body: String| {
            axum::http::Request::post("/api/v1/dialogue")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        // é as Python writes it by default (6 bytes a character), and 🦀 as a surrogate pair (12).
        for (unit, character) in [("\\u00e9", "é"), ("\\ud83e\\udd80", "🦀")] {
            let (status, json) = call(app.clone(), send(escaped(unit, MESSAGE_MAX))).await;
            assert_eq!(status, StatusCode::CREATED, "{unit}: {json}");
            assert_eq!(json["message"]["content"].as_str().unwrap(), character.repeat(MESSAGE_MAX));

            let (status, json) = call(app.clone(), send(escaped(unit, MESSAGE_MAX + 1))).await;
            assert_eq!(
                (status, json["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_request"))
            );
        }
        let (status, json) = call(app, send(escaped("x", BODY_LIMIT))).await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
        );
    }

    async fn raw(app: Router, request: axum::extract::Request) -> axum::response::Response {
        use tower::ServiceExt as _;
        ifs_api::http::edge(app).oneshot(request).await.unwrap()
    }

    #[test]
    fn overlong_replies_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MESSAGE_MAX + 5);
        assert_eq!(fit(&long).chars().count(), MESSAGE_MAX);
        assert_eq!(fit("short"), "short");
    }
}
