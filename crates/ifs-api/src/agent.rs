//! The agent as the Dialogue Manager sees it: a port that completes a chat, and its adapter over
//! HTTP to any OpenAI-compatible server (our agent service, llama.cpp's `llama-server`, …).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;

use crate::openai::{ChatRequest, ChatResponse};

/// Why the agent gave no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent is unavailable: {0}")]
    Unavailable(String),
    /// Every generation slot and queue place is taken.
    #[error("the agent is busy")]
    Busy,
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
        let body = response.bytes().await.map_err(failed)?;
        let snippet = || String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]).into_owned();
        if !status.is_success() {
            return Err(AgentError::Unavailable(format!("answered {status}: {}", snippet())));
        }
        let reply: ChatResponse = serde_json::from_slice(&body)
            .map_err(|e| AgentError::Unavailable(format!("malformed answer ({e}): {}", snippet())))?;
        match reply.choices.first() {
            Some(choice) if choice.message.content.is_some() => Ok(reply),
            _ => Err(AgentError::Unavailable(format!("answer has no message content: {}", snippet()))),
        }
    }

    fn describe(&self) -> String {
        format!("OpenAI-compatible endpoint {}", self.url)
    }
}
