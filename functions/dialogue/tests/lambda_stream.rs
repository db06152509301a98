//! A streamed turn as Lambda response streaming delivers it: an API Gateway REST event through
//! the service `main` runs with `LAMBDA_STREAMING`, adapted as `lambda_http`'s streaming runner
//! adapts it. The metadata prelude carries the status and headers; the body is the event stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt as _;
use ifs_api::agent::{Agent, AgentError, AgentEvent, AgentStream, Finished};
use ifs_api::openai::{ChatRequest, ChatResponse};
use ifs_api::testing::World;
use ifs_dialogue::{DialogueSettings, DialogueState, router};
use lambda_http::request::LambdaRequest;
use lambda_http::{Context, LambdaEvent, Service as _, StreamAdapter};
use serde_json::json;

/// Streams a fixed reply word by word.
#[derive(Debug)]
struct Words;

#[async_trait]
impl Agent for Words {
    async fn complete(&self, _: ChatRequest) -> Result<ChatResponse, AgentError> {
        Err(AgentError::Unavailable("this test streams".into()))
    }

    async fn stream(&self, _: ChatRequest) -> Result<AgentStream, AgentError> {
        let words = ["Listen ", "to ", "both ", "parts."].map(|w| Ok(AgentEvent::Delta(w.to_owned())));
        let end = Ok(AgentEvent::Finished(Finished {
            finish_reason: Some("stop".into()),
            model: "words".into(),
            usage: None,
            truncated_messages: None,
        }));
        Ok(Box::pin(futures::stream::iter(words.into_iter().chain([end]))))
    }

    fn describe(&self) -> String {
        "words".into()
    }
}

/// A REST API (v1) event of `POST /prod/api/v1/dialogue`, as API Gateway sends it.
fn rest_event(token: &str, body: &serde_json::Value) -> LambdaRequest {
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    let event = json!({
        "resource": "/api/v1/dialogue",
        "path": "/api/v1/dialogue",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json", "Authorization": format!("Bearer {token}"),
                    "Host": "abc123.execute-api.eu-west-1.amazonaws.com"},
        "multiValueHeaders": {"Content-Type": ["application/json"], "Authorization": [format!("Bearer {token}")],
                              "Host": ["abc123.execute-api.eu-west-1.amazonaws.com"]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "resourceId": "a1b2c3", "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "resourcePath": "/api/v1/dialogue", "httpMethod": "POST", "apiId": "abc123",
            "path": "/prod/api/v1/dialogue"
        },
        "body": encoded,
        "isBase64Encoded": true
    });
    serde_json::from_value(event).expect("a REST API event")
}

async fn invoke(world: &World, token: &str, body: &serde_json::Value) -> (u16, String, String) {
    let state = DialogueState {
        auth: world.authenticator(),
        dialogues: world.backends.dialogues.clone(),
        users: world.backends.users.clone(),
        counters: world.backends.counters.clone(),
        agent: Arc::new(Words),
        screener: Arc::new(ifs_safety::BuiltIn::default()),
        safety_counts: world.backends.safety.clone(),
        settings: Arc::new(DialogueSettings {
            system_prompt: "Be kind.".into(),
            memory_messages: 10,
            model: "m".into(),
            agent_timeout: Duration::from_secs(5),
            turns_per_minute: 100,
            max_tokens_limit: ifs_api::openai::MAX_TOKENS_LIMIT,
            concurrent_turns: 2,
            daily_token_limit: 0,
        }),
        clock: Arc::new(ifs_domain::SystemClock),
    };
    let mut adapter = StreamAdapter::from(ifs_api::lambda::service(router(state)));
    let event = LambdaEvent::new(rest_event(token, body), Context::default());
    let response = adapter.call(event).await.expect("infallible");
    let prelude = response.metadata_prelude;
    let content_type =
        prelude.headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let mut body = Vec::new();
    let mut stream = response.stream;
    while let Some(piece) = stream.next().await {
        body.extend_from_slice(&piece.expect("body"));
    }
    (prelude.status_code.as_u16(), content_type, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_streamed_turn_is_a_prelude_with_its_status_then_the_event_stream() {
    let world = World::new();
    let (_, token) = world.signed_in("ada").await;
    let (status, content_type, body) =
        invoke(&world, &token, &json!({"message": "hello", "stream": true})).await;
    assert_eq!(status, 201);
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let events = ifs_api::sse::Decoder::new(1 << 20).push(body.as_bytes()).unwrap();
    let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["message", "delta", "delta", "delta", "delta", "reply"], "{body}");
    let reply: serde_json::Value = serde_json::from_str(&events[5].data).unwrap();
    assert_eq!(reply["content"], "Listen to both parts.");
}

#[tokio::test]
async fn refusals_and_whole_answers_go_through_the_streaming_runner_too() {
    let world = World::new();
    let (_, token) = world.signed_in("ada").await;
    let (status, content_type, body) = invoke(&world, &token, &json!({"message": " ", "stream": true})).await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_request");
    let (status, _, body) = invoke(&world, "not-a-token", &json!({"message": "hi"})).await;
    assert_eq!(status, 401, "{body}");
}
