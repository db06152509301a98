//! The agent as the Dialogue Manager sees it: a port that completes a chat, whole or as a stream
//! of text, and its adapter over HTTP to any OpenAI-compatible server (our agent service,
//! llama.cpp's `llama-server`, …).

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use ifs_domain::Usage;
use reqwest::{StatusCode, Url, header};
use serde::Deserialize;

use crate::openai::{ChatChunk, ChatRequest, ChatResponse, StreamOptions};
use crate::sse;

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

/// One event of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// More of the reply's text (whole characters).
    Delta(String),
    /// The reply is complete; nothing follows.
    Finished(Finished),
}

/// How a streamed reply ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    pub finish_reason: Option<String>,
    pub model: String,
    pub usage: Option<Usage>,
    /// Oldest messages the agent left out to fit its context, when it says (`ifs`).
    pub truncated_messages: Option<u32>,
}

/// `ifs.truncated_messages` of our agent's answers and chunks; other servers send none.
#[must_use]
pub fn truncated_messages(ifs: Option<&serde_json::Value>) -> Option<u32> {
    ifs?.get("truncated_messages")?.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A reply as it is produced: deltas, then `Finished`, or an error instead of the rest. Dropping
/// it tells the agent to stop generating.
pub type AgentStream = BoxStream<'static, Result<AgentEvent, AgentError>>;

/// Something that completes chats.
#[async_trait]
pub trait Agent: Send + Sync + std::fmt::Debug + 'static {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError>;

    /// The reply as it is produced. Refusals before the first token (busy, a request that does
    /// not fit) are the `Err` here, as [`Agent::complete`] gives them.
    async fn stream(&self, request: ChatRequest) -> Result<AgentStream, AgentError>;

    /// One line for the start-up banner.
    fn describe(&self) -> String;

    /// Whether a request now would be let in, where the agent can tell without being asked (it
    /// runs in this process); [`AgentError::Busy`] if it would be turned away. The Dialogue
    /// Manager asks before it stores the user's message, so that a busy agent leaves nothing
    /// behind. A remote agent cannot tell: it answers busy after, and the message is kept.
    fn admits(&self) -> Result<(), AgentError> {
        Ok(())
    }
}

/// An OpenAI-compatible chat-completions endpoint over HTTP.
#[derive(Debug, Clone)]
pub struct HttpAgent {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
    /// Sent as `Authorization: Bearer …` with every request (`AGENT_API_KEY`).
    key: Option<crate::agent_key::AgentKey>,
}

