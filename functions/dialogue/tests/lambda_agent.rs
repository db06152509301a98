//! The agent as a Lambda function (`AGENT_FUNCTION`): `LambdaAgent` against a stand-in for Lambda's
//! Invoke API that hands each event to a router through `lambda_http`'s own adapter — the code the
//! agent's runtime runs — so the event we build and the answer we read are the real shapes.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use ifs_api::agent::{Agent, AgentError};
use ifs_api::openai::{ChatMessage, ChatRequest, ChatRole};
use ifs_dialogue::lambda_agent::LambdaAgent;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service as _};
use serde_json::{Value, json};

/// The agent double behind the function: echoes, or refuses as the message asks.
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
            axum::Json(json!({
                "id": "chatcmpl-lambda", "object": "chat.completion", "created": 1, "model": "double",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")},
                             "finish_reason": "stop"}]
            }))
            .into_response()
        }),
    )
}

/// `POST /2015-03-31/functions/{name}/invocations`: `agent` runs the double; `crashing` fails as
/// an unhandled function error does; `throttled` is refused as Lambda refuses over concurrency.
async fn invoke(Path(function): Path<String>, body: Bytes) -> axum::response::Response {
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
        _ => {
            let mut headers = HeaderMap::new();
            headers.insert("x-amzn-errortype", "TooManyRequestsException".parse().unwrap());
            (StatusCode::TOO_MANY_REQUESTS, headers, r#"{"Type":"User","message":"Rate Exceeded."}"#)
                .into_response()
        }
    }
}

async fn lambda_api() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/2015-03-31/functions/{function}/invocations", post(invoke));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

fn asking(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage { role: ChatRole::User, content: text.into() }],
        ..ChatRequest::default()
    }
}

async fn agent(function: &str) -> LambdaAgent {
    LambdaAgent::connect(function, Some(&lambda_api().await), Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_reply_comes_back_through_the_invocation() {
    let reply = agent("agent").await.complete(asking("hello there")).await.unwrap();
    assert_eq!(reply.choices[0].message.content.as_deref(), Some("echo: hello there"));
}

#[tokio::test]
async fn the_agents_refusals_mean_what_they_mean_over_http() {
    let agent = agent("agent").await;
    let busy = agent.complete(asking("[busy]")).await;
    assert!(matches!(busy, Err(AgentError::Busy { retry_after: 7 })), "{busy:?}");
    let overflow = agent.complete(asking("[overflow]")).await;
    assert!(matches!(overflow, Err(AgentError::Rejected { code: "context_overflow", .. })), "{overflow:?}");
}

#[tokio::test]
async fn a_crashed_or_throttled_function_is_unavailable_or_busy() {
    let crashed = agent("crashing").await.complete(asking("hi")).await;
    assert!(
        matches!(&crashed, Err(AgentError::Unavailable(why)) if why.contains("Unhandled") && why.contains("model file missing")),
        "{crashed:?}"
    );
    let throttled = agent("throttled").await.complete(asking("hi")).await;
    assert!(matches!(throttled, Err(AgentError::Busy { .. })), "{throttled:?}");
}
