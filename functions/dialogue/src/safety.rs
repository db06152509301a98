//! The safety of a turn: the person's message is screened before the agent is asked (crisis: the
//! agent is not asked at all, a fixed reply with crisis resources is given; elevated: the agent is
//! asked with care and its reply carries the resources), the agent's reply is screened before it
//! is stored or, streamed, before each piece is sent, and every screening is counted without
//! identifiers. docs/safety.md says what this is and is not.

use std::collections::VecDeque;

use axum::http::{HeaderMap, header};
use ifs_domain::{Message, Role, SafetyLevel, SafetyNote};
use ifs_safety::{Directory, PhraseList, Resources};

use crate::DialogueState;

/// How many messages after a crisis reply keep the resources attached (at least elevated): five
/// exchanges. One "I'm fine" does not end it; the signal fades as the dialogue moves on.
pub const CARRY_MESSAGES: usize = 10;

/// Characters of a streamed reply held back before they are sent, so that a pattern of the reply
/// list completes inside text not yet sent: what can have gone out is at most its harmless start
/// ("the most painless way to"), never the instruction. Pieces keep their size; they are late.
pub const HOLD_BACK: usize = 48;

/// Where the person is, as far as the request says.
#[derive(Debug, Clone, Default)]
pub struct Locale {
    pub accept_language: Option<String>,
}

impl Locale {
    pub fn of(headers: &HeaderMap) -> Self {
        let accept_language = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect());
        Self { accept_language }
    }
}

/// What screening decided for one turn.
#[derive(Debug, Clone)]
pub struct Decision {
    pub level: SafetyLevel,
    /// The screeners and versions that decided, for the counters.
    pub screener: String,
    /// The language of a crisis reply.
    pub language: &'static str,
    /// Whose crisis lines go with the reply; none for the international fallback.
    pub country: Option<String>,
    /// Whether the level comes (also) from a crisis earlier in the dialogue.
    pub carried: bool,
}

impl Decision {
    /// The note a reply keeps: none at level none.
    pub fn note(&self) -> Option<SafetyNote> {
        (self.level != SafetyLevel::None)
            .then(|| SafetyNote { level: self.level, country: self.country.clone() })
    }

    /// The note of a reply that was replaced by the crisis reply.
    pub fn crisis_note(&self) -> SafetyNote {
        SafetyNote { level: SafetyLevel::Crisis, country: self.country.clone() }
    }

    pub fn resources(&self) -> &'static Resources {
        Directory::built_in().for_country(self.country.as_deref())
    }

    /// The fixed crisis reply in the person's language, with their country's lines.
    pub fn crisis_reply(&self) -> String {
        Directory::built_in().crisis_reply(self.language, self.resources())
    }
}

/// Screens a person's message: what the screeners say of the words alone.
pub async fn screen_text(state: &DialogueState, message: &str) -> ifs_safety::Screening {
    state.screener.screen_message(message).await
}

/// Decides the turn's level from the message's `screening` and the `memory` before it (a crisis
/// earlier in the dialogue is carried), and counts it.
pub async fn decide(
    state: &DialogueState,
    owner: ifs_domain::UserId,
    screening: ifs_safety::Screening,
    memory: &[Message],
    locale: &Locale,
) -> Decision {
    let carried = carried(memory);
    let level = if carried { screening.level.max(SafetyLevel::Elevated) } else { screening.level };
    let directory = Directory::built_in();
    let accept_language = locale.accept_language.as_deref();
    // The profile is read only when resources are given: most turns need no country.
    let profile = if level == SafetyLevel::None { None } else { country(state, owner).await };
    let decision = Decision {
        level,
        screener: screening.screener,
        language: directory.language(screening.language, accept_language),
        country: profile
            .or_else(|| accept_language.and_then(|header| directory.country_from_accept_language(header))),
        carried,
    };
    record(state, &decision, "message").await;
    decision
}

/// The country on the person's profile. A profile that cannot be read now is logged and the
/// request's `Accept-Language` decides: crisis resources never wait on it.
async fn country(state: &DialogueState, owner: ifs_domain::UserId) -> Option<String> {
    match state.users.user_by_id(owner).await {
        Ok(user) => user.and_then(|u| u.country).map(String::from),
        Err(error) => {
            tracing::warn!(error = %error, "the profile's country could not be read; Accept-Language decides");
            None
        }
    }
}

/// Whether a crisis reply is among the last [`CARRY_MESSAGES`] messages of `memory`.
fn carried(memory: &[Message]) -> bool {
    memory.iter().rev().take(CARRY_MESSAGES).any(|m| {
        m.role == Role::Assistant
            && m.meta
                .as_ref()
                .and_then(|meta| meta.safety.as_ref())
                .is_some_and(|s| s.level == SafetyLevel::Crisis)
    })
}

