//! End to end with the real model in-process: `ifs-guide serve` with no `AGENT_URL`.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{
    assert_valid_list, spawn_app_with_agent_url, spawn_app_with_agent_url_and, spawn_app_with_model,
    spawn_app_with_model_and, standalone_agent, standalone_agent_with_key,
};

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
    assert!(info["disclaimer"].as_str().unwrap().contains("not a crisis service"), "{info}");
    let (status, completion) = app
        .post(
            "/v1/chat/completions",
            None,
            // Greedy, and asked for more than 3 tokens' worth (a greeting may end sooner).
            &json!({"messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
                    "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{completion}");
    assert_eq!(completion["usage"]["completion_tokens"], 3, "{completion}");
    assert_eq!(completion["choices"][0]["finish_reason"], "length", "{completion}");
}

#[tokio::test]
async fn a_streamed_turn_with_the_bundled_model_is_what_is_stored_and_a_dropped_one_is_kept_as_cancelled() {
    let app = spawn_app_with_model(Arc::default()).await;
    let token = app.user("ada@example.com").await;

    let (status, events) = app.say_streaming(&token, "Tell me about tea.", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (first, last) = (&events[0], &events[events.len() - 1]);
    assert_eq!((first.0.as_str(), last.0.as_str()), ("message", "reply"), "{events:?}");
    let deltas: String = events[1..events.len() - 1]
        .iter()
        .map(|(name, data)| {
            assert_eq!(name, "delta");
            data["content"].as_str().unwrap()
        })
        .collect();
    assert!(events.len() > 4, "the reply came in pieces: {events:?}");
    assert_eq!(last.1["content"], deltas);
    let dialogue = first.1["dialogue_id"].as_str().unwrap().to_owned();
    let stored = app.all_messages(&token, &dialogue).await;
    assert_eq!(stored[1]["content"], deltas);

    // A long reply, dropped after a few pieces: what was sent is kept, marked cancelled.
    let body = json!({"message": "Count from 1 to 500, separated by commas.", "dialogue_id": dialogue,
                      "max_tokens": 1000, "temperature": 0, "stream": true});
    let mut response =
        app.client.post(app.url("/api/v1/dialogue")).bearer_auth(&token).json(&body).send().await.unwrap();
    let mut decoder = ifs_api::sse::Decoder::new(1 << 20);
    let mut sent = String::new();
    let mut deltas_seen = 0;
    while deltas_seen < 5 {
        let bytes = response.chunk().await.unwrap().expect("the stream goes on");
        for event in decoder.push(&bytes).unwrap() {
            if event.name.as_deref() == Some("delta") {
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                sent.push_str(data["content"].as_str().unwrap());
                deltas_seen += 1;
            }
        }
    }
    drop(response);
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = app.all_messages(&token, &dialogue).await;
        if stored.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_valid_list(&stored);
    assert_eq!(stored.len(), 4, "the cancelled reply was stored");
    assert_eq!(stored[3]["finish_reason"], "cancelled");
    let kept = stored[3]["content"].as_str().unwrap();
    assert!(kept.starts_with(&sent) && kept.len() < 1000, "kept {kept:?}, sent {sent:?}");

    // And the dialogue continues from it.
    let (status, next) = app.say(&token, "Thanks!", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_valid_list(&app.all_messages(&token, &dialogue).await);
}

#[tokio::test]
async fn five_long_turns_reach_a_standalone_agent_and_the_trimming_is_reported() {
    // The agent as its own service (as on AWS), behind HTTP: its routes must take a dialogue's
    // whole memory, far past the 64 KiB of the user-facing routes.
    let app = spawn_app_with_agent_url(&standalone_agent().await).await;
    let token = app.user("ada@example.com").await;
    let long = "I keep coming back to the same worry about the garden and the house. ".repeat(235);
    let long = &long[..16_000];
    let mut dialogue: Option<String> = None;
    let mut trimmed = Vec::new();
    for turn in 0..5 {
        let (status, answer) = app.say(&token, long, dialogue.as_deref()).await;
        assert!(status.is_success(), "turn {turn}: {status} {answer}");
        dialogue.get_or_insert_with(|| answer["dialogue_id"].as_str().unwrap().to_owned());
        trimmed.push(answer["reply"]["truncated_messages"].as_u64());
    }
    // The first turn's memory is empty; from the second on, the 16,000-character messages
    // before the newest no longer fit the model's 4096 tokens and are left out, and said so.
    assert_eq!(trimmed[0], None, "{trimmed:?}");
    assert!(trimmed[1..].iter().all(|n| n.is_some_and(|n| n >= 1)), "{trimmed:?}");
    let stored = app.all_messages(&token, dialogue.as_deref().unwrap()).await;
    assert_eq!(stored.len(), 10);
    assert_eq!(stored[9]["truncated_messages"].as_u64(), trimmed[4]);
    assert_valid_list(&stored);
}

/// A standalone agent started with a key answers the Dialogue Manager that sends it
/// (`AGENT_API_KEY` beside `AGENT_URL`) and refuses one that does not: the turn fails as the
/// agent failing (502), with the message kept.
#[tokio::test]
async fn the_dialogue_manager_sends_the_agent_s_key() {
    let key = "dialogue-to-agent-key-42";
    let agent = standalone_agent_with_key(Some(key)).await;
    let app = spawn_app_with_agent_url_and(&agent, &["--agent-api-key", key]).await;
    let token = app.user("ada@example.com").await;
    let (status, answer) = app.say(&token, "Hello there", None).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert!(!answer["reply"]["content"].as_str().unwrap().is_empty());

    let keyless = spawn_app_with_agent_url(&agent).await;
    let token = keyless.user("bob@example.com").await;
    let (status, answer) = keyless.say(&token, "Hello there", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"]["code"], "agent_unavailable");
    let kept = keyless.all_messages(&token, answer["error"]["dialogue_id"].as_str().unwrap()).await;
    assert_eq!(kept.len(), 1);
}

/// With a key and no `AGENT_URL`, the agent routes `serve` mounts take the key as a standalone
/// agent would, while dialogues reach the model in-process without it.
#[tokio::test]
async fn serve_s_own_agent_routes_take_the_key_and_dialogues_need_none() {
    let key = "serve-agent-key-0123456";
    let app = spawn_app_with_model_and(Arc::default(), &["--agent-api-key", key]).await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let refused = app.client.post(app.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "invalid_api_key");
    let answered =
        app.client.post(app.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let token = app.user("ada@example.com").await;
    let (status, answer) = app.say(&token, "Hello", None).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test]
async fn a_turn_the_busy_in_process_model_cannot_take_is_refused_before_it_is_stored() {
    let app =
        spawn_app_with_model_and(Arc::default(), &["--agent-parallel", "1", "--agent-queue", "0"]).await;
    let (ada, bob) = (app.user("ada@example.com").await, app.user("bob@example.com").await);
    // Ada's long streamed turn holds the one generation slot while its deltas come. Greedy, this
    // prompt runs the model to its 1,024 tokens; deltas come only once 48 characters follow them
    // (the safety holdback), so a reply must be well under way, and not over, when Bob asks.
    let mut holding = app
        .client
        .post(app.url("/api/v1/dialogue"))
        .bearer_auth(&ada)
        .json(&json!({"message": "Tell me a long story about a dragon.", "stream": true, "max_tokens": 1024,
                      "temperature": 0}))
        .send()
        .await
        .unwrap();
    let mut decoder = ifs_api::sse::Decoder::new(1 << 20);
    let mut deltas = 0;
    while deltas < 2 {
        let bytes = holding.chunk().await.unwrap().expect("the stream goes on");
        let events = decoder.push(&bytes).unwrap();
        assert!(!events.iter().any(|e| e.name.as_deref() == Some("reply")), "Ada's reply ended too soon");
        deltas += events.iter().filter(|e| e.name.as_deref() == Some("delta")).count();
    }
    let (status, refused) = app.say(&bob, "Hello?", None).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("agent_busy"))
    );
    assert!(refused["error"].get("dialogue_id").is_none(), "{refused}");
    let (_, listed) = app.get("/api/v1/dialogues", Some(&bob)).await;
    assert_eq!(listed["dialogues"], json!([]), "nothing of Bob's was stored");
    drop(holding);
}
