//! A dialogue is a doubly linked list of messages with no separate entity: the first message names
//! the dialogue and carries its summary. This module holds the list's rules — how a new message
//! is linked after the tail, and what a valid list looks like — for every store adapter to follow.

use serde::{Deserialize, Serialize};

use crate::text::{is_blank, without_hidden};
use crate::{DialogueId, MessageId, Timestamp, UserId};

/// Longest message accepted, in characters.
pub const MESSAGE_MAX: usize = 16_000;
/// Longest dialogue title, in characters.
pub const TITLE_MAX: usize = 80;
/// Most messages a fork copies: forking at a message further into a dialogue is refused, which
/// bounds a fork's cost (one write per message) and time.
pub const FORK_MAX_MESSAGES: u64 = 1000;

/// Who wrote a stored message. The system prompt is configuration, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// Message text of acceptable length with at least one visible character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageTextError {
    #[error("must contain at least one visible character")]
    Empty,
    #[error("must be at most {MESSAGE_MAX} characters")]
    TooLong,
}

impl MessageText {
    pub fn parse(raw: String) -> Result<Self, MessageTextError> {
        if is_blank(&raw) {
            Err(MessageTextError::Empty)
        } else if raw.chars().count() > MESSAGE_MAX {
            Err(MessageTextError::TooLong)
        } else {
            Ok(Self(raw))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Token accounting reported by the agent for one reply. Each count is kept only if the agent
/// gave a valid one: a server that leaves a count out, or sends null, a negative or a fraction,
/// loses that count, never the reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    #[serde(default, deserialize_with = "count", skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    #[serde(default, deserialize_with = "count", skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "count", skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u32>,
}

impl Usage {
    /// All three counts, consistent.
    #[must_use]
    pub fn of(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens: Some(prompt_tokens),
            completion_tokens: Some(completion_tokens),
            total_tokens: Some(prompt_tokens.saturating_add(completion_tokens)),
        }
    }

    /// Whether no count survived.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A token count if the value is one (a whole number that fits), otherwise nothing.
fn count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Count(u64),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Loose::deserialize(deserializer)? {
        Loose::Count(n) => u32::try_from(n).ok(),
        Loose::Other(_) => None,
    })
}

/// What the agent said about how it produced a reply; kept on assistant messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// How many of the oldest messages of the memory the agent left out to fit its context;
    /// absent when none were (the Dialogue Manager stores no zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_messages: Option<u32>,
    /// Which version of the reply this is, from 2 once it was regenerated; absent on a first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// On a reply that carries crisis resources: what the safety screening decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<crate::SafetyNote>,
}

impl ReplyMeta {
    /// The version of the reply this describes: 1 unless it was regenerated.
    #[must_use]
    pub fn version(meta: Option<&Self>) -> u32 {
        meta.and_then(|meta| meta.version).unwrap_or(1)
    }
}

/// Most versions one reply keeps (the current and the earlier ones): regenerating past it is
/// refused, so that nothing a person saw is thrown away and a message stays bounded.
pub const REPLY_VERSIONS_MAX: u32 = 10;

/// A version of a reply as it was before it was regenerated (or is now, for the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyVersion {
    pub version: u32,
    pub content: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReplyMeta>,
}

impl ReplyVersion {
    /// `message` as the version it is now.
    #[must_use]
    pub fn of(message: &Message) -> Self {
        Self {
            version: ReplyMeta::version(message.meta.as_ref()),
            content: message.content.clone(),
            created_at: message.created_at,
            meta: message.meta.clone(),
        }
    }
}

/// Why a reply cannot be regenerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegenerateRefusal {
    /// The message named is not the dialogue's last.
    #[error("only the last reply of a dialogue can be regenerated")]
    NotLastReply,
    /// The dialogue ends with the user's message, not a reply.
    #[error("the dialogue does not end with a reply to regenerate")]
    NoReply,
    /// The reply has all the versions it may keep.
    #[error("this reply has its {REPLY_VERSIONS_MAX} versions already; fork the dialogue to try again")]
    VersionsFull,
}

