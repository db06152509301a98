//! Every error is JSON with the right status and a request id; no input makes the server fail.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{read, spawn_app};

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/nothing-here", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, body) = app.get("/api/v1/signup", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    for response in [
        app.client.get(app.url("/api/v1/me")).send().await.unwrap(),
        app.client.get(app.url("/nope")).send().await.unwrap(),
        app.client
            .post(app.url("/api/v1/signup"))
            .json(&json!({"email": "x@example.com", "password": "long enough"}))
            .send()
            .await
            .unwrap(),
    ] {
        assert!(response.headers().contains_key("x-request-id"), "{}", response.status());
    }
    let echoed =
        app.client.get(app.url("/api/v1/me")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_413() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let huge = json!({"message": "x".repeat(300 * 1024)});
    let (status, body) = app.post("/api/v1/dialogue", Some(&token), &huge).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn malformed_bodies_are_400s_not_500s() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    for (path, raw) in [
        ("/api/v1/signup", "{"),
        ("/api/v1/signup", "null"),
        ("/api/v1/login", "[1,2"),
        ("/api/v1/dialogue", r#"{"message": ["a"]}"#),
        ("/api/v1/dialogue", "\u{0}"),
    ] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{path} {raw:?}"
        );
    }
}

#[tokio::test]
async fn protected_endpoints_need_a_token() {
    let app = spawn_app().await;
    for (status, body) in [
        app.get("/api/v1/me", None).await,
        app.post("/api/v1/logout", None, &json!(null)).await,
        app.post("/api/v1/dialogue", None, &json!({"message": "hi"})).await,
        app.get("/api/v1/dialogues", None).await,
        app.get("/api/v1/messages?dialogue_id=x", Some("not-a-jwt")).await,
    ] {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
    }
}

#[tokio::test]
async fn bad_query_parameters_name_themselves() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    for (path, field) in [
        ("/api/v1/dialogues?limit=1000", "limit"),
        ("/api/v1/dialogues?cursor=bm9wZQ", "cursor"),
        ("/api/v1/messages", "dialogue_id"),
        ("/api/v1/messages?dialogue_id=123", "dialogue_id"),
    ] {
        let (status, body) = app.get(path, Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(field), "{path}: {body}");
    }
}
