//! JSON shapes shared by several endpoints.

use ifs_domain::{Message, MessageId, Role, Timestamp, Usage};
use serde::Serialize;

/// A message as clients see it: its place in the list (`seq`, `prev_id`, `next_id`) and, for
/// replies, how the agent produced it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    #[schema(value_type = String, format = Uuid)]
    pub id: MessageId,
    /// Position in the dialogue, from 1.
    #[schema(minimum = 1)]
    pub seq: u64,
    pub role: Role,
    pub content: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The message before this one; null on the first.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub prev_id: Option<MessageId>,
    /// The message after this one; null on the last.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next_id: Option<MessageId>,
    /// On a reply: `stop`, `length` (max_tokens reached), `cancelled` (the client left a
    /// streamed turn) or `error` (the agent failed midway; the text so far is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// On a reply: how many of the oldest messages of the memory the agent left out to fit its
    /// context; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_messages: Option<u32>,
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        let meta = message.meta.unwrap_or_default();
        Self {
            id: message.id,
            seq: message.seq,
            role: message.role,
            content: message.content,
            created_at: message.created_at,
            prev_id: message.prev_id,
            next_id: message.next_id,
            finish_reason: meta.finish_reason,
            usage: meta.usage,
            truncated_messages: meta.truncated_messages,
        }
    }
}