impl HttpAgent {
    /// `url` is the full endpoint, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
    pub fn new(url: Url, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { client, url, timeout, key: None })
    }

    /// Sends `key` with every request, as an agent started with `AGENT_API_KEY` requires.
    #[must_use]
    pub fn with_key(self, key: Option<crate::agent_key::AgentKey>) -> Self {
        Self { key, ..self }
    }

    fn post(&self) -> reqwest::RequestBuilder {
        let request = self.client.post(self.url.clone());
        match &self.key {
            Some(key) => request.header(header::AUTHORIZATION, key.bearer()),
            None => request,
        }
    }

    /// What a failed request means: a timeout is the agent not answering in time.
    fn failed(&self, error: reqwest::Error) -> AgentError {
        if error.is_timeout() {
            AgentError::Timeout(self.timeout)
        } else {
            AgentError::Unavailable(error.to_string())
        }
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

fn retry_after(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A whole reply as a stream: for agents that answered without streaming.
#[must_use]
pub fn whole(reply: ChatResponse) -> AgentStream {
    let choice = reply.choices.into_iter().next();
    let finish_reason = choice.as_ref().and_then(|c| c.finish_reason.clone());
    let text = choice.and_then(|c| c.message.content).unwrap_or_default();
    let truncated_messages = truncated_messages(reply.ifs.as_ref());
    let finished = Finished { finish_reason, model: reply.model, usage: reply.usage, truncated_messages };
    Box::pin(futures::stream::iter([Ok(AgentEvent::Delta(text)), Ok(AgentEvent::Finished(finished))]))
}

/// Reads an OpenAI chat-completions event stream: `data: <chunk>` events, an error event, then
/// `data: [DONE]`. Whatever carries it (HTTP, a Lambda response stream) hands in the bytes.
#[derive(Debug)]
pub struct ChunkReader {
    decoder: sse::Decoder,
    finished: Finished,
    done: bool,
    /// Bytes of reply text so far: past [`ANSWER_LIMIT`] the stream is refused, as a whole
    /// answer that long is. A runaway agent streamed 400 MB into memory before this.
    text_bytes: usize,
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self {
            decoder: sse::Decoder::new(ANSWER_LIMIT),
            finished: Finished::default(),
            done: false,
            text_bytes: 0,
        }
    }
}

impl ChunkReader {
    /// The events in `bytes`, in order; an error is the last. After `[DONE]` the last is
    /// `Finished` and nothing more is read.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<AgentEvent, AgentError>> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let events = match self.decoder.push(bytes) {
            Ok(events) => events,
            Err(e) => return vec![Err(AgentError::Unavailable(e.to_string()))],
        };
        for event in events {
            match self.read(&event.data) {
                Ok(read) => out.extend(read.into_iter().map(Ok)),
                Err(error) => {
                    out.push(Err(error));
                    return out;
                }
            }
            if self.done {
                break;
            }
        }
        out
    }

    fn read(&mut self, data: &str) -> Result<Vec<AgentEvent>, AgentError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(vec![AgentEvent::Finished(std::mem::take(&mut self.finished))]);
        }
        let value: serde_json::Value = serde_json::from_str(data).map_err(|e| {
            AgentError::Unavailable(format!("malformed stream event ({e}): {}", snippet(data.as_bytes())))
        })?;
        if let Some(error) = value.get("error") {
            let message = error.get("message").and_then(serde_json::Value::as_str).unwrap_or("unknown error");
            return Err(AgentError::Unavailable(format!(
                "failed while streaming: {}",
                message.chars().take(SNIPPET).collect::<String>()
            )));
        }
        let chunk: ChatChunk = serde_json::from_value(value).map_err(|e| {
            AgentError::Unavailable(format!("malformed chunk ({e}): {}", snippet(data.as_bytes())))
        })?;
        if !chunk.model.is_empty() {
            self.finished.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.finished.usage = chunk.usage;
        }
        if let Some(truncated) = truncated_messages(chunk.ifs.as_ref()) {
            self.finished.truncated_messages = Some(truncated);
        }
        let mut out = Vec::new();
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                self.text_bytes += text.len();
                if self.text_bytes > ANSWER_LIMIT {
                    self.done = true;
                    return Err(AgentError::Unavailable(format!("streamed more than {ANSWER_LIMIT} bytes")));
                }
                out.push(AgentEvent::Delta(text));
            }
            if choice.finish_reason.is_some() {
                self.finished.finish_reason = choice.finish_reason;
            }
        }
        Ok(out)
    }

    /// Whether `[DONE]` came: a stream that ends before it was cut off.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Where the bytes of an event stream come from (an HTTP body, a Lambda response stream).
#[async_trait]
pub trait ByteSource: Send + 'static {
    /// The next piece; None at the end.
    async fn next_bytes(&mut self) -> Result<Option<bytes::Bytes>, AgentError>;
}

/// An OpenAI chat-completions event stream read from `source` as an [`AgentStream`]: deltas,
/// then `Finished` at `[DONE]`; an error (from the source or in the stream) ends it.
pub fn event_stream(source: impl ByteSource) -> AgentStream {
    struct Reading<S> {
        source: S,
        reader: ChunkReader,
        ready: VecDeque<Result<AgentEvent, AgentError>>,
        ended: bool,
    }
    let reading = Reading { source, reader: ChunkReader::default(), ready: VecDeque::new(), ended: false };
    Box::pin(futures::stream::unfold(reading, |mut reading| async move {
        loop {
            if let Some(event) = reading.ready.pop_front() {
                if event.is_err() {
                    reading.ended = true;
                    reading.ready.clear();
                }
                return Some((event, reading));
            }
            if reading.ended || reading.reader.is_done() {
                return None;
            }
            let failure = match reading.source.next_bytes().await {
                Ok(Some(bytes)) => {
                    reading.ready.extend(reading.reader.push(&bytes));
                    continue;
                }
                Ok(None) => AgentError::Unavailable("the stream ended before [DONE]".into()),
                Err(error) => error,
            };
            reading.ended = true;
            return Some((Err(failure), reading));
        }
    }))
}

/// An HTTP answer's body, each piece due within `idle`.
struct HttpBody {
    response: reqwest::Response,
    idle: Duration,
}

