//! The agent as another Lambda function (`AGENT_FUNCTION`): on AWS the Dialogue Manager runs in the
//! VPC, which has no internet path, and invokes the agent's function directly through Lambda's API
//! (reached through the VPC's Lambda interface endpoint). The request is the chat-completions
//! request it would POST over HTTP, wrapped as the API Gateway HTTP-API event that the agent's
//! `lambda_http` runtime reads. When the agent's function answers with Lambda response streaming
//! (its `LAMBDA_STREAMING`, as deployed), the invocation streams too (`InvokeWithResponseStream`,
//! `AGENT_FUNCTION_STREAMING` here): its payload is the HTTP answer as `lambda_http` streams it —
//! a prelude with status and headers, then the body — read exactly as an HTTP answer would be, an
//! event stream included. Otherwise a synchronous `Invoke` returns the whole answer.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_lambda::error::{DisplayErrorContext, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvokeWithResponseStreamResponseEvent;
use axum::body::Bytes;
use axum::http::StatusCode;
use ifs_api::agent::{ANSWER_LIMIT, Agent, AgentError, AgentStream, ByteSource, answer, event_stream, whole};
use ifs_api::openai::{ChatRequest, ChatResponse, StreamOptions};
use serde::Deserialize;
use serde_json::json;

/// Where the agent is asked: the OpenAI path its router serves.
const PATH: &str = "/v1/chat/completions";
/// `Retry-After` for a throttled invocation, which names none.
const THROTTLED_RETRY_AFTER: u64 = 2;

/// The agent's Lambda function, invoked with its answer streamed.
#[derive(Debug, Clone)]
pub struct LambdaAgent {
    client: aws_sdk_lambda::Client,
    function: String,
    /// How long the answer's head, and then each piece of it, may take.
    timeout: Duration,
    /// Whether the function answers with Lambda response streaming (its `LAMBDA_STREAMING`), to
    /// be invoked with `InvokeWithResponseStream`; otherwise a synchronous `Invoke`.
    streaming: bool,
}

impl LambdaAgent {
    /// The function named `function` (name or ARN), through `endpoint` when given (a local Lambda
    /// emulator such as `cargo lambda watch`), otherwise through the default AWS chain. `timeout`
    /// bounds each invocation (when streaming: its head, then each piece). `streaming` must say
    /// how the function answers.
    pub async fn connect(function: &str, endpoint: Option<&str>, timeout: Duration, streaming: bool) -> Self {
        let loader = ifs_store::sdk_loader(endpoint).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(timeout)
                .build(),
        );
        // A generation is not idempotent work to repeat on a slow answer; the Dialogue Manager
        // reports a failure and keeps the user's message instead.
        let config = loader.retry_config(aws_config::retry::RetryConfig::disabled()).load().await;
        Self {
            client: aws_sdk_lambda::Client::new(&config),
            function: function.to_owned(),
            timeout,
            streaming,
        }
    }
}

/// `request` as the HTTP-API (payload 2.0) event of `POST /v1/chat/completions`.
#[must_use]
pub fn event(request: &ChatRequest) -> serde_json::Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    json!({
        "version": "2.0",
        "routeKey": format!("POST {PATH}"),
        "rawPath": PATH,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "user-agent": "ifs-guide-dialogue"},
        "requestContext": {
            "accountId": "ifs-guide",
            "apiId": "ifs-guide-dialogue",
            "domainName": "agent.invoke",
            "http": {
                "method": "POST",
                "path": PATH,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "ifs-guide-dialogue"
            },
            // For the agent's logs; uniqueness is all it needs.
            "requestId": format!("dialogue-{}", now.as_nanos()),
            "routeKey": format!("POST {PATH}"),
            "stage": "$default",
            "timeEpoch": u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
        },
        "body": serde_json::to_string(request).unwrap_or_default(),
        "isBase64Encoded": false
    })
}

/// The head of a streamed HTTP answer: `lambda_http`'s metadata prelude, which the function
/// writes before the body and ends with eight NUL bytes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prelude {
    status_code: u16,
    #[serde(default)]
    headers: std::collections::HashMap<String, serde_json::Value>,
}

impl Prelude {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| match v {
            serde_json::Value::String(one) => Some(one.as_str()),
            serde_json::Value::Array(many) => many.first().and_then(serde_json::Value::as_str),
            _ => None,
        })
    }
}

/// What ends the prelude.
const PRELUDE_END: [u8; 8] = [0; 8];
/// A prelude is a status and a few headers; anything longer is not one.
const PRELUDE_LIMIT: usize = 16 * 1024;

