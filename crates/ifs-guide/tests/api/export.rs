//! Exports over HTTP: one dialogue as JSON and Markdown, the whole account, and the account's
//! export streamed in flat memory.

use ifs_domain::{MessageText, NewMessage, Role, UserId};
use ifs_store::{DialogueStore as _, EmbeddedStore};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Served, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_dialogue_and_the_whole_account_download_with_every_message() {
    let app = spawn_app().await;
    let ada = app.user("ada@example.com").await;
    let (_, first) = app.say(&ada, "A part of me <b>worries</b>", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    app.say(&ada, "It says \"be careful\"", Some(&dialogue)).await;
    app.say(&ada, "Another day", None).await;
    let original = app.all_messages(&ada, &dialogue).await;
    let export = |token: &str, path: String| app.client.get(app.url(&path)).bearer_auth(token).send();

    let response = export(&ada, format!("/api/v1/dialogues/{dialogue}/export")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"ifs-guide-{dialogue}.json\"").as_str()
    );
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["format"], "ifs-guide-export/1");
    assert_eq!(json["dialogue"]["id"], dialogue.as_str());
    assert_eq!(json["dialogue"]["message_count"], 4);
    let exported = json["dialogue"]["messages"].as_array().unwrap();
    assert_eq!(exported.len(), 4);
    for (exported, stored) in exported.iter().zip(&original) {
        for field in ["id", "seq", "role", "content", "created_at"] {
            assert_eq!(exported[field], stored[field], "{field}");
        }
    }
    assert_eq!(exported[1]["finish_reason"], "stop", "reply metadata is kept");

    let response =
        export(&ada, format!("/api/v1/dialogues/{dialogue}/export?format=markdown")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/markdown; charset=utf-8");
    assert!(response.headers()["content-disposition"].to_str().unwrap().ends_with(".md\""));
    let markdown = response.text().await.unwrap();
    assert!(markdown.starts_with("# A part of me <b>worries</b>\n"), "{markdown}");
    assert_eq!(markdown.matches("**You** · ").count(), 2, "{markdown}");
    assert_eq!(markdown.matches("**Guide** · ").count(), 2, "{markdown}");
    assert!(markdown.contains("\nIt says \"be careful\"\n"), "{markdown}");

    let bob = app.user("bob@example.com").await;
    assert_eq!(export(&bob, format!("/api/v1/dialogues/{dialogue}/export")).await.unwrap().status(), 404);
    let refused = export(&ada, format!("/api/v1/dialogues/{dialogue}/export?format=pdf")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused: Value = refused.json().await.unwrap();
    assert!(refused["error"]["message"].as_str().unwrap().starts_with("format"), "{refused}");

    let response = export(&ada, "/api/v1/me/export".into()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"ifs-guide-account-")
    );
    let account: Value = response.json().await.unwrap();
    assert_eq!(account["profile"]["email"], "ada@example.com");
    let dialogues = account["dialogues"].as_array().unwrap();
    assert_eq!(dialogues.len(), 2);
    let counts: Vec<_> = dialogues.iter().map(|d| d["messages"].as_array().unwrap().len()).collect();
    assert_eq!(counts, [2, 4], "newest activity first, every message");
    assert_eq!(dialogues[1]["messages"][0]["content"], "A part of me <b>worries</b>");
    let theirs: Value = export(&bob, "/api/v1/me/export".into()).await.unwrap().json().await.unwrap();
    assert_eq!(theirs["dialogues"], serde_json::json!([]), "nothing of another account");
    assert_eq!(export(&ada, "/api/v1/me/export".into()).await.unwrap().status(), StatusCode::OK);
    app.stop().await.assert_check_clean(2, 6);
}

