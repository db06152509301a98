//! Dialogues over HTTP: turns, memory, agent failures, listings, and concurrent continuations.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{assert_valid_list, read, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_dialogue_starts_continues_and_remembers() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;

    let (status, first) = app.say(&token, "I feel torn about my job", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    assert_eq!(first["reply"]["content"], "echo: I feel torn about my job");
    assert_eq!(first["reply"]["usage"]["prompt_tokens"], 20);

    let (status, second) = app.say(&token, "Part of me wants to stay", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["dialogue_id"], first["dialogue_id"]);
    assert_eq!(second["message"]["prev_id"], first["reply"]["id"]);

    assert_eq!(
        app.backing.agent.last_messages(),
        [
            ("system".to_owned(), "You are a test guide.".to_owned()),
            ("user".to_owned(), "I feel torn about my job".to_owned()),
            ("assistant".to_owned(), "echo: I feel torn about my job".to_owned()),
            ("user".to_owned(), "Part of me wants to stay".to_owned()),
        ]
    );
    let messages = app.all_messages(&token, &dialogue).await;
    assert_eq!(messages.len(), 4);
    assert_valid_list(&messages);
}

#[tokio::test]
async fn memory_is_capped_at_the_most_recent_messages() {
    let app = spawn_app().await; // MEMORY_MESSAGES=4
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "turn 1", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    for n in 2..=4 {
        app.say(&token, &format!("turn {n}"), Some(&dialogue)).await;
    }
    let sent: Vec<String> = app.backing.agent.last_messages().into_iter().map(|(_, c)| c).collect();
    assert_eq!(sent, ["You are a test guide.", "turn 2", "echo: turn 2", "turn 3", "echo: turn 3", "turn 4"]);
}

#[tokio::test]
async fn agent_failures_keep_the_message_and_say_where() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "hello", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();

    let cases = [
        ("[down] anyone?", StatusCode::BAD_GATEWAY, "agent_unavailable"),
        ("[garbage] anyone?", StatusCode::BAD_GATEWAY, "agent_unavailable"),
        ("[huge] anyone?", StatusCode::BAD_GATEWAY, "agent_unavailable"),
        ("[slow] anyone?", StatusCode::GATEWAY_TIMEOUT, "agent_timeout"),
        // The agent's own verdicts reach the client as the in-process agent gives them.
        ("[busy] anyone?", StatusCode::SERVICE_UNAVAILABLE, "agent_busy"),
        ("[overflow] anyone?", StatusCode::BAD_REQUEST, "context_overflow"),
        ("[llama-overflow] anyone?", StatusCode::BAD_REQUEST, "context_overflow"),
    ];
    for (text, status, code) in cases {
        let response = app
            .client
            .post(app.url("/api/v1/dialogue"))
            .bearer_auth(&token)
            .json(&json!({"message": text, "dialogue_id": dialogue}))
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let (got, body) = read(response).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
        if code == "agent_busy" {
            assert_eq!(retry_after.as_deref(), Some("7"), "the agent's own Retry-After is passed on");
        }
        assert_eq!(body["error"]["dialogue_id"], first["dialogue_id"]);
        let body_text = body.to_string();
        assert!(!body_text.contains("surprise") && !body_text.contains("not loaded"), "{body_text}");
        let messages = app.all_messages(&token, &dialogue).await;
        let kept = messages.last().unwrap();
        assert_eq!(
            (kept["id"].clone(), kept["content"].as_str()),
            (body["error"]["message_id"].clone(), Some(text))
        );
        assert_valid_list(&messages);
    }
    // The dialogue goes on after failures.
    let (status, _) = app.say(&token, "back again", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.all_messages(&token, &dialogue).await.len(), 2 + cases.len() + 2);
}

#[tokio::test]
async fn thirty_concurrent_continuations_make_one_valid_list_of_62() {
    let app = spawn_app_with(&["--dialogue-concurrent-turns", "30"]).await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "start", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();

    let turns = (0..30).map(|i| {
        let (app, token, dialogue) = (&app, &token, &dialogue);
        async move { app.say(token, &format!("concurrent {i}"), Some(dialogue)).await }
    });
    for (status, body) in futures::future::join_all(turns).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let messages = app.all_messages(&token, &dialogue).await;
    assert_eq!(messages.len(), 62);
    assert_valid_list(&messages);
    let mut users: Vec<&str> =
        messages.iter().filter(|m| m["role"] == "user").map(|m| m["content"].as_str().unwrap()).collect();
    users.sort_unstable();
    let mut expected: Vec<String> = (0..30).map(|i| format!("concurrent {i}")).collect();
    expected.push("start".into());
    expected.sort_unstable();
    assert_eq!(users, expected);
    assert_eq!(messages.iter().filter(|m| m["role"] == "assistant").count(), 31);
    app.stop().await.assert_check_clean(1, 62);
}

