//! The agent as a Lambda function (`AGENT_FUNCTION`): `LambdaAgent` against a stand-in for Lambda's
//! `Invoke` and `InvokeWithResponseStream` APIs that hands each event to a router through
//! `lambda_http`'s own adapters — the code the agent's runtime runs, without and with
//! `LAMBDA_STREAMING` — and answers as Lambda does: the whole answer, or what the function writes
//! (prelude, NUL bytes, body) in `PayloadChunk` event-stream messages ending with
//! `InvokeComplete`. The event we build and the answers we read are the real shapes.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt as _;
use ifs_api::agent::{Agent, AgentError, AgentEvent};
use ifs_api::openai::{ChatMessage, ChatRequest, ChatRole};
use ifs_dialogue::lambda_agent::LambdaAgent;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service as _, StreamAdapter};
use serde_json::{Value, json};

/// The agent double behind the function: echoes (word by word as OpenAI chunks when asked to
/// stream), or refuses as the message asks.
fn agent_routes() -> Router {
    Router::new().route(
        "/v1/chat/completions",
        post(|axum::Json(request): axum::Json<Value>| async move {
            let last = request["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned();
            if last.contains("[busy]") {
                let busy = json!({"error": {"code": "agent_busy", "message": "every slot is taken"}});
                return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")], axum::Json(busy))
                    .into_response();
            }
            if last.contains("[overflow]") {
                let overflow = json!({"error": {"code": "context_overflow", "message": "too long"}});
                return (StatusCode::BAD_REQUEST, axum::Json(overflow)).into_response();
            }
            let echo = format!("echo: {last}");
            if request["stream"] == json!(true) {
                let chunk = |delta: Value, finish: Value| {
                    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "double",
                                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    Ok::<_, std::convert::Infallible>(
                        axum::response::sse::Event::default().data(chunk.to_string()),
                    )
                };
                let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null)];
                events.extend(echo.split_inclusive(' ').map(|w| chunk(json!({"content": w}), Value::Null)));
                events.push(chunk(json!({}), json!("stop")));
                events.push(Ok(axum::response::sse::Event::default().data("[DONE]")));
                return axum::response::sse::Sse::new(futures::stream::iter(events)).into_response();
            }
            axum::Json(json!({
                "id": "chatcmpl-lambda", "object": "chat.completion", "created": 1, "model": "double",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": echo},
                             "finish_reason": "stop"}]
            }))
            .into_response()
        }),
    )
}

/// One event-stream message of an `InvokeWithResponseStream` answer.
fn frame(event_type: &'static str, content_type: &'static str, payload: Vec<u8>) -> Bytes {
    let message = Message::new(payload)
        .add_header(Header::new(":event-type", HeaderValue::String(event_type.into())))
        .add_header(Header::new(":message-type", HeaderValue::String("event".into())))
        .add_header(Header::new(":content-type", HeaderValue::String(content_type.into())));
    let mut bytes = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).unwrap();
    Bytes::from(bytes)
}

fn event_stream(frames: impl futures::Stream<Item = Bytes> + Send + 'static) -> axum::response::Response {
    let body = Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>));
    (StatusCode::OK, [("content-type", "application/vnd.amazon.eventstream")], body).into_response()
}

