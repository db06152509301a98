//! The conformance suite as the system runs on AWS: users and dialogues in DynamoDB (Local, a
//! table per case), sessions and counters in a real redis-server. Then what only DynamoDB needs
//! showing: calls per operation that do not grow with a dialogue, an idempotent table creation,
//! and DynamoDB going away.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ifs_domain::{Limit, NewMessage, Role, UserId};
use ifs_store::conformance::Stores;
use ifs_store::local_servers::{DynamoDbLocal, RedisServer, unique_table};
use ifs_store::{DialogueStore as _, DynamoStore, RedisStore, StoreError};

async fn table() -> DynamoStore {
    let store = DynamoStore::connect(&unique_table(), Some(&DynamoDbLocal::shared().endpoint())).await;
    assert!(store.create_table().await.expect("create the table"));
    store
}

async fn aws_like() -> Stores {
    let dynamo = Arc::new(table().await);
    let redis_server = RedisServer::start();
    let redis = Arc::new(RedisStore::new(&redis_server.url().into()).expect("redis store"));
    Stores {
        users: dynamo.clone(),
        dialogues: dynamo,
        sessions: redis.clone(),
        counters: redis,
        guard: Box::new(redis_server),
    }
}

ifs_store::conformance_suite!(aws_like);

fn said(text: &str) -> NewMessage {
    ifs_store::conformance::said(Role::User, text, chrono::Utc::now())
}

/// Calls made by each operation the API uses, for a dialogue of `length` messages.
async fn calls_at(store: &DynamoStore, length: usize) -> [u64; 5] {
    let owner = UserId::generate();
    let head = store.start_dialogue(owner, said("first")).await.unwrap();
    let dialogue = head.dialogue_id;
    for i in 1..length - 1 {
        store.append_message(owner, dialogue, said(&format!("message {i}"))).await.unwrap();
    }
    let count = |before: u64| store.calls() - before;

    let before = store.calls();
    store.start_dialogue(owner, said("another")).await.unwrap();
    let start = count(before);
    let before = store.calls();
    let last = store.append_message(owner, dialogue, said("the last")).await.unwrap();
    let append = count(before);
    assert_eq!(last.seq, length as u64);
    let before = store.calls();
    let page = store.messages(owner, dialogue, Limit::new_clamped(50, 200), None).await.unwrap();
    let messages = count(before);
    assert_eq!(page.items.len(), 50.min(length));
    let before = store.calls();
    store.dialogues(owner, Limit::new_clamped(20, 100), None).await.unwrap();
    let dialogues = count(before);
    let before = store.calls();
    let memory = store.messages_before(owner, dialogue, last.seq, 20).await.unwrap();
    let memory_calls = count(before);
    assert_eq!(memory.len(), 20.min(length - 1));
    [start, append, messages, dialogues, memory_calls]
}

#[tokio::test]
async fn calls_per_operation_are_the_same_at_3_and_at_300_messages() {
    let store = table().await;
    let short = calls_at(&store, 3).await;
    let long = calls_at(&store, 300).await;
    // start: one put; append: read the head, one transaction; a page, the dialogues, the
    // memory: one query each.
    assert_eq!(short, [1, 2, 1, 1, 1]);
    assert_eq!(long, short);
}

#[tokio::test]
async fn creating_the_table_again_is_harmless() {
    let store = table().await;
    assert!(store.table_exists().await.unwrap());
    assert!(!store.create_table().await.unwrap(), "the table already existed");
    let missing = DynamoStore::connect(&unique_table(), Some(&DynamoDbLocal::shared().endpoint())).await;
    assert!(!missing.table_exists().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_dynamodb_is_down_operations_are_unavailable_within_seconds() {
    let mut server = DynamoDbLocal::start();
    let store = DynamoStore::connect(&unique_table(), Some(&server.endpoint())).await;
    store.create_table().await.unwrap();
    let owner = UserId::generate();
    store.start_dialogue(owner, said("before")).await.unwrap();

    server.stop();
    let started = std::time::Instant::now();
    let down = store.start_dialogue(owner, said("while down")).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // It comes back empty (in memory), and the same client works again.
    server.restart();
    assert!(store.create_table().await.unwrap());
    store.start_dialogue(owner, said("after")).await.unwrap();
}
