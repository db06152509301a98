//! Safety screening through the running app, on the embedded store and (TEST_BACKENDS=aws) on
//! DynamoDB Local + redis-server: a crisis never reaches the agent, buffered or streamed; an
//! unsafe reply is never stored; `ifs-guide safety-report` reads the counts back.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_crisis_message_reaches_the_agent_zero_times_buffered_or_streamed_and_is_counted() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (status, body) = app.say(&token, "I don't want to live anymore", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reply"]["finish_reason"], "safety");
    assert_eq!(body["reply"]["safety"]["level"], "crisis");
    assert!(
        body["reply"]["safety"]["resources"]["lines"][0]["url"].as_str().unwrap().contains("findahelpline")
    );
    let dialogue = body["dialogue_id"].as_str().unwrap().to_owned();

    let (status, events) = app.say_streaming(&token, "Ich will mich umbringen", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["message", "delta", "reply"], "{events:?}");
    assert_eq!(events[2].1["finish_reason"], "safety");
    assert!(events[2].1["content"].as_str().unwrap().contains("Danke"), "answered in German");
    assert_eq!(app.backing.agent.requests.lock().unwrap().len(), 0, "the agent was never asked");

    // The next turn goes to the agent, with resources still attached.
    let (status, body) = app.say(&token, "thank you, I'll call them", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reply"]["safety"]["level"], "elevated");
    assert_eq!(app.backing.agent.requests.lock().unwrap().len(), 1);
    let stored = app.all_messages(&token, &dialogue).await;
    assert_eq!(stored.len(), 6, "each turn is a message and its reply");

    let backing = app.stop().await;
    let (code, printed) = backing.safety_report();
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("total: none 0, elevated 1, crisis 2"), "{printed}");
    for private in ["ada@example.com", dialogue.as_str(), "umbringen"] {
        assert!(!printed.contains(private), "the report names {private}: {printed}");
    }
}

#[tokio::test]
async fn safety_replies_are_valid_lists_for_the_audit() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, body) = app.say(&token, "je veux mourir", None).await;
    let dialogue = body["dialogue_id"].as_str().unwrap().to_owned();
    let regenerated = app
        .post("/api/v1/dialogue", Some(&token), &json!({"dialogue_id": dialogue, "regenerate": true}))
        .await;
    assert_eq!(regenerated.0, StatusCode::OK, "{}", regenerated.1);
    assert_eq!(regenerated.1["reply"]["finish_reason"], "safety", "a crisis stays a crisis when regenerated");
    assert_eq!(app.backing.agent.requests.lock().unwrap().len(), 0);
    let backing = app.stop().await;
    backing.assert_check_clean(1, 2);
}

#[tokio::test]
async fn crisis_lines_follow_the_profiles_country_then_accept_language_then_the_fallback() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/api/v1/signup",
            None,
            &json!({"email": "ada@example.com", "password": "a long password", "country": "de"}),
        )
        .await;
    assert_eq!((status, body["country"].as_str()), (StatusCode::CREATED, Some("DE")), "{body}");
    let (status, body) = app
        .post(
            "/api/v1/signup",
            None,
            &json!({"email": "bob@example.com", "password": "a long password", "country": "DEU"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("country:"), "{body}");
    let (_, login) = app.login("ada@example.com", "a long password").await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.1["country"], "DE");

    let crisis = |language: &'static str| {
        let (client, url, token) = (app.client.clone(), app.url("/api/v1/dialogue"), token.clone());
        async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("accept-language", language)
                .json(&json!({"message": "I want to end my life"}))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            body["reply"]["safety"]["resources"]["country"].as_str().map(str::to_owned)
        }
    };
    assert_eq!(crisis("en-US,en;q=0.9").await.as_deref(), Some("DE"), "the profile wins");

    let (status, body) = app.patch("/api/v1/me", Some(&token), &json!({"country": null})).await;
    assert_eq!((status, &body["country"]), (StatusCode::OK, &serde_json::Value::Null), "{body}");
    assert_eq!(crisis("en-US,en;q=0.9").await.as_deref(), Some("US"), "then Accept-Language");
    assert_eq!(crisis("en").await, None, "then the international lines");

    for refused in [json!({}), json!({"country": "123"}), json!({"country": 7})] {
        let (status, body) = app.patch("/api/v1/me", Some(&token), &refused).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}: {body}");
    }
    let (status, body) = app.patch("/api/v1/me", Some(&token), &json!({"country": "au"})).await;
    assert_eq!((status, body["country"].as_str()), (StatusCode::OK, Some("AU")));
    assert_eq!(crisis("en-US").await.as_deref(), Some("AU"));
    let (status, export) = app.get("/api/v1/me/export", Some(&token)).await;
    assert_eq!(
        (status, export["profile"]["country"].as_str()),
        (StatusCode::OK, Some("AU")),
        "the export has it"
    );
}