/// `POST /2015-03-31/functions/{name}/invocations`: `agent` runs the double; `crashing` fails as
/// an unhandled function error does; `throttled` is refused as Lambda refuses over concurrency.
async fn invoke_whole(Path(function): Path<String>, body: Bytes) -> axum::response::Response {
    match function.as_str() {
        "agent" => {
            let request: LambdaRequest = serde_json::from_slice(&body).unwrap();
            let event = LambdaEvent::new(request, Context::default());
            // The adapter is not Send: it must be gone before the await, only its future kept.
            let answering = Adapter::from(agent_routes()).call(event);
            let answer = answering.await.unwrap();
            (StatusCode::OK, serde_json::to_vec(&answer).unwrap()).into_response()
        }
        "crashing" => {
            let mut headers = HeaderMap::new();
            headers.insert("x-amz-function-error", "Unhandled".parse().unwrap());
            (StatusCode::OK, headers, r#"{"errorType":"Panic","errorMessage":"model file missing"}"#)
                .into_response()
        }
        _ => throttled(),
    }
}

fn throttled() -> axum::response::Response {
    let mut headers = HeaderMap::new();
    headers.insert("x-amzn-errortype", "TooManyRequestsException".parse().unwrap());
    (StatusCode::TOO_MANY_REQUESTS, headers, r#"{"Type":"User","message":"Rate Exceeded."}"#).into_response()
}

/// `POST /2021-11-15/functions/{name}/response-streaming-invocations`: `agent` runs the double
/// and streams what it writes, piece by piece; `crashing` fails as an unhandled function error
/// does; `throttled` is refused as Lambda refuses over concurrency.
async fn invoke(Path(function): Path<String>, body: Bytes) -> axum::response::Response {
    match function.as_str() {
        "agent" => {
            let request: LambdaRequest = serde_json::from_slice(&body).unwrap();
            let event = LambdaEvent::new(request, Context::default());
            // The adapter is not Send: it must be gone before the await, only its future kept.
            let answering = StreamAdapter::from(agent_routes()).call(event);
            let answer = answering.await.unwrap();
            let mut head = serde_json::to_vec(&answer.metadata_prelude).unwrap();
            head.extend_from_slice(&[0; 8]);
            let head =
                futures::stream::once(async move { frame("PayloadChunk", "application/octet-stream", head) });
            let body = answer
                .stream
                .map(|piece| frame("PayloadChunk", "application/octet-stream", piece.unwrap().to_vec()));
            let done =
                futures::stream::once(async { frame("InvokeComplete", "application/json", b"{}".to_vec()) });
            event_stream(head.chain(body).chain(done))
        }
        "crashing" => {
            let failed = json!({"ErrorCode": "Unhandled", "ErrorDetails": "model file missing"});
            let done = frame("InvokeComplete", "application/json", failed.to_string().into_bytes());
            event_stream(futures::stream::iter([done]))
        }
        _ => throttled(),
    }
}

async fn lambda_api() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/2015-03-31/functions/{function}/invocations", post(invoke_whole))
        .route("/2021-11-15/functions/{function}/response-streaming-invocations", post(invoke));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

fn asking(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage { role: ChatRole::User, content: text.into() }],
        ..ChatRequest::default()
    }
}

/// The function, invoked synchronously (`streaming` false) or with its answer streamed.
async fn agent(function: &str, streaming: bool) -> LambdaAgent {
    LambdaAgent::connect(function, Some(&lambda_api().await), Duration::from_secs(5), streaming).await
}

#[tokio::test]
async fn a_reply_comes_back_through_the_invocation() {
    for streaming in [false, true] {
        let reply = agent("agent", streaming).await.complete(asking("hello there")).await.unwrap();
        assert_eq!(reply.choices[0].message.content.as_deref(), Some("echo: hello there"), "{streaming}");
    }
}

#[tokio::test]
async fn the_agents_refusals_mean_what_they_mean_over_http() {
    for streaming in [false, true] {
        let agent = agent("agent", streaming).await;
        let busy = agent.complete(asking("[busy]")).await;
        assert!(matches!(busy, Err(AgentError::Busy { retry_after: 7 })), "{streaming}: {busy:?}");
        let overflow = agent.complete(asking("[overflow]")).await;
        assert!(
            matches!(overflow, Err(AgentError::Rejected { code: "context_overflow", .. })),
            "{streaming}: {overflow:?}"
        );
    }
}

#[tokio::test]
async fn a_crashed_or_throttled_function_is_unavailable_or_busy() {
    for streaming in [false, true] {
        let crashed = agent("crashing", streaming).await.complete(asking("hi")).await;
        assert!(
            matches!(&crashed, Err(AgentError::Unavailable(why)) if why.contains("Unhandled") && why.contains("model file missing")),
            "{streaming}: {crashed:?}"
        );
        let throttled = agent("throttled", streaming).await.complete(asking("hi")).await;
        assert!(matches!(throttled, Err(AgentError::Busy { .. })), "{streaming}: {throttled:?}");
    }
}

#[tokio::test]
async fn a_streamed_reply_arrives_in_pieces_through_the_invocation() {
    let mut stream = agent("agent", true).await.stream(asking("tell me more")).await.unwrap();
    let mut pieces = Vec::new();
    let mut finished = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            AgentEvent::Delta(text) => pieces.push(text),
            AgentEvent::Finished(end) => finished = Some(end),
        }
    }
    assert_eq!(pieces, ["echo: ", "tell ", "me ", "more"]);
    let finished = finished.expect("the stream finished");
    assert_eq!((finished.finish_reason.as_deref(), finished.model.as_str()), (Some("stop"), "double"));
    // Refusals before the stream are the same errors as for a whole reply.
    let busy = agent("agent", true).await.stream(asking("[busy]")).await.err();
    assert!(matches!(busy, Some(AgentError::Busy { retry_after: 7 })), "{busy:?}");
    let crashed = agent("crashing", true).await.stream(asking("hi")).await.err();
    assert!(
        matches!(&crashed, Some(AgentError::Unavailable(why)) if why.contains("Unhandled")),
        "{crashed:?}"
    );
    // A function that answers whole streams as one piece.
    let mut whole = agent("agent", false).await.stream(asking("tell me more")).await.unwrap();
    assert!(matches!(whole.next().await, Some(Ok(AgentEvent::Delta(text))) if text == "echo: tell me more"));
}