impl Message {
    /// This reply (the tail of its dialogue) regenerated as `new`: its words, time and metadata
    /// replaced, its place and id kept, its version one more; refused past
    /// [`REPLY_VERSIONS_MAX`] or if it is not a reply.
    pub fn regenerated(&self, new: NewMessage) -> Result<Self, RegenerateRefusal> {
        if self.next_id.is_some() {
            return Err(RegenerateRefusal::NotLastReply);
        }
        if self.role != Role::Assistant {
            return Err(RegenerateRefusal::NoReply);
        }
        let version = ReplyMeta::version(self.meta.as_ref());
        if version >= REPLY_VERSIONS_MAX {
            return Err(RegenerateRefusal::VersionsFull);
        }
        let mut meta = new.meta.unwrap_or_default();
        meta.version = Some(version + 1);
        Ok(Self {
            content: new.content.into_string(),
            created_at: new.created_at,
            meta: Some(meta),
            ..self.clone()
        })
    }
}

/// One item of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub dialogue_id: DialogueId,
    /// Position in the list: 1, 2, 3 … with no gaps.
    pub seq: u64,
    pub role: Role,
    pub content: String,
    pub created_at: Timestamp,
    pub prev_id: Option<MessageId>,
    pub next_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReplyMeta>,
}

/// A message not yet in any list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MessageId,
    pub role: Role,
    pub content: MessageText,
    pub created_at: Timestamp,
    pub meta: Option<ReplyMeta>,
}

impl NewMessage {
    /// The head of a new dialogue: its id becomes the dialogue's id.
    #[must_use]
    pub fn into_head(self) -> Message {
        Message {
            id: self.id,
            dialogue_id: self.id.into(),
            seq: 1,
            role: self.role,
            content: self.content.into_string(),
            created_at: self.created_at,
            prev_id: None,
            next_id: None,
            meta: self.meta,
        }
    }

    /// Links this message after `tail`, updating both sides of the link.
    #[must_use]
    pub fn link_after(self, tail: &mut Message) -> Message {
        tail.next_id = Some(self.id);
        self.follow(tail.dialogue_id, tail.id, tail.seq)
    }

    /// This message as the one after the tail `tail_id` at `tail_seq`, for stores that update
    /// the tail's `next_id` without reading the whole tail.
    #[must_use]
    pub fn follow(self, dialogue_id: DialogueId, tail_id: MessageId, tail_seq: u64) -> Message {
        Message {
            id: self.id,
            dialogue_id,
            seq: tail_seq + 1,
            role: self.role,
            content: self.content.into_string(),
            created_at: self.created_at,
            prev_id: Some(tail_id),
            next_id: None,
            meta: self.meta,
        }
    }
}

/// What the listing of dialogues shows; stores keep it on the head message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogueSummary {
    pub id: DialogueId,
    pub owner: UserId,
    pub title: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub message_count: u64,
    pub tail_id: MessageId,
    /// The dialogue and message this one was forked at, if it is a fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkOrigin>,
}

/// Where a fork came from: its copies are of `dialogue_id`'s messages up to `message_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    pub dialogue_id: DialogueId,
    pub message_id: MessageId,
}

/// The plan of a fork: a new id for each message copied, so that every copy can be written
/// with its final links in any order (a store that cannot write them all at once writes them in
/// batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub origin: ForkOrigin,
    ids: Vec<MessageId>,
}

impl Fork {
    /// A fork of the first `count` messages of `origin.dialogue_id`, which ends at
    /// `origin.message_id`.
    #[must_use]
    pub fn new(origin: ForkOrigin, count: u64) -> Self {
        Self { origin, ids: (0..count).map(|_| MessageId::generate()).collect() }
    }

    /// The new dialogue's id: its head's.
    #[must_use]
    pub fn dialogue_id(&self) -> DialogueId {
        self.ids[0].into()
    }

    /// How many messages it copies.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Never: a fork copies at least the head.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The copy of `original` (at its position `seq`, within the fork): the same words, role,
    /// time and reply metadata, with new ids and links.
    #[must_use]
    pub fn copy(&self, original: &Message) -> Message {
        let at = usize::try_from(original.seq.saturating_sub(1)).unwrap_or(usize::MAX);
        Message {
            id: self.ids[at],
            dialogue_id: self.dialogue_id(),
            seq: original.seq,
            role: original.role,
            content: original.content.clone(),
            created_at: original.created_at,
            prev_id: at.checked_sub(1).map(|prev| self.ids[prev]),
            next_id: self.ids.get(at + 1).copied(),
            // The copy is a first version: earlier ones stay with the original.
            meta: original.meta.clone().map(|meta| ReplyMeta { version: None, ..meta }),
        }
    }

