//! The agent as the Dialogue Manager sees it: a port that completes a chat, and its adapter over
//! HTTP to any OpenAI-compatible server (our agent service, llama.cpp's `llama-server`, …).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url, header};
use serde::Deserialize;

use crate::openai::{ChatRequest, ChatResponse};

/// Why the agent gave no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent is unavailable: {0}")]
    Unavailable(String),
    /// Every generation slot and queue place is taken; `retry_after` seconds is the agent's
    /// own estimate of when to try again.
    #[error("the agent is busy")]
    Busy { retry_after: u64 },
    /// The agent refused this request as it stands (e.g. `context_overflow`); retrying the
    /// same request will not help.
    #[error("the agent refused the request: {code}: {message}")]
    Rejected { code: &'static str, message: String },
}

/// Something that completes chats.
#[async_trait]
pub trait Agent: Send + Sync + std::fmt::Debug + 'static {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError>;

    /// One line for the start-up banner.
    fn describe(&self) -> String;
}

/// An OpenAI-compatible chat-completions endpoint over HTTP.
#[derive(Debug, Clone)]
pub struct HttpAgent {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
}

impl HttpAgent {
    /// `url` is the full endpoint, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    pub fn new(url: Url, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { client, url, timeout })
    }
}

/// At most this much of an unexpected answer goes into the log.
const SNIPPET: usize = 300;
/// The most of an agent's answer that is read: a reply holds at most 16,000 characters, so
/// anything near this is not a reply, and must not cost memory.
pub const ANSWER_LIMIT: usize = 1024 * 1024;
/// `Retry-After` passed on when a busy agent names none.
const DEFAULT_RETRY_AFTER: u64 = 2;

/// The error body of an OpenAI-compatible server: ours and OpenAI's carry a string `code`,
/// llama.cpp's `llama-server` a numeric one and a `type`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// What a refusal means for the user: busy (try again), a request that cannot fit the model's
/// context (nothing to retry), or a failure of the agent itself.
fn refusal(status: StatusCode, retry_after: Option<u64>, body: &[u8]) -> AgentError {
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        let seconds = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(1, 600);
        return AgentError::Busy { retry_after: seconds };
    }
    let detail = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    if status == StatusCode::BAD_REQUEST
        && let Some(detail) = detail
    {
        let code = detail.code.as_ref().and_then(serde_json::Value::as_str);
        let overflow = matches!(code, Some("context_overflow" | "context_length_exceeded"))
            || detail.kind.as_deref() == Some("exceed_context_size_error");
        if overflow {
            let message =
                detail.message.unwrap_or_else(|| "the conversation does not fit the model's context".into());
            return AgentError::Rejected {
                code: "context_overflow",
                message: message.chars().take(SNIPPET).collect(),
            };
        }
    }
    AgentError::Unavailable(format!("answered {status}: {}", snippet(body)))
}

/// What an OpenAI-compatible answer means, however it travelled (HTTP, a Lambda invocation): the
/// reply, or why there is none. `body` is at most [`ANSWER_LIMIT`] bytes.
pub fn answer(status: StatusCode, retry_after: Option<u64>, body: &[u8]) -> Result<ChatResponse, AgentError> {
    if !status.is_success() {
        return Err(refusal(status, retry_after, body));
    }
    let reply: ChatResponse = serde_json::from_slice(body)
        .map_err(|e| AgentError::Unavailable(format!("malformed answer ({e}): {}", snippet(body))))?;
    match reply.choices.first() {
        Some(choice) if choice.message.content.is_some() => Ok(reply),
        _ => Err(AgentError::Unavailable(format!("answer has no message content: {}", snippet(body)))),
    }
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]).into_owned()
}

/// Reads the answer's body, refusing one larger than [`ANSWER_LIMIT`] before or while reading it.
async fn read_capped(
    mut response: reqwest::Response,
    failed: impl Fn(reqwest::Error) -> AgentError,
) -> Result<Vec<u8>, AgentError> {
    let too_large = || AgentError::Unavailable(format!("answered more than {ANSWER_LIMIT} bytes"));
    if response.content_length().is_some_and(|n| n > ANSWER_LIMIT as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(&failed)? {
        if body.len() + chunk.len() > ANSWER_LIMIT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[async_trait]
impl Agent for HttpAgent {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                AgentError::Timeout(self.timeout)
            } else {
                AgentError::Unavailable(e.to_string())
            }
        };
        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(&request)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_capped(response, failed).await?;
        answer(status, retry_after, &body)
    }

    fn describe(&self) -> String {
        format!("OpenAI-compatible endpoint {}", self.url)
    }
}