#[tokio::test]
async fn dialogues_list_newest_first_through_cursors() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let other = app.user("bob@example.com").await;
    app.say(&other, "not ada's", None).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, started) = app
            .say(
                &token,
                &format!("dialogue number {n} about something that matters a great deal to me today"),
                None,
            )
            .await;
        ids.push(started["dialogue_id"].as_str().unwrap().to_owned());
    }
    // New activity moves the first dialogue to the top.
    app.say(&token, "more", Some(&ids[0])).await;

    let mut listed = Vec::new();
    let mut path = "/api/v1/dialogues?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = app.get(&path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        listed.extend(page["dialogues"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/dialogues?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let order: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(order, [&ids[0], &ids[4], &ids[3], &ids[2], &ids[1]]);
    assert_eq!(listed[0]["message_count"], 4);
    let title = listed[1]["title"].as_str().unwrap();
    assert!(title.chars().count() <= 80 && title.starts_with("dialogue number 4"), "{title}");
    assert!(listed.iter().all(|d| d["title"] != "not ada's"));
}

#[tokio::test]
async fn messages_page_through_cursors_in_list_order() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "one", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    app.say(&token, "two", Some(&dialogue)).await;
    app.say(&token, "three", Some(&dialogue)).await;

    let mut contents = Vec::new();
    let mut path = format!("/api/v1/messages?dialogue_id={dialogue}&limit=4");
    loop {
        let (_, page) = app.get(&path, Some(&token)).await;
        assert_eq!(page["dialogue_id"], first["dialogue_id"]);
        contents.extend(
            page["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/messages?dialogue_id={dialogue}&limit=4&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(contents, ["one", "echo: one", "two", "echo: two", "three", "echo: three"]);
}

#[tokio::test]
async fn someone_elses_dialogue_is_not_found_never_forbidden() {
    let app = spawn_app().await;
    let ada = app.user("ada@example.com").await;
    let bob = app.user("bob@example.com").await;
    let (_, first) = app.say(&ada, "private", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap();

    let (status, body) = app.say(&bob, "let me in", Some(dialogue)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, _) = app.get(&format!("/api/v1/messages?dialogue_id={dialogue}"), Some(&bob)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.all_messages(&ada, dialogue).await.len(), 2);
}

#[tokio::test]
async fn a_reply_with_a_broken_usage_is_kept_with_the_counts_that_are_valid() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (status, body) = app.say(&token, "[partial-usage] hello", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["reply"]["content"], "echo: [partial-usage] hello");
    assert_eq!(body["reply"]["usage"], json!({"prompt_tokens": 12}));
}

#[tokio::test]
async fn a_streamed_turn_through_an_openai_server_arrives_in_pieces_and_is_stored_whole() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (status, events) = app.say_streaming(&token, "tell me a story", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["message", "delta", "delta", "delta", "delta", "delta", "reply"], "{events:?}");
    let (message, reply) = (&events[0].1, &events[6].1);
    let deltas: String = events[1..6].iter().map(|(_, d)| d["content"].as_str().unwrap()).collect();
    assert_eq!(deltas, "echo: tell me a story");
    assert_eq!(reply["content"], deltas);
    assert_eq!(
        (reply["finish_reason"].as_str(), reply["usage"]["total_tokens"].as_u64()),
        (Some("stop"), Some(13))
    );
    let dialogue = message["dialogue_id"].as_str().unwrap();
    let stored = app.all_messages(&token, dialogue).await;
    assert_valid_list(&stored);
    assert_eq!(stored[1]["content"], deltas);
    // The agent was asked for a stream, with usage.
    let asked = app.backing.agent.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!((&asked["stream"], &asked["stream_options"]["include_usage"]), (&json!(true), &json!(true)));
}

#[tokio::test]
async fn an_agent_stream_that_breaks_off_leaves_its_text_as_an_error_reply_and_an_error_event() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (status, events) = app.say_streaming(&token, "[cut] tell me more", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["message", "delta", "delta", "error"], "{events:?}");
    let (message, error) = (&events[0].1, &events[3].1);
    assert_eq!(error["error"]["code"], "agent_unavailable");
    assert_eq!(error["error"]["message_id"], message["id"]);
    assert!(!error.to_string().contains("fell over"), "the agent's words stay in the log: {error}");
    let stored = app.all_messages(&token, message["dialogue_id"].as_str().unwrap()).await;
    assert_valid_list(&stored);
    assert_eq!(stored[1]["content"], "echo: [cut] ");
    assert_eq!(stored[1]["finish_reason"], "error");
    // The dialogue goes on after it.
    let (status, next) = app.say(&token, "again", message["dialogue_id"].as_str()).await;
    assert_eq!(status, StatusCode::OK, "{next}");
}