type Events = aws_sdk_lambda::primitives::event_stream::EventReceiver<
    InvokeWithResponseStreamResponseEvent,
    aws_sdk_lambda::types::error::InvokeWithResponseStreamResponseEventError,
>;

/// A streaming invocation under way: the answer's status and headers, and its body to read.
struct Invocation {
    function: String,
    events: Events,
    prelude: Prelude,
    /// Body bytes that came with the prelude.
    first: Option<Bytes>,
    idle: Duration,
}

impl Invocation {
    /// The next piece of the body; None once the function has finished.
    async fn next(&mut self) -> Result<Option<Bytes>, AgentError> {
        if let Some(first) = self.first.take().filter(|b| !b.is_empty()) {
            return Ok(Some(first));
        }
        loop {
            let event = tokio::time::timeout(self.idle, self.events.recv())
                .await
                .map_err(|_| AgentError::Timeout(self.idle))?
                .map_err(|e| {
                    AgentError::Unavailable(format!("reading {}: {}", self.function, DisplayErrorContext(&e)))
                })?;
            match event {
                None => {
                    return Err(AgentError::Unavailable("the invocation ended without completing".into()));
                }
                Some(InvokeWithResponseStreamResponseEvent::PayloadChunk(chunk)) => {
                    match chunk.payload().map(|p| Bytes::copy_from_slice(p.as_ref())) {
                        Some(bytes) if !bytes.is_empty() => return Ok(Some(bytes)),
                        _ => {}
                    }
                }
                Some(InvokeWithResponseStreamResponseEvent::InvokeComplete(complete)) => {
                    return match complete.error_code() {
                        None => Ok(None),
                        Some(code) => Err(AgentError::Unavailable(format!(
                            "the agent function failed ({code}): {}",
                            complete
                                .error_details()
                                .unwrap_or_default()
                                .chars()
                                .take(300)
                                .collect::<String>()
                        ))),
                    };
                }
                Some(_) => {}
            }
        }
    }

    /// The rest of the body, refused beyond [`ANSWER_LIMIT`].
    async fn rest(&mut self) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(piece) = self.next().await? {
            if body.len() + piece.len() > ANSWER_LIMIT {
                return Err(AgentError::Unavailable(format!("answered more than {ANSWER_LIMIT} bytes")));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    fn status(&self) -> Result<StatusCode, AgentError> {
        StatusCode::from_u16(self.prelude.status_code)
            .map_err(|_| AgentError::Unavailable(format!("status {}", self.prelude.status_code)))
    }

    fn retry_after(&self) -> Option<u64> {
        self.prelude.header("retry-after").and_then(|v| v.trim().parse().ok())
    }
}

impl LambdaAgent {
    /// What a refused invocation means: busy when Lambda throttles, unavailable otherwise.
    fn refused<E: std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        error: &SdkError<E, R>,
        throttled: bool,
    ) -> AgentError {
        if matches!(error, SdkError::TimeoutError(_)) {
            return AgentError::Unavailable("invoke timed out".into());
        }
        if throttled {
            return AgentError::Busy { retry_after: THROTTLED_RETRY_AFTER };
        }
        AgentError::Unavailable(format!("invoking {}: {}", self.function, DisplayErrorContext(error)))
    }

    /// Invokes a function that answers whole (synchronous `Invoke`).
    async fn invoke_whole(&self, request: &ChatRequest) -> Result<ChatResponse, AgentError> {
        let payload = invocation_payload(request)?;
        let invoked = self.client.invoke().function_name(&self.function).payload(payload).send().await;
        let output = invoked.map_err(|error| {
            let throttled = error
                .as_service_error()
                .is_some_and(|e| e.is_too_many_requests_exception() || e.is_ec2_throttled_exception());
            self.refused(&error, throttled)
        })?;
        let payload = output.payload().map(Blob::as_ref).unwrap_or_default();
        if let Some(failure) = output.function_error() {
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned();
            return Err(AgentError::Unavailable(format!("the agent function failed ({failure}): {shown}")));
        }
        if payload.len() > ANSWER_LIMIT {
            return Err(AgentError::Unavailable(format!("answered more than {ANSWER_LIMIT} bytes")));
        }
        let proxied: ProxyAnswer = serde_json::from_slice(payload).map_err(|e| {
            AgentError::Unavailable(format!("the agent function's answer is not HTTP-shaped: {e}"))
        })?;
        let body = match (proxied.body, proxied.is_base64_encoded) {
            (None, _) => Vec::new(),
            (Some(text), false) => text.into_bytes(),
            (Some(text), true) => base64_decode(&text)
                .ok_or_else(|| AgentError::Unavailable("the agent function's body is not base64".into()))?,
        };
        let status = StatusCode::from_u16(proxied.status_code)
            .map_err(|_| AgentError::Unavailable(format!("status {}", proxied.status_code)))?;
        let retry_after = proxied
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, value)| value.trim().parse().ok());
        answer(status, retry_after, &body)
    }

    /// Invokes the agent's function with its answer streamed, and reads the answer's head.
    async fn invoke(&self, request: &ChatRequest) -> Result<Invocation, AgentError> {
        let payload = invocation_payload(request)?;
        let invoked = self
            .client
            .invoke_with_response_stream()
            .function_name(&self.function)
            .payload(payload)
            .send()
            .await;
        let output = invoked.map_err(|error| {
            let throttled = error
                .as_service_error()
                .is_some_and(|e| e.is_too_many_requests_exception() || e.is_ec2_throttled_exception());
            self.refused(&error, throttled)
        })?;
        let mut invocation = Invocation {
            function: self.function.clone(),
            events: output.event_stream,
            prelude: Prelude { status_code: 0, headers: Default::default() },
            first: None,
            idle: self.timeout,
        };
        // The prelude, up to its end marker; what follows it is the body's beginning.
        let mut head = Vec::new();
        let end = loop {
            if let Some(at) = head.windows(PRELUDE_END.len()).position(|w| w == PRELUDE_END) {
                break at;
            }
            if head.len() > PRELUDE_LIMIT {
                return Err(AgentError::Unavailable(
                    "the agent function's answer has no HTTP prelude".into(),
                ));
            }
            match invocation.next().await? {
                Some(piece) => head.extend_from_slice(&piece),
                None => {
                    return Err(AgentError::Unavailable(
                        "the agent function did not stream an HTTP answer (is LAMBDA_STREAMING set on it?)"
                            .into(),
                    ));
                }
            }
        };
        invocation.prelude = serde_json::from_slice(&head[..end]).map_err(|e| {
            AgentError::Unavailable(format!("the agent function's answer has no HTTP prelude: {e}"))
        })?;
        invocation.first = Some(Bytes::copy_from_slice(&head[end + PRELUDE_END.len()..]));
        Ok(invocation)
    }
}