/// Counts a screening by day, level and screener, without who or what: kept by the store
/// (`ifs-guide safety-report`) and logged as a structured event. A count that cannot be kept is
/// logged, never turned into a failed turn.
pub async fn record(state: &DialogueState, decision: &Decision, what: &'static str) {
    let day = state.clock.now().date_naive();
    let screener = match what {
        "reply" => format!("reply:{}", decision.screener),
        _ => decision.screener.clone(),
    };
    tracing::info!(
        event = "safety_screened",
        screened = what,
        day = %day,
        level = decision.level.as_str(),
        screener = %screener,
        carried = decision.carried,
        "a turn was screened"
    );
    if let Err(error) = state.safety_counts.count_screening(day, decision.level, &screener).await {
        tracing::warn!(error = %error, "a screening was not counted");
    }
}

/// Whether the agent's whole reply (to `decision`'s turn) must not be given; when so, it is
/// counted as [`replaced`].
pub async fn reply_is_unsafe(state: &DialogueState, decision: &Decision, message: &str, reply: &str) -> bool {
    let unsafe_reply = state.screener.reply_is_unsafe(message, reply).await;
    if unsafe_reply {
        replaced(state, decision).await;
    }
    unsafe_reply
}

/// Counts a reply replaced by the crisis reply as a crisis of the reply screening, and logs it
/// without the text.
pub async fn replaced(state: &DialogueState, decision: &Decision) {
    tracing::warn!(
        event = "safety_reply_replaced",
        "an agent reply encouraging or instructing self-harm was replaced"
    );
    let replaced = Decision { level: SafetyLevel::Crisis, ..decision.clone() };
    record(state, &replaced, "reply").await;
}

/// A streamed reply's pieces, held back until [`HOLD_BACK`] characters follow them, and checked
/// with the built-in reply list as the text grows.
#[derive(Debug, Default)]
pub struct Holdback {
    pending: VecDeque<String>,
    characters: usize,
    /// The tail of the reply so far that a pattern can still be completing in.
    window: String,
}

impl Holdback {
    /// Takes the next piece. Answers the pieces that may now be sent, or `None` when the reply
    /// crossed into what must not be given (then nothing more may be sent).
    pub fn push(&mut self, piece: &str) -> Option<Vec<String>> {
        self.window.push_str(piece);
        let keep = PhraseList::REACH * 2;
        let excess = self.window.chars().count().saturating_sub(keep);
        if excess > 0 {
            let at = self.window.char_indices().nth(excess).map_or(self.window.len(), |(at, _)| at);
            self.window.drain(..at);
        }
        if PhraseList::built_in().reply_is_unsafe(&self.window).is_some() {
            self.pending.clear();
            return None;
        }
        self.pending.push_back(piece.to_owned());
        self.characters += piece.chars().count();
        let mut ready = Vec::new();
        while let Some(front) = self.pending.front() {
            let size = front.chars().count();
            if self.characters - size < HOLD_BACK {
                break;
            }
            self.characters -= size;
            ready.extend(self.pending.pop_front());
        }
        Some(ready)
    }

    /// Every piece still held, to send once the whole reply is known to be safe.
    pub fn rest(&mut self) -> Vec<String> {
        self.characters = 0;
        self.pending.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_sent_late_but_whole_and_in_order() {
        let mut holdback = Holdback::default();
        let mut sent = Vec::new();
        for piece in
            "one two three four five six seven eight nine ten eleven twelve thirteen".split_inclusive(' ')
        {
            sent.extend(holdback.push(piece).unwrap());
        }
        assert!(!sent.is_empty(), "text far enough back is sent before the end");
        let held: String = holdback.rest().concat();
        assert!(held.chars().count() >= HOLD_BACK - "thirteen".len());
        assert_eq!(
            sent.concat() + &held,
            "one two three four five six seven eight nine ten eleven twelve thirteen"
        );
    }

    #[test]
    fn an_instruction_is_cut_before_any_of_its_harmful_part_is_sent() {
        let mut holdback = Holdback::default();
        let mut sent = String::new();
        let reply = "I hear you. Honestly, you should just kill yourself, it would be easier.";
        let mut cut = false;
        for piece in reply.split_inclusive(' ') {
            match holdback.push(piece) {
                Some(ready) => sent.extend(ready),
                None => {
                    cut = true;
                    break;
                }
            }
        }
        assert!(cut);
        assert!(!sent.contains("kill"), "sent: {sent:?}");
        assert!(holdback.rest().is_empty());
    }

    #[test]
    fn the_signal_of_a_crisis_reply_is_carried_for_five_exchanges() {
        let dialogue = ifs_domain::DialogueId::from_bytes([1; 16]);
        let message = |seq: u64, crisis: bool| Message {
            id: ifs_domain::MessageId::generate(),
            dialogue_id: dialogue,
            seq,
            role: if seq.is_multiple_of(2) { Role::Assistant } else { Role::User },
            content: "x".into(),
            created_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            prev_id: None,
            next_id: None,
            meta: crisis.then(|| ifs_domain::ReplyMeta {
                safety: Some(SafetyNote { level: SafetyLevel::Crisis, country: None }),
                ..ifs_domain::ReplyMeta::default()
            }),
        };
        let mut memory = vec![message(1, false), message(2, true)];
        assert!(carried(&memory));
        for seq in 3..=11 {
            memory.push(message(seq, false));
        }
        assert!(carried(&memory), "nine messages later");
        memory.push(message(12, false));
        assert!(!carried(&memory), "ten messages later");
    }
}

/// Turns through the router, with an agent double that counts its calls.
#[cfg(test)]
mod turns {
    use std::sync::Arc;