#[tokio::test]
async fn a_dialogue_is_renamed_over_http_and_keeps_its_place() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, older) = app.say(&token, "An older worry", None).await;
    let (_, newer) = app.say(&token, "A newer worry", None).await;
    let older = older["dialogue_id"].as_str().unwrap().to_owned();
    let rename = |token: &str, id: &str, title: &str| {
        app.client
            .patch(app.url(&format!("/api/v1/dialogues/{id}")))
            .bearer_auth(token)
            .json(&serde_json::json!({ "title": title }))
            .send()
    };
    let (status, renamed) = read(rename(&token, &older, "The critic\u{202E}, again").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["title"], "The critic, again");
    let (_, listed) = app.get("/api/v1/dialogues", Some(&token)).await;
    let titles: Vec<_> =
        listed["dialogues"].as_array().unwrap().iter().map(|d| d["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["A newer worry", "The critic, again"], "renaming is not activity");
    assert_eq!(listed["dialogues"][0]["id"], newer["dialogue_id"]);

    let bob = app.user("bob@example.com").await;
    assert_eq!(rename(&bob, &older, "mine").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(rename(&token, "not-an-id", "x").await.unwrap().status(), StatusCode::BAD_REQUEST);
    app.stop().await.assert_check_clean(2, 4);
}

#[tokio::test]
async fn an_earlier_message_is_edited_by_forking_before_it_and_going_on() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "A part of me is scared", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    app.say(&token, "It wants me to hide", Some(&dialogue)).await;
    let original = app.all_messages(&token, &dialogue).await;
    let fork = |token: &str, id: &str, message_id: &str| {
        app.client
            .post(app.url(&format!("/api/v1/dialogues/{id}/fork")))
            .bearer_auth(token)
            .json(&serde_json::json!({ "message_id": message_id }))
            .send()
    };

    // Edit the second user message: fork through the reply before it, then say it differently.
    let before_edit = original[1]["id"].as_str().unwrap();
    let (status, forked) = read(fork(&token, &dialogue, before_edit).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{forked}");
    assert_eq!(
        forked["forked_from"],
        serde_json::json!({"dialogue_id": dialogue, "message_id": before_edit})
    );
    assert_eq!(
        (forked["message_count"].as_u64(), forked["title"].as_str()),
        (Some(2), Some("A part of me is scared"))
    );
    let fork_id = forked["id"].as_str().unwrap().to_owned();
    let (status, edited) = app.say(&token, "It wants me to be careful", Some(&fork_id)).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    let copies = app.all_messages(&token, &fork_id).await;
    assert_valid_list(&copies);
    let words = |messages: &[serde_json::Value]| {
        messages.iter().map(|m| m["content"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(words(&copies)[..2], words(&original)[..2]);
    assert_eq!(copies[2]["content"], "It wants me to be careful");
    assert!(copies.iter().all(|c| original.iter().all(|o| o["id"] != c["id"])), "new ids");
    assert_eq!(app.all_messages(&token, &dialogue).await, original, "the original is untouched");
    let (_, listed) = app.get("/api/v1/dialogues", Some(&token)).await;
    assert_eq!(listed["dialogues"][0]["id"], fork_id.as_str(), "the fork has the latest activity");
    assert_eq!(listed["dialogues"][1].get("forked_from"), None);

    let bob = app.user("bob@example.com").await;
    assert_eq!(fork(&bob, &dialogue, before_edit).await.unwrap().status(), StatusCode::NOT_FOUND);
    let unknown = ifs_domain::MessageId::generate().to_string();
    assert_eq!(fork(&token, &dialogue, &unknown).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (status, refused) = read(fork(&token, &dialogue, "not-an-id").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"]["message"].as_str().unwrap().starts_with("message_id"), "{refused}");
    app.stop().await.assert_check_clean(2, 8);
}

#[tokio::test]
async fn a_user_past_the_daily_token_budget_is_refused_before_anything_is_stored() {
    // The double reports 10 prompt tokens a message and 3 completion tokens: a first turn
    // (system prompt and message) uses 23, and a streamed one what its usage chunk says.
    let app = spawn_app_with(&["--daily-token-limit", "30"]).await;
    let token = app.user("ada@example.com").await;
    let (_, me) = app.get("/api/v1/me", Some(&token)).await;
    assert_eq!(
        (me["usage"]["tokens_today"].as_u64(), me["usage"]["daily_token_limit"].as_u64()),
        (Some(0), Some(30))
    );
    let resets_at = me["usage"]["resets_at"].as_str().unwrap().to_owned();
    assert!(resets_at.ends_with("T00:00:00Z"), "{resets_at}");

    let (status, first) = app.say(&token, "one", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, events) = app.say_streaming(&token, "two", None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(events.last().unwrap().0, "reply");
    let (_, me) = app.get("/api/v1/me", Some(&token)).await;
    let used = me["usage"]["tokens_today"].as_u64().unwrap();
    assert!(used > 23, "the streamed turn counted too: {used}");

    let response = app
        .client
        .post(app.url("/api/v1/dialogue"))
        .bearer_auth(&token)
        .json(&json!({"message": "three"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    let (_, refused) = read(response).await;
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    let (_, listed) = app.get("/api/v1/dialogues", Some(&token)).await;
    assert_eq!(listed["dialogues"].as_array().unwrap().len(), 2, "the refused turn stored nothing");
    let bob = app.user("bob@example.com").await;
    assert_eq!(app.say(&bob, "mine", None).await.0, StatusCode::CREATED, "a budget is per user");
    app.stop().await.assert_check_clean(3, 6);
}

#[tokio::test]
async fn the_last_reply_is_regenerated_buffered_or_streamed_and_its_versions_kept() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "A part of me is restless", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    let reply = first["reply"]["id"].as_str().unwrap().to_owned();
    let regenerate = async |body: serde_json::Value| app.post("/api/v1/dialogue", Some(&token), &body).await;

    let (status, again) = regenerate(json!({"dialogue_id": dialogue, "regenerate": true})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["message"]["id"], first["message"]["id"], "the same question");
    assert_eq!(again["reply"]["id"], reply.as_str(), "the same place in the list");
    assert_eq!((again["reply"]["version"].as_u64(), again["reply"]["versions"].as_u64()), (Some(2), Some(2)));
    let mut body = json!({"dialogue_id": dialogue, "regenerate": true, "reply_id": reply, "stream": true});
    let mut response =
        app.client.post(app.url("/api/v1/dialogue")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut streamed = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        streamed.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(streamed.contains("event: message") && streamed.contains("event: reply"), "{streamed}");
    assert!(streamed.contains("\"version\":3"), "{streamed}");

    let messages = app.all_messages(&token, &dialogue).await;
    assert_eq!(messages.len(), 2, "regenerating adds no message");
    assert_valid_list(&messages);
    assert_eq!(messages[1]["versions"], 3);
    let (status, versions) =
        app.get(&format!("/api/v1/messages/{reply}/versions?dialogue_id={dialogue}"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let numbers: Vec<_> =
        versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(versions["versions"][0]["content"], first["reply"]["content"]);
    assert_eq!(versions["versions"][2]["content"], messages[1]["content"]);
    let export = app.client.get(app.url(&format!("/api/v1/dialogues/{dialogue}/export"))).bearer_auth(&token);
    let exported: serde_json::Value = export.send().await.unwrap().json().await.unwrap();
    let exported = &exported["dialogue"]["messages"][1];
    assert_eq!(exported["version"], 3);
    let earlier: Vec<_> = exported["earlier_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(earlier, [1, 2], "the export keeps every version");

    // Refusals: a reply that is not the last, a dialogue ending with the user's message, bad
    // requests, someone else's dialogue.
    let (_, second) = app.say(&token, "And now?", Some(&dialogue)).await;
    body["stream"] = json!(false);
    let (status, refused) = regenerate(body.clone()).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("not_last_reply")));
    let (status, failed) = app.say(&token, "[down]", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    let (status, refused) = regenerate(json!({"dialogue_id": dialogue, "regenerate": true})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("nothing_to_regenerate"))
    );
    for (bad, field) in [
        (json!({"regenerate": true}), "dialogue_id"),
        (json!({"regenerate": true, "dialogue_id": dialogue, "message": "x"}), "message"),
        (json!({"dialogue_id": dialogue, "reply_id": reply}), "reply_id"),
        (json!({"dialogue_id": dialogue}), "message"),
    ] {
        let (status, refused) = regenerate(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().starts_with(field), "{refused}");
    }
    let bob = app.user("bob@example.com").await;
    let (status, _) =
        app.post("/api/v1/dialogue", Some(&bob), &json!({"dialogue_id": dialogue, "regenerate": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let path = format!(
        "/api/v1/messages/{}/versions?dialogue_id={dialogue}",
        second["reply"]["id"].as_str().unwrap()
    );
    assert_eq!(app.get(&path, Some(&bob)).await.0, StatusCode::NOT_FOUND);
    app.stop().await.assert_check_clean(1, 5);
}
