//! Erasure over HTTP: one dialogue, all of them, and a deletion killed midway on DynamoDB.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use ifs_domain::{DialogueId, Limit, MessageText, NewMessage, Role, UserId};
use ifs_store::local_servers::{DynamoDbLocal, unique_table};
use ifs_store::{DialogueStore as _, DynamoStore, StoreError, UserStore as _};
use reqwest::StatusCode;

use crate::helpers::{Served, ifs_guide_command, read, spawn_app};

#[tokio::test]
async fn a_dialogue_then_all_of_them_are_erased_over_http() {
    let app = spawn_app().await;
    let ada = app.user("ada@example.com").await;
    let bob = app.user("bob@example.com").await;
    let mut dialogues = Vec::new();
    for text in ["My critic", "My exile", "My manager"] {
        let (_, turn) = app.say(&ada, text, None).await;
        dialogues.push(turn["dialogue_id"].as_str().unwrap().to_owned());
    }
    let (_, theirs) = app.say(&bob, "Bob's own", None).await;
    let delete = |token: &str, path: String| app.client.delete(app.url(&path)).bearer_auth(token).send();
    let one = format!("/api/v1/dialogues/{}", dialogues[0]);

    assert_eq!(delete(&bob, one.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (status, none) = read(delete(&ada, one.clone()).await.unwrap()).await;
    assert_eq!((status, none), (StatusCode::NO_CONTENT, serde_json::Value::Null));
    let messages = format!("/api/v1/messages?dialogue_id={}", dialogues[0]);
    assert_eq!(app.get(&messages, Some(&ada)).await.0, StatusCode::NOT_FOUND);
    let (status, refused) = app.say(&ada, "are you still there?", Some(&dialogues[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(delete(&ada, one).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (_, listed) = app.get("/api/v1/dialogues", Some(&ada)).await;
    assert_eq!(listed["dialogues"].as_array().unwrap().len(), 2);

    assert_eq!(delete(&ada, "/api/v1/dialogues".into()).await.unwrap().status(), StatusCode::NO_CONTENT);
    let (_, listed) = app.get("/api/v1/dialogues", Some(&ada)).await;
    assert_eq!(listed["dialogues"], serde_json::json!([]));
    for dialogue in &dialogues[1..] {
        let path = format!("/api/v1/messages?dialogue_id={dialogue}");
        assert_eq!(app.get(&path, Some(&ada)).await.0, StatusCode::NOT_FOUND);
    }
    let bobs = app.all_messages(&bob, theirs["dialogue_id"].as_str().unwrap()).await;
    assert_eq!(bobs.len(), 2, "another person's dialogue is untouched");
    app.stop().await.assert_check_clean(1, 2);
}

/// How many items `dialogue` has in `table`, by a consistent count.
async fn items(store: &DynamoStore, table: &str, dialogue: DialogueId) -> i32 {
    store
        .client()
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("DLG#{dialogue}")))
        .consistent_read(true)
        .select(aws_sdk_dynamodb::types::Select::Count)
        .send()
        .await
        .unwrap()
        .count()
}

/// `ifs-guide check` against `table` on DynamoDB Local, with more flags.
fn check(endpoint: &str, table: &str, flags: &[&str]) -> (i32, String) {
    let output = ifs_guide_command()
        .args(["check", "--store", "dynamodb", "--dynamodb-endpoint", endpoint, "--table-name", table])
        .args(flags)
        .output()
        .unwrap();
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), printed)
}

/// The server is killed (SIGKILL) while it deletes a dialogue of 500 messages on DynamoDB Local:
/// the dialogue stays hidden, `check` reports a deletion in progress (exit 0, no finding), and
/// `check --repair-deletions` finishes it, leaving nothing of it in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_killed_midway_on_dynamodb_is_finished_afterwards() {
    let endpoint = DynamoDbLocal::shared().endpoint();
    let table = unique_table();
    let store = DynamoStore::connect(&table, Some(&endpoint)).await;
    store.create_table().await.unwrap();
    let env =
        [("STORE", "dynamodb"), ("DYNAMODB_ENDPOINT", endpoint.as_str()), ("TABLE_NAME", table.as_str())];
    let items = async |dialogue: DialogueId| {
        store
            .client()
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("DLG#{dialogue}")))
            .consistent_read(true)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .unwrap()
            .count()
    };

    // The kill must land after the deletion began and before it ended; on a machine fast enough
    // to finish 500 messages between two looks, try again with another dialogue.
    let mut interrupted = None;
    for _ in 0..5 {
        let mut served = Served::start(&env).await;
        let client = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", served.address);
        client
            .post(url("/api/v1/signup"))
            .json(&serde_json::json!({"email": "ada@example.com", "password": "a long password"}))
            .send()
            .await
            .unwrap();
        let (_, login) = read(
            client
                .post(url("/api/v1/login"))
                .json(&serde_json::json!({"email": "ada@example.com", "password": "a long password"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let token = login["access_token"].as_str().unwrap().to_owned();
        let (_, me) = read(client.get(url("/api/v1/me")).bearer_auth(&token).send().await.unwrap()).await;
        let owner = UserId::parse(me["id"].as_str().unwrap()).unwrap();

        let said = |text: String| NewMessage {
            id: ifs_domain::MessageId::generate(),
            role: Role::User,
            content: MessageText::parse(text).unwrap(),
            created_at: chrono::Utc::now(),
            meta: None,
        };
        let dialogue = store.start_dialogue(owner, said("message 1".into())).await.unwrap().dialogue_id;
        for i in 2..=500 {
            store.append_message(owner, dialogue, said(format!("message {i}"))).await.unwrap();
        }
        assert_eq!(items(dialogue).await, 500);

        let deletion = tokio::spawn(
            client.delete(url(&format!("/api/v1/dialogues/{dialogue}"))).bearer_auth(&token).send(),
        );
        // Kill as soon as the first messages are gone: the head is marked by then.
        while items(dialogue).await == 500 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        served.child.kill().unwrap();
        served.child.wait().unwrap();
        assert!(deletion.await.unwrap().is_err(), "the answer never came");
        let left = items(dialogue).await;
        if left > 0 && left < 500 {
            interrupted = Some((owner, dialogue, left));
            break;
        }
    }
    let (owner, dialogue, left) = interrupted.expect("a kill landed midway in five tries");
    eprintln!("killed with {left} of the 500 items left");

    // Hidden from its owner meanwhile, and not corruption to the audit.
    let page = store.messages(owner, dialogue, Limit::new_clamped(50, 200), None).await;
    assert!(matches!(page, Err(StoreError::NotFound)), "{page:?}");
    assert!(store.dialogues(owner, Limit::new_clamped(50, 100), None).await.unwrap().items.is_empty());
    let (code, printed) = check(&endpoint, &table, &[]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains(&format!("dialogue {dialogue}: being deleted")), "{printed}");
    assert!(printed.trim_end().ends_with("1 deletion in progress: no findings"), "{left} left: {printed}");

    let (code, printed) = check(&endpoint, &table, &["--repair-deletions"]);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("after finishing 1 interrupted deletion: no findings"), "{printed}");
    assert_eq!(items(dialogue).await, 0);
    let (code, printed) = check(&endpoint, &table, &[]);
    assert_eq!(
        (code, printed.trim_end()),
        (
            0,
            format!("checked 0 dialogues, 0 messages in dynamodb table {table} at {endpoint}: no findings")
                .as_str()
        )
    );
}

/// `DELETE /api/v1/me` with a `password`.
async fn delete_account(
    app: &crate::helpers::TestApp,
    token: &str,
    password: &str,
) -> (StatusCode, serde_json::Value) {
    read(
        app.client
            .delete(app.url("/api/v1/me"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "password": password }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn an_account_is_erased_with_everything_and_its_email_signs_up_again() {
    let app = spawn_app().await;
    let ada = app.user("ada@example.com").await;
    let (_, second_login) = app.login("ada@example.com", "a long password").await;
    let elsewhere = second_login["access_token"].as_str().unwrap().to_owned();
    let bob = app.user("bob@example.com").await;
    let (_, first) = app.say(&ada, "A part of me is tired", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    app.say(&ada, "Another part wants to rest", None).await;
    app.say(&bob, "Bob stays", None).await;

    let (status, refused) = delete_account(&app, &ada, "not my password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_credentials");
    let (status, _) = app.get("/api/v1/dialogues", Some(&ada)).await;
    assert_eq!(status, StatusCode::OK, "a wrong password deletes nothing, logs nobody out");
    let (status, refused) = read(
        app.client
            .delete(app.url("/api/v1/me"))
            .bearer_auth(&ada)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");

    // Ten turns race the deletion on the dialogue: each lands before it or is refused.
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
    let (status, none) = delete_account(&app, &ada, "a long password").await;
    assert_eq!((status, none), (StatusCode::NO_CONTENT, serde_json::Value::Null));
    for turn in turns {
        let status = turn.await.unwrap();
        assert!(
            [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS]
                .contains(&status),
            "a racing turn answered {status}"
        );
    }

    for token in [&ada, &elsewhere] {
        for path in ["/api/v1/me", "/api/v1/dialogues", "/api/v1/me/export"] {
            assert_eq!(app.get(path, Some(token)).await.0, StatusCode::UNAUTHORIZED, "{path}");
        }
        assert_eq!(app.say(token, "hello?", None).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login("ada@example.com", "a long password").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.signup("ada@example.com", "a new long password").await.0, StatusCode::CREATED);
    let (status, fresh) = app.login("ada@example.com", "a new long password").await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    let (_, listed) = app.get("/api/v1/dialogues", Some(&fresh)).await;
    assert_eq!(listed["dialogues"], serde_json::json!([]), "nothing of the old account");
    let (_, bobs) = app.get("/api/v1/dialogues", Some(&bob)).await;
    assert_eq!(bobs["dialogues"].as_array().unwrap().len(), 1);
    app.stop().await.assert_check_clean(1, 2);
}

#[tokio::test]
async fn wrong_passwords_for_a_deletion_are_throttled_with_logins() {
    let app = spawn_app().await;
    let carol = app.user("carol@example.com").await;
    for _ in 0..5 {
        assert_eq!(delete_account(&app, &carol, "wrong password").await.0, StatusCode::UNAUTHORIZED);
    }
    let response = app
        .client
        .delete(app.url("/api/v1/me"))
        .bearer_auth(&carol)
        .json(&serde_json::json!({"password": "a long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(
        app.login("carol@example.com", "a long password").await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "one count for both"
    );
    assert_eq!(app.get("/api/v1/me", Some(&carol)).await.0, StatusCode::OK, "nothing was deleted");
}

/// An account's erasure killed midway (SIGKILL while its dialogues are being deleted on
/// DynamoDB Local) is finished by asking again: the account still logs in, the second
/// `DELETE /api/v1/me` erases the rest, and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_erasure_killed_midway_is_finished_by_asking_again() {
    let endpoint = DynamoDbLocal::shared().endpoint();
    let table = unique_table();
    let store = DynamoStore::connect(&table, Some(&endpoint)).await;
    store.create_table().await.unwrap();
    let env =
        [("STORE", "dynamodb"), ("DYNAMODB_ENDPOINT", endpoint.as_str()), ("TABLE_NAME", table.as_str())];
    let credentials = serde_json::json!({"email": "ada@example.com", "password": "a long password"});
    let client = reqwest::Client::new();
    let url = |served: &Served, path: &str| format!("{}{path}", served.address);
    let login = async |served: &Served| {
        let response = client.post(url(served, "/api/v1/login")).json(&credentials).send().await.unwrap();
        let (status, body) = read(response).await;
        (status, body["access_token"].as_str().map(str::to_owned))
    };
    let said = |text: String| NewMessage {
        id: ifs_domain::MessageId::generate(),
        role: Role::User,
        content: MessageText::parse(text).unwrap(),
        created_at: chrono::Utc::now(),
        meta: None,
    };

    let mut served = Served::start(&env).await;
    client.post(url(&served, "/api/v1/signup")).json(&credentials).send().await.unwrap();
    let token = login(&served).await.1.unwrap();
    let (_, me) =
        read(client.get(url(&served, "/api/v1/me")).bearer_auth(&token).send().await.unwrap()).await;
    let owner = UserId::parse(me["id"].as_str().unwrap()).unwrap();
    let mut dialogues = Vec::new();
    for size in [300, 300, 300] {
        let dialogue = store.start_dialogue(owner, said("message 1".into())).await.unwrap().dialogue_id;
        for i in 2..=size {
            store.append_message(owner, dialogue, said(format!("message {i}"))).await.unwrap();
        }
        dialogues.push(dialogue);
    }
    let erase = client
        .delete(url(&served, "/api/v1/me"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"password": "a long password"}))
        .send();
    let erasing = tokio::spawn(erase);
    // Killed once every dialogue is hidden and their purge (900 items) has begun.
    loop {
        let mut left = 0;
        for dialogue in &dialogues {
            left += items(&store, &table, *dialogue).await;
        }
        let hidden = store.dialogues(owner, Limit::new_clamped(10, 10), None).await.unwrap().items.is_empty();
        if hidden && left < 900 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    assert!(erasing.await.unwrap().is_err(), "the answer never came");
    assert!(
        store.user_by_id(owner).await.unwrap().is_some(),
        "killed before the end: the account is still there"
    );
    let mut left = 0;
    for dialogue in &dialogues {
        left += items(&store, &table, *dialogue).await;
    }
    eprintln!("killed with {left} of the 900 items left");
    assert!(left > 0, "the erasure had finished its dialogues before the kill");

    let data_dir = served.stop();
    let served = Served::start_in(data_dir, &env).await;
    let (status, token) = login(&served).await;
    assert_eq!(status, StatusCode::OK, "the account can log in to ask again");
    let token = token.unwrap();
    let (_, listed_now) =
        read(client.get(url(&served, "/api/v1/dialogues")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(listed_now["dialogues"], serde_json::json!([]), "what was hidden stays hidden");
    let again = client
        .delete(url(&served, "/api/v1/me"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"password": "a long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(login(&served).await.0, StatusCode::UNAUTHORIZED);
    let (code, printed) = check(&endpoint, &table, &[]);
    assert_eq!(
        (code, printed.trim_end()),
        (
            0,
            format!("checked 0 dialogues, 0 messages in dynamodb table {table} at {endpoint}: no findings")
                .as_str()
        )
    );
}
