//! End to end with the real model in-process: `ifs-guide serve` with no `AGENT_URL`.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{assert_valid_list, spawn_app_with_model};

#[tokio::test]
async fn a_dialogue_with_the_bundled_model_remembers_the_first_turn() {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let app = spawn_app_with_model(Arc::clone(&prompts)).await;
    let token = app.user("ada@example.com").await;

    let (status, first) = app.say(&token, "My name is Ada and I like tea.", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let reply = first["reply"]["content"].as_str().unwrap();
    assert!(!reply.trim().is_empty());
    assert!(first["reply"]["usage"]["completion_tokens"].as_u64().unwrap() <= 24);
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();

    let (status, second) = app.say(&token, "What do I like to drink?", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK, "{second}");

    let prompts = prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 2);
    let second_prompt = &prompts[1];
    assert!(second_prompt.contains("You are a kind guide."), "{second_prompt}");
    assert!(
        second_prompt.contains("My name is Ada and I like tea."),
        "the first turn is remembered: {second_prompt}"
    );
    assert!(second_prompt.contains(reply.trim()), "so is the first reply: {second_prompt}");
    assert!(second_prompt.contains("What do I like to drink?"));
    assert_valid_list(&app.all_messages(&token, &dialogue).await);

    // The agent's own routes are mounted in the same process.
    let (status, info) = app.get("/api/v1/agent", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["file"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    let (status, completion) = app
        .post(
            "/v1/chat/completions",
            None,
            &json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{completion}");
    assert_eq!(completion["usage"]["completion_tokens"], 3);
}
