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
