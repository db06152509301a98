//! The agent as another Lambda function (`AGENT_FUNCTION`): on AWS the Dialogue Manager runs in the
//! VPC, which has no internet path, and invokes the agent's function directly through Lambda's API
//! (reached through the VPC's Lambda interface endpoint). The request is the chat-completions
//! request it would POST over HTTP, wrapped as the API Gateway HTTP-API event that the agent's
//! `lambda_http` runtime reads; the answer is read exactly as an HTTP answer would be.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_lambda::error::{DisplayErrorContext, SdkError};
use aws_sdk_lambda::primitives::Blob;
use axum::http::StatusCode;
use ifs_api::agent::{ANSWER_LIMIT, Agent, AgentError, AgentStream, answer, whole};
use ifs_api::openai::{ChatRequest, ChatResponse};
use serde::Deserialize;
use serde_json::json;

/// Where the agent is asked: the OpenAI path its router serves.
const PATH: &str = "/v1/chat/completions";
/// `Retry-After` for a throttled invocation, which names none.
const THROTTLED_RETRY_AFTER: u64 = 2;

/// The agent's Lambda function, invoked synchronously.
#[derive(Debug, Clone)]
pub struct LambdaAgent {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaAgent {
    /// The function named `function` (name or ARN), through `endpoint` when given (a local Lambda
    /// emulator such as `cargo lambda watch`), otherwise through the default AWS chain. `timeout`
    /// bounds each invocation.
    pub async fn connect(function: &str, endpoint: Option<&str>, timeout: Duration) -> Self {
        let loader = ifs_store::sdk_loader(endpoint).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(timeout)
                .build(),
        );
        // A generation is not idempotent work to repeat on a slow answer; the Dialogue Manager
        // reports a failure and keeps the user's message instead.
        let config = loader.retry_config(aws_config::retry::RetryConfig::disabled()).load().await;
        Self { client: aws_sdk_lambda::Client::new(&config), function: function.to_owned() }
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

#[async_trait]
impl Agent for LambdaAgent {
    /// The whole reply as one piece: a synchronous `Invoke` answers only when the generation is
    /// done. (`InvokeWithResponseStream` against an agent that streams its response is the way to
    /// pieces; until then a dialogue stream on AWS gets the reply in one `delta`.)
    async fn stream(&self, request: ChatRequest) -> Result<AgentStream, AgentError> {
        let request = ChatRequest { stream: None, stream_options: None, ..request };
        self.complete(request).await.map(whole)
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        let payload = serde_json::to_vec(&event(&request))
            .map_err(|e| AgentError::Unavailable(format!("encoding the invocation: {e}")))?;
        let invoked =
            self.client.invoke().function_name(&self.function).payload(Blob::new(payload)).send().await;
        let output = match invoked {
            Ok(output) => output,
            Err(SdkError::TimeoutError(_)) => return Err(AgentError::Unavailable("invoke timed out".into())),
            Err(error) => {
                let throttled = error
                    .as_service_error()
                    .is_some_and(|e| e.is_too_many_requests_exception() || e.is_ec2_throttled_exception());
                if throttled {
                    return Err(AgentError::Busy { retry_after: THROTTLED_RETRY_AFTER });
                }
                return Err(AgentError::Unavailable(format!(
                    "invoking {}: {}",
                    self.function,
                    DisplayErrorContext(&error)
                )));
            }
        };
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

    fn describe(&self) -> String {
        format!("Lambda function {}", self.function)
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