    use axum::http::{StatusCode, header};
    use ifs_api::testing::{World, call, json_request, open_stream};
    use serde_json::{Value, json};

    use super::*;
    use crate::tests::{ScriptedAgent, app, data, stream_request, whole};

    const CRISIS: &str = "I can't take it. I want to die.";

    fn with_language(
        mut request: axum::http::Request<axum::body::Body>,
        tag: &str,
    ) -> axum::http::Request<axum::body::Body> {
        request.headers_mut().insert(header::ACCEPT_LANGUAGE, tag.parse().unwrap());
        request
    }

    /// The safety counts of the world's day.
    async fn counted_today(world: &World) -> Vec<ifs_store::SafetyCount> {
        let today = ifs_domain::Clock::now(world.clock.as_ref()).date_naive();
        world.backends.safety.screenings(today).await.unwrap()
    }

    fn calls(agent: &ScriptedAgent) -> usize {
        agent.seen.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_crisis_message_never_reaches_the_agent_and_is_answered_with_the_countrys_lines() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent::default());
        let request = json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": CRISIS}));
        let (status, body) =
            call(app(&world, agent.clone(), 10), with_language(request, "en-GB,en;q=0.8")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(calls(&agent), 0, "the agent was not asked");
        let reply = &body["reply"];
        assert_eq!(reply["finish_reason"], "safety");
        assert_eq!(reply["safety"]["level"], "crisis");
        assert_eq!(reply["safety"]["resources"]["country"], "GB");
        assert!(reply["content"].as_str().unwrap().contains("116 123"), "{reply}");
        assert!(reply.get("usage").is_none() && reply.get("model").is_none());
        let stored = whole(&world, user, body["dialogue_id"].as_str().unwrap()).await;
        assert_eq!(stored.len(), 2, "the list stays a list: message, then the reply");
        let note = stored[1].meta.as_ref().unwrap().safety.clone().unwrap();
        assert_eq!(note, SafetyNote { level: SafetyLevel::Crisis, country: Some("GB".into()) });

        let counts = counted_today(&world).await;
        let screener = ifs_safety::BuiltIn::default().name();
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (counts[0].level, counts[0].screener.as_str(), counts[0].count),
            (SafetyLevel::Crisis, screener.as_str(), 1)
        );
        let written = serde_json::to_string(&counts).unwrap();
        for identifier in
            [user.to_string(), body["dialogue_id"].as_str().unwrap().to_owned(), "want to die".into()]
        {
            assert!(!written.contains(&identifier), "a count carries {identifier}");
        }
    }