#[async_trait]
impl ByteSource for Invocation {
    async fn next_bytes(&mut self) -> Result<Option<Bytes>, AgentError> {
        self.next().await
    }
}

#[async_trait]
impl Agent for LambdaAgent {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        let request = ChatRequest { stream: None, stream_options: None, ..request };
        if !self.streaming {
            return self.invoke_whole(&request).await;
        }
        let mut invocation = self.invoke(&request).await?;
        let body = invocation.rest().await?;
        answer(invocation.status()?, invocation.retry_after(), &body)
    }

    /// The agent's own event stream, read as its function writes it. Dropping it drops the
    /// invocation; the agent's function, which cannot see that, finishes its generation. A
    /// function that answers whole gives the reply as one piece.
    async fn stream(&self, request: ChatRequest) -> Result<AgentStream, AgentError> {
        if !self.streaming {
            return self.complete(request).await.map(whole);
        }
        let request = ChatRequest {
            stream: Some(true),
            stream_options: Some(StreamOptions { include_usage: true }),
            ..request
        };
        let mut invocation = self.invoke(&request).await?;
        let status = invocation.status()?;
        let is_stream =
            invocation.prelude.header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
        if !status.is_success() || !is_stream {
            let body = invocation.rest().await?;
            return answer(status, invocation.retry_after(), &body).map(whole);
        }
        Ok(event_stream(invocation))
    }

    fn describe(&self) -> String {
        let how = if self.streaming { "InvokeWithResponseStream" } else { "Invoke" };
        format!("Lambda function {} ({how})", self.function)
    }
}

/// `request` as the payload of an invocation: its HTTP-API event, encoded.
fn invocation_payload(request: &ChatRequest) -> Result<Blob, AgentError> {
    serde_json::to_vec(&event(request))
        .map(Blob::new)
        .map_err(|e| AgentError::Unavailable(format!("encoding the invocation: {e}")))
}

/// The HTTP answer `lambda_http` makes of a response to an HTTP-API event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyAnswer {
    status_code: u16,
    #[serde(default)]
    headers: std::collections::HashMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
