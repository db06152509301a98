//! The subset of OpenAI's chat-completions wire format that ifs-guide speaks: the Dialogue Manager
//! sends it to the agent, and the agent service answers it. Unknown fields are ignored.

use ifs_domain::Usage;
use serde::{Deserialize, Serialize};

/// The longest reply, in tokens, a request may ask of the agent unless `AGENT_MAX_TOKENS_LIMIT`
/// says otherwise: the agent's default limit and the Dialogue Manager's, so that no turn the
/// Dialogue Manager accepts (and stores) is refused by the agent after. The OpenAPI document
/// states it too; a test holds it equal to this.
pub const MAX_TOKENS_LIMIT: u32 = 1024;

/// The author of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// At most 2,048.
    #[schema(max_items = 2048)]
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// An opaque name of the end user (OpenAI's `user`). The agent keeps each user's evaluated
    /// prompts apart by it, so that no one's prompt cache answers for another's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub user: Option<String>,
}

/// `stream_options`: whether the stream ends with a chunk carrying `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The assistant's message in a choice; `content` may be null in OpenAI's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyMessage {
    pub role: ChatRole,
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ReplyMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// `POST /v1/chat/completions` response body. Fields a minimal server may omit have defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chat_completion")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    /// Token counts; a `usage` that is not an object, or has no valid count, is dropped rather
    /// than costing the reply.
    #[serde(default, deserialize_with = "lenient_usage", skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// ifs-guide's extension (truncation, timings); other servers leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifs: Option<serde_json::Value>,
}

/// What a piece of a streamed reply adds to the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ChatRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    /// Null until the last content chunk, as OpenAI sends it.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One event of a streamed chat completion: `object: "chat.completion.chunk"`, with the same
/// `id` and `created` in every chunk of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chat_completion_chunk")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Only in the final chunk of a stream that asked for it (`choices` is empty there).
    #[serde(default, deserialize_with = "lenient_usage", skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// ifs-guide's extension, in the chunk that carries `finish_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifs: Option<serde_json::Value>,
}

fn chat_completion_chunk() -> String {
    "chat.completion.chunk".into()
}

fn chat_completion() -> String {
    "chat.completion".into()
}

fn lenient_usage<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Usage>, D::Error> {
    // Only an object is usage: serde would read an array positionally.
    Ok(match serde_json::Value::deserialize(deserializer)? {
        object @ serde_json::Value::Object(_) => {
            serde_json::from_value::<Usage>(object).ok().filter(|usage| !usage.is_empty())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_with_usage(usage: &str) -> String {
        format!(
            r#"{{"choices":[{{"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
        )
    }

    #[test]
    fn a_partial_or_broken_usage_never_costs_the_reply() {
        let cases = [
            (
                r#"{"prompt_tokens":5,"completion_tokens":2}"#,
                Some(Usage { total_tokens: None, ..Usage::of(5, 2) }),
            ),
            (
                r#"{"prompt_tokens":-1,"completion_tokens":null,"total_tokens":9}"#,
                Some(Usage { total_tokens: Some(9), ..Usage::default() }),
            ),
            (r#"{}"#, None),
            (r#""plenty""#, None),
            ("null", None),
            ("[1,2,3]", None),
        ];
        for (usage, expected) in cases {
            let reply: ChatResponse = serde_json::from_str(&reply_with_usage(usage)).expect(usage);
            assert_eq!(reply.usage, expected, "{usage}");
            assert_eq!(reply.choices[0].message.content.as_deref(), Some("hi"));
        }
    }
}
