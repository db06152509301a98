//! Sign-up, login, `/me`, logout and throttling over HTTP.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn signup_login_me_logout_round_trip() {
    let app = spawn_app().await;

    let (status, user) = app.signup("  Ada@Example.com", "correct horse").await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "ada@example.com");

    let (status, login) = app.login("ada@example.com", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!((login["token_type"].as_str(), login["expires_in"].as_i64()), (Some("bearer"), Some(3600)));
    let token = login["access_token"].as_str().unwrap();

    let (status, me) = app.get("/api/v1/me", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["id"].clone(), me["email"].clone()), (user["id"].clone(), json!("ada@example.com")));
    assert!(me["session_expires_at"].is_string());

    let (status, body) = app.post("/api/v1/logout", Some(token), &json!(null)).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, serde_json::Value::Null));
}

#[tokio::test]
async fn a_logged_out_token_is_refused_everywhere() {
    let app = spawn_app().await;
    let token = app.user("bob@example.com").await;
    let (_, started) = app.say(&token, "hello", None).await;
    let dialogue = started["dialogue_id"].as_str().unwrap().to_owned();

    assert_eq!(app.post("/api/v1/logout", Some(&token), &json!(null)).await.0, StatusCode::NO_CONTENT);

    let refused = [
        app.get("/api/v1/me", Some(&token)).await,
        app.post("/api/v1/logout", Some(&token), &json!(null)).await,
        app.say(&token, "still there?", Some(&dialogue)).await,
        app.get("/api/v1/dialogues", Some(&token)).await,
        app.get(&format!("/api/v1/messages?dialogue_id={dialogue}"), Some(&token)).await,
    ];
    for (status, body) in refused {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
    }
    // Logging in again gives a fresh, working token.
    let (_, login) = app.login("bob@example.com", "a long password").await;
    assert_eq!(app.get("/api/v1/me", login["access_token"].as_str()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_oauth2_password_form_logs_in() {
    let app = spawn_app().await;
    app.signup("carol@example.com", "form password").await;
    let response = app
        .client
        .post(app.url("/api/v1/login"))
        .form(&[("grant_type", "password"), ("username", "carol@example.com"), ("password", "form password")])
        .send()
        .await
        .unwrap();
    let (status, body) = crate::helpers::read(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    app.signup("dan@example.com", "the right one").await;
    let wrong = app.login("dan@example.com", "the wrong one").await;
    let unknown = app.login("nobody@example.com", "the right one").await;
    assert_eq!(wrong, unknown);
    assert_eq!(
        (wrong.0, wrong.1["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
}

#[tokio::test]
async fn five_failed_logins_are_throttled_with_retry_after() {
    let app = spawn_app().await;
    app.signup("eve@example.com", "the right one").await;
    for _ in 0..5 {
        assert_eq!(app.login("eve@example.com", "guess").await.0, StatusCode::UNAUTHORIZED);
    }
    let response = app
        .client
        .post(app.url("/api/v1/login"))
        .json(&json!({"email": "eve@example.com", "password": "the right one"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    let (status, body) = crate::helpers::read(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
    );
    // Other accounts are not affected.
    app.signup("frank@example.com", "frank's secret").await;
    assert_eq!(app.login("frank@example.com", "frank's secret").await.0, StatusCode::OK);
}

#[tokio::test]
async fn signing_up_twice_is_a_conflict() {
    let app = spawn_app().await;
    assert_eq!(app.signup("gina@example.com", "first password").await.0, StatusCode::CREATED);
    let (status, body) = app.signup("GINA@example.com", "second password").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("email_taken")));
}
