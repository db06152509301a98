//! Input that is valid on the wire but must not mean what it seems to: look-alike emails,
//! invisible messages, spoofed titles, long messages in verbose escapes, forged request ids, and
//! the requests that never reach the application at all.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{read, send_raw, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_look_alike_email_is_the_same_account_or_refused_never_a_second_one() {
    let app = spawn_app().await;
    assert_eq!(app.signup("ada@example.com", "the real ada").await.0, StatusCode::CREATED);

    let (status, body) = app.signup("ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ", "an impostor").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("email_taken")));
    for impostor in ["ada\u{200b}@example.com", "\"ada\"@example.com", "ada@localhost", "ada@[127.0.0.1]"] {
        let (status, body) = app.signup(impostor, "an impostor").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{impostor:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("email"), "{body}");
    }
    // The real owner logs in with the fullwidth spelling too: it is the same address.
    assert_eq!(app.login("ＡＤＡ@example.com", "the real ada").await.0, StatusCode::OK);
}

#[tokio::test]
async fn invisible_messages_are_refused_and_titles_lose_their_hidden_characters() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (status, body) = app.say(&token, "\u{200b}\u{200c}\u{2060}\u{feff}", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(app.backing.agent.requests.lock().unwrap().is_empty(), "nothing invisible reaches the agent");

    let (status, _) = app.say(&token, "my notes\u{202e}txt.exe", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, listing) = app.get("/api/v1/dialogues", Some(&token)).await;
    assert_eq!(listing["dialogues"][0]["title"], "my notestxt.exe");
}

#[tokio::test]
async fn the_longest_message_is_accepted_whatever_escapes_its_json_uses() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    // 16,000 × "\u00e9" is how Python's json.dumps writes 16,000 é by default: 96 KB.
    let body = format!(r#"{{"message":"{}"}}"#, "\\u00e9".repeat(16_000));
    assert!(body.len() > 64 * 1024);
    let response = app
        .client
        .post(app.url("/api/v1/dialogue"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, reply) = read(response).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["message"]["content"].as_str().unwrap().chars().count(), 16_000);

    // Other routes keep their 64 KiB.
    let huge = json!({"email": "x@example.com", "password": "p".repeat(70 * 1024)});
    let (status, body) = app.post("/api/v1/signup", None, &huge).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn one_account_cannot_send_more_turns_a_minute_than_the_limit() {
    let app = spawn_app_with(&["--dialogue-rate-limit", "3"]).await;
    let token = app.user("ada@example.com").await;
    for n in 0..3 {
        assert_eq!(app.say(&token, &format!("[down] turn {n}"), None).await.0, StatusCode::BAD_GATEWAY);
    }
    let response = app
        .client
        .post(app.url("/api/v1/dialogue"))
        .bearer_auth(&token)
        .json(&json!({"message": "one more"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
    );
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn a_forged_request_id_is_replaced_not_echoed() {
    let app = spawn_app().await;
    for forged in ["evil\" status=500 user=admin", &"a".repeat(65)] {
        let response =
            app.client.get(app.url("/api/v1/me")).header("x-request-id", forged).send().await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, forged);
        assert_eq!(id.len(), 36, "a generated UUID: {id}");
    }
}

/// Requests hyper cannot parse never reach the application: hyper answers them itself, with a
/// bare status and no body, and closes the connection. The README says so; this keeps it true.
#[tokio::test]
async fn what_hyper_refuses_by_itself_is_a_bare_status_as_the_readme_says() {
    let app = spawn_app().await;
    let head_over_limit = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024));
    for (request, status) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "400"),
        (
            "POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                .to_owned(),
            "400",
        ),
        (head_over_limit, "431"),
    ] {
        let answer = send_raw(app.socket_address(), request.as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains("content-length: 0"), "{answer}");
    }
    // Whatever does reach the application is JSON, a body that breaks mid-way included.
    let broken_chunk = b"POST /api/v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                         Transfer-Encoding: chunked\r\n\r\nZZ\r\n";
    let answer = send_raw(app.socket_address(), broken_chunk).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains(r#""code":"invalid_request""#), "{answer}");
}