    /// The new dialogue's summary, given its head's copy and the latest time among its copies.
    #[must_use]
    pub fn summary(
        &self,
        owner: UserId,
        title: String,
        head: &Message,
        updated_at: Timestamp,
    ) -> DialogueSummary {
        DialogueSummary {
            id: self.dialogue_id(),
            owner,
            title,
            created_at: head.created_at,
            updated_at,
            message_count: self.len(),
            tail_id: self.ids[self.ids.len() - 1],
            forked_from: Some(self.origin),
        }
    }
}

impl DialogueSummary {
    /// The summary of a dialogue that has only its head.
    #[must_use]
    pub fn of_head(owner: UserId, head: &Message) -> Self {
        Self {
            id: head.dialogue_id,
            owner,
            title: title_for(&head.content),
            created_at: head.created_at,
            updated_at: head.created_at,
            message_count: 1,
            tail_id: head.id,
            forked_from: None,
        }
    }

    /// Records that `message` was appended at the tail.
    pub fn record_append(&mut self, message: &Message) {
        self.message_count = message.seq;
        self.tail_id = message.id;
        self.updated_at = self.updated_at.max(message.created_at);
    }
}

/// The first user message cut to [`TITLE_MAX`] characters at a word boundary, whitespace folded,
/// without the control, format and bidi characters that could hide or reorder a title in a list.
#[must_use]
pub fn title_for(first_message: &str) -> String {
    let folded = without_hidden(first_message).split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= TITLE_MAX {
        return folded;
    }
    // Leave room for the ellipsis; cut at the last space if there is a reasonable one.
    let room: String = folded.chars().take(TITLE_MAX - 1).collect();
    let next_is_space = folded.chars().nth(TITLE_MAX - 1) == Some(' ');
    let cut = match room.rfind(' ') {
        _ if next_is_space => room.as_str(),
        Some(at) if at >= TITLE_MAX / 2 => &room[..at],
        _ => room.as_str(),
    };
    format!("{}…", cut.trim_end())
}

/// A way in which a list of messages is not one valid dialogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a dialogue has at least one message")]
    Empty,
    #[error("message {index} has seq {found}, expected {expected}")]
    Gap { index: usize, expected: u64, found: u64 },
    #[error("message {index} belongs to another dialogue")]
    ForeignMessage { index: usize },
    #[error("the first message has a prev link")]
    HeadHasPrev,
    #[error("the last message has a next link")]
    TailHasNext,
    #[error("messages {index} and {next} are not linked both ways")]
    BrokenLink { index: usize, next: usize },
    #[error("message id {0} appears twice")]
    Duplicate(MessageId),
}

/// Checks every invariant of a whole dialogue given in list order.
pub fn check_chain(messages: &[Message]) -> Result<(), ChainError> {
    let (first, last) = match (messages.first(), messages.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => return Err(ChainError::Empty),
    };
    if first.prev_id.is_some() {
        return Err(ChainError::HeadHasPrev);
    }
    if last.next_id.is_some() {
        return Err(ChainError::TailHasNext);
    }
    let mut seen = std::collections::HashSet::new();
    for (index, message) in messages.iter().enumerate() {
        let expected = index as u64 + 1;
        if message.seq != expected {
            return Err(ChainError::Gap { index, expected, found: message.seq });
        }
        if message.dialogue_id != first.dialogue_id {
            return Err(ChainError::ForeignMessage { index });
        }
        if !seen.insert(message.id) {
            return Err(ChainError::Duplicate(message.id));
        }
    }
    for (index, pair) in messages.windows(2).enumerate() {
        if pair[0].next_id != Some(pair[1].id) || pair[1].prev_id != Some(pair[0].id) {
            return Err(ChainError::BrokenLink { index, next: index + 1 });
        }
    }
    Ok(())
}