    #[tokio::test]
    async fn a_streamed_crisis_turn_is_one_delta_and_the_reply_and_the_agent_is_not_asked() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent::default());
        let request = with_language(stream_request(&token, json!({"message": "Quiero morir"})), "es-ES");
        let (status, _, mut events) = open_stream(app(&world, agent.clone(), 10), request).await;
        assert_eq!(status, StatusCode::CREATED);
        let events = events.rest().await;
        let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["message", "delta", "reply"]);
        let reply = data(&events[2]);
        assert_eq!(data(&events[1])["content"], reply["content"]);
        assert_eq!(reply["finish_reason"], "safety");
        assert!(
            reply["content"].as_str().unwrap().contains("024")
                && reply["content"].as_str().unwrap().contains("Gracias")
        );
        assert_eq!(calls(&agent), 0);
    }

    #[tokio::test]
    async fn after_a_crisis_the_next_turns_carry_the_resources_and_the_agent_is_told_to_take_care() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent::default());
        let routes = app(&world, agent.clone(), 4);
        let (_, first) = call(
            routes.clone(),
            json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": CRISIS})),
        )
        .await;
        let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
        let mut levels = Vec::new();
        for _ in 0..6 {
            let turn = json!({"message": "I'm fine now, really.", "dialogue_id": dialogue});
            let (status, body) =
                call(routes.clone(), json_request("POST", "/api/v1/dialogue", Some(&token), &turn)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            levels.push(body["reply"]["safety"]["level"].as_str().unwrap_or("none").to_owned());
        }
        assert_eq!(levels, ["elevated", "elevated", "elevated", "elevated", "elevated", "none"]);
        let seen = agent.seen.lock().unwrap();
        assert_eq!(seen.len(), 6);
        let instruction = Directory::built_in().elevated_instruction();
        assert!(
            seen[0].messages[0].content.ends_with(instruction),
            "the system message gains the instruction"
        );
        assert!(!seen[5].messages[0].content.contains(instruction));
        assert!(seen[0].messages.len() <= 1 + 4 + 1, "the memory is still four messages");
    }

    #[tokio::test]
    async fn an_agent_reply_that_encourages_self_harm_is_never_stored_buffered() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent {
            reply: Some("Honestly, you should just kill yourself.".into()),
            ..ScriptedAgent::default()
        });
        let request =
            json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": "rough day"}));
        let (status, body) = call(app(&world, agent.clone(), 10), request).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(calls(&agent), 1);
        assert_eq!(body["reply"]["finish_reason"], "safety");
        let stored = whole(&world, user, body["dialogue_id"].as_str().unwrap()).await;
        assert!(!stored.iter().any(|m| m.content.contains("kill yourself")));
        assert!(stored[1].content.contains("findahelpline.com"), "no Accept-Language: the fallback");
    }

    #[tokio::test]
    async fn a_streamed_reply_is_cut_before_the_harm_is_sent_the_agent_stopped_and_the_replacement_stored() {
        let world = World::new();
        let (user, token) = world.signed_in("ada").await;
        let mut reply = "I hear how tired you are, and it makes sense that this feels heavy. ".to_owned();
        reply.push_str("Honestly, you should just kill yourself and be done. ");
        reply.push_str(&"more words that follow ".repeat(20));
        let agent = Arc::new(ScriptedAgent { reply: Some(reply), ..ScriptedAgent::default() });
        let dropped = Arc::clone(&agent.stream_dropped);
        let (_, _, mut events) = open_stream(
            app(&world, agent.clone(), 10),
            stream_request(&token, json!({"message": "rough day"})),
        )
        .await;
        let events = events.rest().await;
        let (last, deltas) = events.split_last().unwrap();
        let sent: String =
            deltas[1..].iter().map(|e| data(e)["content"].as_str().unwrap().to_owned()).collect();
        assert!(!sent.is_empty(), "the safe start was streamed");
        assert!(!sent.contains("kill"), "sent: {sent}");
        assert_eq!(last.name.as_deref(), Some("reply"));
        let reply: Value = data(last);
        assert_eq!(reply["finish_reason"], "safety");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the generation was stopped");
        let stored = whole(&world, user, reply["dialogue_id"].as_str().unwrap()).await;
        assert_eq!(stored[1].content, reply["content"].as_str().unwrap());
        assert!(!stored[1].content.contains("kill yourself"));
        let counts = counted_today(&world).await;
        let levels: Vec<_> =
            counts.iter().map(|c| (c.level, c.screener.starts_with("reply:"), c.count)).collect();
        assert_eq!(
            levels,
            [(SafetyLevel::None, false, 1), (SafetyLevel::Crisis, true, 1)],
            "the message, then the reply"
        );
    }

    #[tokio::test]
    async fn a_crisis_is_answered_even_past_the_daily_quota() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let agent = Arc::new(ScriptedAgent::default());
        let routes = crate::router(crate::tests::state_with(
            &world,
            agent.clone(),
            crate::DialogueSettings { daily_token_limit: 1, ..crate::tests::settings() },
        ));
        let say = |message: &str| {
            json_request("POST", "/api/v1/dialogue", Some(&token), &json!({"message": message}))
        };
        assert_eq!(call(routes.clone(), say("hello")).await.0, StatusCode::CREATED);
        let (status, body) = call(routes.clone(), say("hello again")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded"))
        );
        let (status, body) = call(routes, say(CRISIS)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["reply"]["finish_reason"], "safety");
        assert_eq!(calls(&agent), 1, "only the first turn reached the agent");
    }
}