/// The account's export is written a page at a time: the server's peak memory grows by a bounded
/// amount (the store's cache, a page, a chunk), however long the document. `EXPORT_SHAPE=200x200` (dialogues × messages of
/// ~1 KB) is the measurement in docs/data-model.md; the suite runs a smaller account of longer
/// messages, as big a document in a tenth of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_export_streams_in_flat_memory() {
    let shape = std::env::var("EXPORT_SHAPE").unwrap_or_else(|_| "40x50".into());
    let (dialogues, messages) = shape.split_once('x').expect("EXPORT_SHAPE is <dialogues>x<messages>");
    let (dialogues, messages): (usize, usize) = (dialogues.parse().unwrap(), messages.parse().unwrap());
    let text_bytes = if shape == "40x50" { 8_000 } else { 1_000 };
    let env = [("EMBEDDED_CACHE_MB", "4")];

    // An account made over HTTP, then filled through the store while the server is stopped
    // (the embedded store opens in one process at a time).
    let served = Served::start(&env).await;
    let client = reqwest::Client::new();
    let url = |served: &Served, path: &str| format!("{}{path}", served.address);
    let credentials = serde_json::json!({"email": "ada@example.com", "password": "a long password"});
    client.post(url(&served, "/api/v1/signup")).json(&credentials).send().await.unwrap();
    let login: Value = client
        .post(url(&served, "/api/v1/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let me: Value = client
        .get(url(&served, "/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owner = UserId::parse(me["id"].as_str().unwrap()).unwrap();
    let data_dir = served.stop();
    {
        let store = EmbeddedStore::open(&data_dir.path().join(ifs_api::backends::EMBEDDED_FILE)).unwrap();
        let line = "a part of me speaks up; ".repeat(text_bytes / 24);
        let said = |role: Role, i: usize| NewMessage {
            id: ifs_domain::MessageId::generate(),
            role,
            content: MessageText::parse(format!("{i}: {line}")).unwrap(),
            created_at: chrono::Utc::now(),
            meta: None,
        };
        for _ in 0..dialogues {
            let id = store.start_dialogue(owner, said(Role::User, 1)).await.unwrap().dialogue_id;
            for i in 2..=messages {
                let role = if i % 2 == 0 { Role::Assistant } else { Role::User };
                store.append_message(owner, id, said(role, i)).await.unwrap();
            }
        }
    }

    let served = Served::start_in(data_dir, &env).await;
    let status = client.get(url(&served, "/api/v1/me")).bearer_auth(&token).send().await.unwrap().status();
    assert_eq!(status, StatusCode::OK);
    let before = served.status_kb("VmHWM");
    let mut response =
        client.get(url(&served, "/api/v1/me/export")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut document = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        document.extend_from_slice(&chunk);
    }
    let grown_kb = served.status_kb("VmHWM").saturating_sub(before);
    let account: Value = serde_json::from_slice(&document).unwrap();
    let exported = account["dialogues"].as_array().unwrap();
    assert_eq!(exported.len(), dialogues);
    assert!(exported.iter().all(|d| d["messages"].as_array().unwrap().len() == messages));
    let document_kb = document.len() as u64 / 1024;
    eprintln!("{shape}: a {document_kb} KiB export grew the server's peak memory by {grown_kb} KiB");
    // What may grow is the store's cache (EMBEDDED_CACHE_MB, 4), a page of messages (at most
    // ~256 KiB of text) and a chunk in flight, whatever the document's size.
    assert!(document_kb > 15_000, "the document is {document_kb} KiB");
    assert!(grown_kb < 12 * 1024, "peak memory grew by {grown_kb} KiB for a {document_kb} KiB export");
}

/// An account exported while ten turns continue one of its dialogues: the document is whole
/// and valid, and the dialogue in it is a valid list from its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_racing_ten_turns_is_a_whole_document_of_valid_lists() {
    let app = spawn_app_with(&["--dialogue-concurrent-turns", "10"]).await;
    let ada = app.user("ada@example.com").await;
    let (_, first) = app.say(&ada, "The first", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    let turns: Vec<_> = (0..10)
        .map(|i| {
            let (client, url, token, dialogue) =
                (app.client.clone(), app.url("/api/v1/dialogue"), ada.clone(), dialogue.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({"message": format!("racer {i}"), "dialogue_id": dialogue});
                client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status()
            })
        })
        .collect();
    let response = app.client.get(app.url("/api/v1/me/export")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let account: Value = response.json().await.unwrap();
    for turn in turns {
        assert_eq!(turn.await.unwrap(), StatusCode::OK);
    }
    let messages = account["dialogues"][0]["messages"].as_array().unwrap();
    let seqs: Vec<u64> = messages.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "a prefix of the list, in order");
    assert!(seqs.len() >= 2 && seqs.len() <= 22, "{} messages", seqs.len());
    app.stop().await.assert_check_clean(1, 22);
}