/// How many of the `before` messages preceding a new one go to the agent as memory, for a memory
/// of at most `capacity` messages.
///
/// All of them while they fit. After that the window does not slide by one message a turn —
/// that would change the prompt's beginning every turn and defeat the agent's prompt cache — but
/// jumps: its oldest half is dropped at once, then it grows again for half a window's worth of
/// messages with the same beginning. The memory holds between `capacity - capacity / 2 + 1` and
/// `capacity` messages, and its first message moves by an even count (a user message stays first
/// when the dialogue alternates).
#[must_use]
pub fn memory_window(before: u64, capacity: usize) -> usize {
    let capacity = capacity as u64;
    if before <= capacity {
        return before as usize;
    }
    let step = (capacity / 2).max(1);
    let step = step + step % 2;
    let step = step.min(capacity).max(1);
    let start = (before - capacity).div_ceil(step) * step;
    (before - start) as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_window_grows_then_jumps_by_half_and_keeps_its_start_meanwhile() {
        use super::memory_window;
        // Everything while it fits.
        assert_eq!((0..=20).map(|n| memory_window(n, 20)).collect::<Vec<_>>(), (0..=20).collect::<Vec<_>>());
        // Then the start moves by 10 at a time: 21 messages before → the newest 11.
        assert_eq!(memory_window(21, 20), 11);
        assert_eq!(memory_window(30, 20), 20);
        assert_eq!(memory_window(31, 20), 11);
        for capacity in [0, 1, 2, 3, 7, 20, 21] {
            let mut previous_start = 0;
            for before in 0..200u64 {
                let kept = memory_window(before, capacity);
                assert!(kept <= capacity && kept as u64 <= before, "{before} {capacity}");
                let start = before - kept as u64;
                assert!(start >= previous_start, "the start never moves back");
                if start != previous_start && capacity >= 2 {
                    assert_eq!((start - previous_start) % 2, 0, "moves by an even count");
                    assert!(kept >= capacity - capacity / 2, "{before} {capacity}: keeps at least half");
                }
                previous_start = start;
            }
        }
    }

    use super::*;

    fn new_message(text: &str) -> NewMessage {
        NewMessage {
            id: MessageId::generate(),
            role: Role::User,
            content: MessageText::parse(text.into()).unwrap(),
            created_at: chrono::Utc::now(),
            meta: None,
        }
    }

    fn chain(n: usize) -> Vec<Message> {
        let mut list = vec![new_message("first").into_head()];
        for i in 1..n {
            let next = new_message(&format!("message {i}")).link_after(list.last_mut().unwrap());
            list.push(next);
        }
        list
    }

    #[test]
    fn blank_or_oversized_text_is_not_a_message() {
        let cases = [
            ("".to_string(), Err(MessageTextError::Empty)),
            (" \n\t ".to_string(), Err(MessageTextError::Empty)),
            ("\u{200B}\u{200B}\u{2060}".to_string(), Err(MessageTextError::Empty)),
            (" \u{FEFF}\u{3164}\u{2800} ".to_string(), Err(MessageTextError::Empty)),
            ("\u{200B}a".to_string(), Ok(())),
            ("x".repeat(MESSAGE_MAX + 1), Err(MessageTextError::TooLong)),
            ("é".repeat(MESSAGE_MAX), Ok(())),
            ("  hi  ".to_string(), Ok(())),
        ];
        for (raw, expected) in cases {
            assert_eq!(MessageText::parse(raw.clone()).map(|_| ()), expected, "{}", raw.len());
        }
    }

    #[test]
    fn usage_keeps_the_counts_that_are_valid() {
        let parse = |json: &str| serde_json::from_str::<Usage>(json).unwrap();
        assert_eq!(
            parse(r#"{"prompt_tokens": 7, "completion_tokens": 3}"#),
            Usage { prompt_tokens: Some(7), completion_tokens: Some(3), total_tokens: None }
        );
        assert_eq!(
            parse(r#"{"prompt_tokens": null, "completion_tokens": -3, "total_tokens": 2.5}"#),
            Usage::default()
        );
        assert_eq!(
            parse(r#"{"prompt_tokens": 5000000000, "total_tokens": "12", "extra": []}"#),
            Usage::default()
        );
        assert_eq!(
            parse(r#"{"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}"#),
            Usage::of(2, 1)
        );
        assert_eq!(
            serde_json::to_string(&parse(r#"{"completion_tokens": 4}"#)).unwrap(),
            r#"{"completion_tokens":4}"#
        );
    }

    #[test]
    fn the_head_names_the_dialogue_and_links_nowhere() {
        let head = new_message("hello").into_head();
        assert_eq!(head.dialogue_id, DialogueId::from(head.id));
        assert_eq!((head.seq, head.prev_id, head.next_id), (1, None, None));
    }

    #[test]
    fn linking_after_the_tail_updates_both_sides() {
        let mut head = new_message("hello").into_head();
        let second = new_message("again").link_after(&mut head);
        assert_eq!(head.next_id, Some(second.id));
        assert_eq!(second.prev_id, Some(head.id));
        assert_eq!(second.seq, 2);
        assert_eq!(second.dialogue_id, head.dialogue_id);
    }

    #[test]
    fn a_built_chain_is_valid() {
        for n in [1, 2, 5] {
            assert_eq!(check_chain(&chain(n)), Ok(()));
        }
    }

    #[test]
    fn every_broken_invariant_is_caught() {
        assert_eq!(check_chain(&[]), Err(ChainError::Empty));

        let mut forked = chain(3);
        forked[1].next_id = Some(MessageId::generate());
        assert_eq!(check_chain(&forked), Err(ChainError::BrokenLink { index: 1, next: 2 }));

        let mut gap = chain(3);
        gap.remove(1);
        assert!(matches!(check_chain(&gap), Err(ChainError::Gap { index: 1, expected: 2, found: 3 })));

        let mut headless = chain(2);
        headless[0].prev_id = Some(MessageId::generate());
        assert_eq!(check_chain(&headless), Err(ChainError::HeadHasPrev));

        let mut open = chain(2);
        open[1].next_id = Some(MessageId::generate());
        assert_eq!(check_chain(&open), Err(ChainError::TailHasNext));

        let mut duplicated = chain(3);
        duplicated[2].id = duplicated[0].id;
        duplicated[1].next_id = Some(duplicated[0].id);
        assert_eq!(check_chain(&duplicated), Err(ChainError::Duplicate(duplicated[0].id)));

        let mut mixed = chain(2);
        mixed[1].dialogue_id = DialogueId::generate();
        assert_eq!(check_chain(&mixed), Err(ChainError::ForeignMessage { index: 1 }));
    }

    #[test]
    fn the_summary_follows_the_tail() {
        let owner = UserId::generate();
        let list = chain(3);
        let mut summary = DialogueSummary::of_head(owner, &list[0]);
        assert_eq!((summary.message_count, summary.tail_id), (1, list[0].id));
        summary.record_append(&list[1]);
        summary.record_append(&list[2]);
        assert_eq!((summary.message_count, summary.tail_id), (3, list[2].id));
        assert_eq!(summary.title, "first");
    }

    #[test]
    fn titles_are_cut_at_a_word_boundary() {
        assert_eq!(
            title_for("  How do I\n talk to my   inner critic?  "),
            "How do I talk to my inner critic?"
        );

        let long =
            "I keep noticing a part of me that gets really anxious whenever my manager asks for a quick call";
        let title = title_for(long);
        assert!(title.chars().count() <= TITLE_MAX, "{title}");
        assert!(title.ends_with('…'));
        let stem = title.trim_end_matches('…');
        assert!(long.starts_with(stem) && long[stem.len()..].starts_with(' '), "{title}");

        let unbroken = "x".repeat(200);
        assert_eq!(title_for(&unbroken).chars().count(), TITLE_MAX);

        let exact = "y".repeat(TITLE_MAX);
        assert_eq!(title_for(&exact), exact);
    }

    #[test]
    fn titles_cannot_be_reversed_or_hidden_by_invisible_characters() {
        assert_eq!(title_for("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(title_for("\u{2066}a\u{2069} b\u{200B}c\u{0008}"), "a bc");
        assert_eq!(title_for("family 👨\u{200D}👩\u{200D}👧"), "family 👨\u{200D}👩\u{200D}👧");
    }
}
