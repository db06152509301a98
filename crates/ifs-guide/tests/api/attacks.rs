//! Attacks an adversarial test of the release binary once got through, replayed: long messages
//! that hid the rest of a dialogue, clients that never read their answers, one user holding
//! every generation slot. Each case is the attack and the bound that now holds; the agent's own
//! (stop strings, forged template markers, the prompt cache across users, trimming) are in
//! `ifs-agent`'s model tests, and the store's in its conformance suite.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::helpers::{Served, assert_valid_list, spawn_app};

/// A message as long as a message may be, four bytes a character.
fn crabs() -> String {
    "🦀".repeat(16_000)
}

#[tokio::test]
async fn long_messages_page_to_the_end_and_every_dialogue_is_listed() {
    let app = spawn_app().await;
    let token = app.user("crab@example.com").await;
    let (status, first) = app.say(&token, &crabs(), None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    for _ in 1..20 {
        assert_eq!(app.say(&token, &crabs(), Some(&dialogue)).await.0, StatusCode::OK);
    }
    // A page ends at its byte budget, with a cursor to the rest.
    let (status, page) =
        app.get(&format!("/api/v1/messages?dialogue_id={dialogue}&limit=200"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let on_page = page["messages"].as_array().unwrap().len();
    assert!(
        (1..40).contains(&on_page) && page["next_cursor"].is_string(),
        "{on_page} messages, {}",
        page["next_cursor"]
    );
    let messages = app.all_messages(&token, &dialogue).await;
    assert_eq!(messages.len(), 40, "walking the cursors reaches every message");
    assert_valid_list(&messages);

    for _ in 1..20 {
        assert_eq!(app.say(&token, &crabs(), None).await.0, StatusCode::CREATED);
    }
    let (_, listed) = app.get("/api/v1/dialogues?limit=100", Some(&token)).await;
    assert_eq!(listed["dialogues"].as_array().unwrap().len(), 20, "{}", listed["next_cursor"]);
    assert_eq!(listed["next_cursor"], Value::Null);
    app.stop().await.assert_check_clean(20, 78);
}

#[tokio::test]
async fn clients_that_never_read_their_answers_hold_neither_memory_nor_the_server() {
    let server =
        Served::start(&[("MAX_CONNECTIONS", "50"), ("WRITE_TIMEOUT", "2"), ("HEADER_TIMEOUT", "2")]).await;
    let client = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = client.post(format!("{}{path}", server.address)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let account = json!({"email": "reader@example.com", "password": "a long password"});
    assert_eq!(post("/api/v1/signup", None, account.clone()).await.0, StatusCode::CREATED);
    let (_, login) = post("/api/v1/login", None, account).await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let (_, first) = post("/api/v1/dialogue", Some(&token), json!({"message": crabs()})).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    for _ in 1..20 {
        let (status, _) =
            post("/api/v1/dialogue", Some(&token), json!({"message": crabs(), "dialogue_id": dialogue}))
                .await;
        assert_eq!(status, StatusCode::OK);
    }

    let before = server.status_kb("VmRSS");
    let address: std::net::SocketAddr = server.address.trim_start_matches("http://").parse().unwrap();
    let request = format!(
        "GET /api/v1/messages?dialogue_id={dialogue}&limit=200 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    let started = Instant::now();
    let newcomer = tokio::spawn({
        let (client, url, token) = (client.clone(), format!("{}/api/v1/me", server.address), token.clone());
        async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status()) }
    });
    let mut peak = before;
    while !newcomer.is_finished() && started.elapsed() < Duration::from_secs(30) {
        peak = peak.max(server.status_kb("VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = newcomer.await.unwrap().unwrap();
    let waited = started.elapsed();
    for _ in 0..30 {
        peak = peak.max(server.status_kb("VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, StatusCode::OK);
    // Queued behind 50 stalled connections that each get two seconds to read.
    assert!(waited < Duration::from_secs(15), "a new client waited {waited:?}");
    let grew_mb = peak.saturating_sub(before) / 1024;
    assert!(grew_mb < 200, "RSS grew {grew_mb} MB from {} MB", before / 1024);
    drop(stalled);
}
