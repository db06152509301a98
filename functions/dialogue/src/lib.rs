//! `POST /api/v1/dialogue`: starts a dialogue with a first message, or continues one named by
//! `dialogue_id`. The user's message is stored before the agent is asked, so nothing the user
//! wrote is lost if the agent fails; the reply is appended after it. Each user may send a limited
//! number of turns a minute, so that no account can fill the store, even while the agent fails.

use std::sync::Arc;
use std::time::Duration;

pub mod lambda_agent;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::{Router, response::IntoResponse};
use ifs_api::agent::{Agent, AgentError};
use ifs_api::openai::{ChatMessage, ChatRequest, ChatRole};
use ifs_api::views::MessageView;
use ifs_api::{ApiError, AuthUser, Json, Route};
use ifs_auth::Authenticator;
use ifs_domain::dialogue::MESSAGE_MAX;
use ifs_domain::{Clock, DialogueId, Message, MessageId, MessageText, NewMessage, ReplyMeta, Role};
use ifs_store::{Counter, Counters, DialogueStore};
use serde::{Deserialize, Serialize};

/// Largest `max_tokens` a client may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 4096;

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
    /// How long to wait for the agent's reply.
    pub agent_timeout: Duration,
    /// Turns one user may send per minute.
    pub turns_per_minute: u32,
}

impl From<&ifs_api::config::DialogueConfig> for DialogueSettings {
    fn from(config: &ifs_api::config::DialogueConfig) -> Self {
        Self {
            system_prompt: config.system_prompt.clone(),
            memory_messages: config.memory_messages as usize,
            model: config.agent_model.clone(),
            agent_timeout: config.agent_timeout(),
            turns_per_minute: config.dialogue_rate_limit,
        }
    }
}

/// What the Dialogue Manager needs.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct DialogueState {
    pub auth: Authenticator,
    pub dialogues: Arc<dyn DialogueStore>,
    pub counters: Arc<dyn Counters>,
    pub agent: Arc<dyn Agent>,
    pub settings: Arc<DialogueSettings>,
    pub clock: Arc<dyn Clock>,
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

#[derive(Debug, Deserialize)]
struct DialogueRequest {
    message: String,
    #[serde(default)]
    dialogue_id: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
}

#[derive(Debug, Serialize)]
struct DialogueResponse {
    dialogue_id: DialogueId,
    message: MessageView,
    reply: MessageView,
}

/// A validated turn.
struct Turn {
    text: MessageText,
    dialogue: Option<DialogueId>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
}

impl TryFrom<DialogueRequest> for Turn {
    type Error = ApiError;

    fn try_from(request: DialogueRequest) -> Result<Self, ApiError> {
        let text = MessageText::parse(request.message).map_err(|e| ApiError::invalid_field("message", e))?;
        let dialogue = request
            .dialogue_id
            .as_deref()
            .map(DialogueId::parse)
            .transpose()
            .map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
        if let Some(n) = request.max_tokens
            && !(1..=MAX_TOKENS_LIMIT).contains(&n)
        {
            return Err(ApiError::invalid_field(
                "max_tokens",
                format!("must be from 1 to {MAX_TOKENS_LIMIT}"),
            ));
        }
        if let Some(t) = request.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid_field("temperature", "must be from 0 to 2"));
        }
        Ok(Self { text, dialogue, max_tokens: request.max_tokens, temperature: request.temperature })
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
    reply.char_indices().nth(MESSAGE_MAX).map_or(reply, |(at, _)| &reply[..at])
}