#[async_trait]
impl ByteSource for HttpBody {
    async fn next_bytes(&mut self) -> Result<Option<bytes::Bytes>, AgentError> {
        match tokio::time::timeout(self.idle, self.response.chunk()).await {
            Err(_) => Err(AgentError::Timeout(self.idle)),
            Ok(Err(e)) => Err(AgentError::Unavailable(format!("the stream broke: {e}"))),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }
}

#[async_trait]
impl Agent for HttpAgent {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        let failed = |e| self.failed(e);
        let request = ChatRequest { stream: None, stream_options: None, ..request };
        let response = self.post().timeout(self.timeout).json(&request).send().await.map_err(failed)?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let body = read_capped(response, failed).await?;
        answer(status, retry_after, &body)
    }

    async fn stream(&self, request: ChatRequest) -> Result<AgentStream, AgentError> {
        let failed = |e| self.failed(e);
        let request = ChatRequest {
            stream: Some(true),
            stream_options: Some(StreamOptions { include_usage: true }),
            ..request
        };
        // The timeout covers the wait for the answer's head; after it, each piece of the
        // stream must come within the same time.
        let response = tokio::time::timeout(self.timeout, self.post().json(&request).send())
            .await
            .map_err(|_| AgentError::Timeout(self.timeout))?
            .map_err(failed)?;
        let status = response.status();
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !status.is_success() || !is_stream {
            // A refusal, or a server that answers a stream request whole.
            let retry_after = retry_after(&response);
            let body = tokio::time::timeout(self.timeout, read_capped(response, failed))
                .await
                .map_err(|_| AgentError::Timeout(self.timeout))??;
            return answer(status, retry_after, &body).map(whole);
        }
        Ok(event_stream(HttpBody { response, idle: self.timeout }))
    }

    fn describe(&self) -> String {
        format!("OpenAI-compatible endpoint {}", self.url)
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn texts(events: &[Result<AgentEvent, AgentError>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Ok(AgentEvent::Delta(text)) => text.clone(),
                Ok(AgentEvent::Finished(f)) => {
                    format!("finished {:?} {} {:?}", f.finish_reason, f.model, f.usage)
                }
                Err(error) => format!("error {error}"),
            })
            .collect()
    }

    #[test]
    fn a_stream_reads_as_deltas_then_how_it_finished() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            ": a comment\n\n",
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"after done\"}}]}\n\n",
        );
        let expected = vec![
            "Hel".to_owned(),
            "lo".to_owned(),
            format!("finished {:?} m {:?}", Some("length"), Some(Usage::of(3, 2))),
        ];
        let mut reader = ChunkReader::default();
        assert_eq!(texts(&reader.push(stream.as_bytes())), expected);
        assert!(reader.is_done());
        // Byte by byte, the same.
        let mut reader = ChunkReader::default();
        let events: Vec<_> = stream.as_bytes().iter().flat_map(|b| reader.push(&[*b])).collect();
        assert_eq!(texts(&events), expected);
    }

    #[test]
    fn text_before_an_error_event_is_kept_and_the_error_ends_it() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"one \"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"never\"}}]}\n\n";
        let events = ChunkReader::default().push(stream.as_bytes());
        assert_eq!(texts(&events), ["one ", "error the agent is unavailable: failed while streaming: boom"]);
        let garbage = ChunkReader::default().push(b"data: <html>\n\n");
        assert!(matches!(garbage.as_slice(), [Err(AgentError::Unavailable(_))]));
    }

    #[test]
    fn a_stream_longer_than_an_answer_may_be_ends_in_an_error_and_is_read_no_further() {
        let piece = "x".repeat(1000);
        let event = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{piece}\"}}}}]}}\n\n");
        let mut reader = ChunkReader::default();
        let mut read = 0;
        let mut failed = false;
        for _ in 0..2 * ANSWER_LIMIT / piece.len() {
            for event in reader.push(event.as_bytes()) {
                match event {
                    Ok(AgentEvent::Delta(text)) => read += text.len(),
                    Err(_) => failed = true,
                    Ok(AgentEvent::Finished(_)) => unreachable!(),
                }
            }
        }
        assert!(failed, "the overflow is an error");
        assert!(read <= ANSWER_LIMIT, "{read} bytes passed on");
        assert!(reader.push(event.as_bytes()).is_empty(), "nothing is read after it");
    }
}