async fn dialogue(
    AuthUser(principal): AuthUser,
    State(state): State<DialogueState>,
    Json(request): Json<DialogueRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let turn = Turn::try_from(request)?;
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
    let new = NewMessage {
        id: MessageId::generate(),
        role: Role::User,
        content: turn.text,
        created_at: now,
        meta: None,
    };
    let (mut message, status) = match turn.dialogue {
        None => (state.dialogues.start_dialogue(owner, new).await?, StatusCode::CREATED),
        Some(id) => (state.dialogues.append_message(owner, id, new).await?, StatusCode::OK),
    };
    let dialogue_id = message.dialogue_id;

    let memory = state
        .dialogues
        .messages_before(owner, dialogue_id, message.seq, state.settings.memory_messages)
        .await?;
    let request = ChatRequest {
        model: Some(state.settings.model.clone()),
        messages: prompt(&state.settings, &memory, &message),
        max_tokens: turn.max_tokens,
        temperature: turn.temperature,
        ..ChatRequest::default()
    };
    let timeout = state.settings.agent_timeout;
    let answer = tokio::time::timeout(timeout, state.agent.complete(request))
        .await
        .unwrap_or(Err(AgentError::Timeout(timeout)))
        .map_err(|e| agent_failed(&e, &message))?;
    let choice = answer.choices.into_iter().next();
    let finish_reason = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let content = choice.and_then(|c| c.message.content).unwrap_or_default();
    let text = MessageText::parse(fit(&content).to_owned())
        .map_err(|_| agent_failed(&AgentError::Unavailable("the reply was empty".into()), &message))?;

    let reply = NewMessage {
        id: MessageId::generate(),
        role: Role::Assistant,
        content: text,
        created_at: state.clock.now(),
        meta: Some(ReplyMeta {
            model: Some(answer.model).filter(|m| !m.is_empty()),
            finish_reason,
            usage: answer.usage,
        }),
    };
    let reply = state.dialogues.append_message(owner, dialogue_id, reply).await?;
    // The stored copy of the user's message was read before the reply was linked after it.
    if reply.prev_id == Some(message.id) {
        message.next_id = Some(reply.id);
    }
    let body = DialogueResponse { dialogue_id, message: message.into(), reply: reply.into() };
    Ok((status, axum::Json(body)))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ifs_api::openai::{ChatResponse, Choice, ReplyMessage};
    use ifs_api::testing::{World, call, json_request};
    use ifs_domain::{Limit, check_chain};
    use serde_json::json;

    use super::*;

    /// Answers with a fixed reply (or fails), and remembers every request it got.
    #[derive(Debug, Default)]
    struct ScriptedAgent {
        fail_with: Option<fn() -> AgentError>,
        reply: Option<String>,
        seen: Mutex<Vec<ChatRequest>>,
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

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn app(world: &World, agent: Arc<ScriptedAgent>, memory: usize) -> Router {
        app_limited(world, agent, memory, 120)
    }

    fn app_limited(world: &World, agent: Arc<ScriptedAgent>, memory: usize, turns_per_minute: u32) -> Router {
        router(DialogueState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
            counters: world.backends.counters.clone(),
            agent,
            settings: Arc::new(DialogueSettings {
                system_prompt: "Be kind.".into(),
                memory_messages: memory,
                model: "m".into(),
                agent_timeout: Duration::from_secs(5),
                turns_per_minute,
            }),
            clock: world.clock.clone(),
        })
    }

    async fn whole(world: &World, owner: ifs_domain::UserId, id: &str) -> Vec<Message> {
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
    async fn memory_is_the_most_recent_messages_oldest_first() {
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

        let last = agent.seen.lock().unwrap().last().unwrap().clone();
        let contents: Vec<_> = last.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            contents,
            [
                (ChatRole::System, "Be kind."),
                (ChatRole::Assistant, "reply to 2 messages"),
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
    async fn bad_turns_are_400s_naming_the_field() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
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
            (json!({"message": "hi", "temperature": 2.5}), "temperature"),
            (json!({"message": "hi", "temperature": "hot"}), "temperature"),
        ] {
            let (status, json) =
                call(app.clone(), json_request("POST", "/api/v1/dialogue", Some(&token), &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(json["error"]["message"].as_str().unwrap().contains(field), "{body} → {json}");
        }
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
