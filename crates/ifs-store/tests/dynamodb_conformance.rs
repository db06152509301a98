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
        dialogues: dynamo.clone(),
        safety: dynamo.clone(),
        audit: dynamo,
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

/// DynamoDB going away in the middle of appends: each fails fast as unavailable or lands whole,
/// and when it is back (with its data, as the real service keeps it) the table audits clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_dynamodb_is_down_operations_are_unavailable_within_seconds() {
    use ifs_store::Audit as _;

    let disk = tempfile::tempdir().unwrap();
    let mut server = DynamoDbLocal::start_on_disk(disk.path());
    let store = DynamoStore::connect(&unique_table(), Some(&server.endpoint())).await;
    store.create_table().await.unwrap();
    let owner = UserId::generate();
    let dialogue = store.start_dialogue(owner, said("before")).await.unwrap().dialogue_id;

    // Four writers append until DynamoDB is gone under them, so some appends are cut off.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut landed = 0_u64;
                loop {
                    let text = format!("writer {w}, turn {landed}");
                    match store.append_message(owner, dialogue, said(&text)).await {
                        Ok(_) => landed += 1,
                        Err(StoreError::Unavailable(_)) => return landed,
                        Err(other) => panic!("an append failed otherwise: {other:?}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    let started = std::time::Instant::now();
    let down = store.start_dialogue(owner, said("while down")).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let mut landed = 0;
    for writer in writers {
        landed += writer.await.unwrap();
    }
    assert!(landed > 0, "the writers were cut off before they wrote anything");

    // Back with its data; the same client works again, and nothing is half-written. An append
    // whose answer was lost may have landed, so the list holds at least the ones that said so.
    server.restart();
    assert!(!store.create_table().await.unwrap(), "the table survived");
    let report = store.audit().await.unwrap();
    assert_eq!(report.findings, Default::default());
    assert_eq!(report.dialogues, 1);
    assert!(report.messages > landed, "{} messages, {landed} appends said they landed", report.messages);
    store.append_message(owner, dialogue, said("after")).await.unwrap();
    assert_eq!(store.audit().await.unwrap().findings, Default::default());
}

/// A table broken on purpose, behind the adapter's back: the audit names the broken dialogues,
/// and only those, even after reading each of them again.
#[tokio::test]
async fn the_audit_reports_a_list_broken_behind_the_stores_back() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use ifs_domain::{DialogueId, Finding};
    use ifs_store::Audit as _;

    let store = table().await;
    let owner = UserId::generate();
    let dialogue = async |texts: &[&str]| {
        let id = store.start_dialogue(owner, said(texts[0])).await.unwrap().dialogue_id;
        for text in &texts[1..] {
            store.append_message(owner, id, said(text)).await.unwrap();
        }
        id
    };
    let broken = dialogue(&["one", "two", "three", "four"]).await;
    let stale = dialogue(&["listed", "wrongly"]).await;
    let intact = dialogue(&["fine", "yes"]).await;
    assert_eq!(store.audit().await.unwrap().findings, Default::default());

    let s = |text: String| AttributeValue::S(text);
    let key = |dialogue: DialogueId, seq: u64| {
        std::collections::HashMap::from([
            ("pk".to_owned(), s(format!("DLG#{dialogue}"))),
            ("sk".to_owned(), s(format!("MSG#{seq:020}"))),
        ])
    };
    let client = store.client();
    // Lose the second message of one dialogue …
    client.delete_item().table_name(store.table()).set_key(Some(key(broken, 2))).send().await.unwrap();
    // … file a message under a dialogue that has no head …
    let headless = DialogueId::generate();
    let mut orphan = key(headless, 3);
    orphan.extend([
        ("id".to_owned(), s(ifs_domain::MessageId::generate().to_string())),
        ("seq".to_owned(), AttributeValue::N("3".into())),
        ("role".to_owned(), s("user".into())),
        ("content".to_owned(), s("where is everyone?".into())),
        ("created_at".to_owned(), AttributeValue::N("1750000000000".into())),
        ("owner".to_owned(), s(owner.to_string())),
    ]);
    client.put_item().table_name(store.table()).set_item(Some(orphan)).send().await.unwrap();
    // … and list another under an activity it never had.
    client
        .update_item()
        .table_name(store.table())
        .set_key(Some(key(stale, 1)))
        .update_expression("SET gsi1sk = :sk")
        .expression_attribute_values(":sk", s(format!("{:020}#{stale}", 5)))
        .send()
        .await
        .unwrap();

    let report = store.audit().await.unwrap();
    assert_eq!((report.dialogues, report.messages), (4, 8));
    let mut expected = vec![broken, stale, headless];
    expected.sort_unstable();
    assert_eq!(report.findings.keys().copied().collect::<Vec<_>>(), expected);
    assert!(!report.findings.contains_key(&intact));
    let found = &report.findings[&broken];
    assert!(found.contains(&Finding::Gap { after: 1, next: 3 }), "{found:?}");
    assert!(
        found.iter().any(|f| matches!(f, Finding::SummaryMismatch { field: "message_count", .. })),
        "{found:?}"
    );
    assert!(
        matches!(&report.findings[&stale][..], [Finding::Listing { entries, .. }] if entries == &[(owner, 5)]),
        "{:?}",
        report.findings[&stale]
    );
    assert_eq!(report.findings[&headless], [Finding::NoHead { positions: vec![3] }]);
}

/// A deletion cut short after its first step, as a killed process leaves it: the dialogue is
/// hidden from every read, the audit reports it as a deletion in progress (not as corruption),
/// and both the owner's next deletion and `finish_deletions` finish one — nothing of it left.
#[tokio::test]
async fn an_interrupted_deletion_stays_hidden_and_is_finished_later() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use ifs_domain::DialogueId;
    use ifs_store::Audit as _;

    let store = table().await;
    let owner = UserId::generate();
    let long = |n: usize| {
        let store = store.clone();
        async move {
            let id = store.start_dialogue(owner, said("first")).await.unwrap().dialogue_id;
            for i in 1..n {
                store.append_message(owner, id, said(&format!("message {i}"))).await.unwrap();
            }
            id
        }
    };
    let (first, second, kept) = (long(40).await, long(30).await, long(3).await);
    let s = |text: String| AttributeValue::S(text);
    let key = |dialogue: DialogueId, seq: u64| {
        std::collections::HashMap::from([
            ("pk".to_owned(), s(format!("DLG#{dialogue}"))),
            ("sk".to_owned(), s(format!("MSG#{seq:020}"))),
        ])
    };
    // What `hide` writes, then some of the messages gone, as the process died between batches.
    for dialogue in [first, second] {
        store
            .client()
            .update_item()
            .table_name(store.table())
            .set_key(Some(key(dialogue, 1)))
            .update_expression("SET deleting = :at, gsi1pk = :hidden")
            .expression_attribute_values(":at", AttributeValue::N("1750000000000".into()))
            .expression_attribute_values(":hidden", s(format!("DELETING#{owner}")))
            .send()
            .await
            .unwrap();
        for seq in 5..=12 {
            store
                .client()
                .delete_item()
                .table_name(store.table())
                .set_key(Some(key(dialogue, seq)))
                .send()
                .await
                .unwrap();
        }
    }
    let items = async |dialogue: DialogueId| {
        store
            .client()
            .query()
            .table_name(store.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("DLG#{dialogue}")))
            .consistent_read(true)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .unwrap()
            .count()
    };
    assert_eq!(items(first).await, 32);

    for dialogue in [first, second] {
        let page = store.messages(owner, dialogue, Limit::new_clamped(10, 100), None).await;
        assert!(matches!(page, Err(StoreError::NotFound)), "{page:?}");
        let later = store
            .messages(
                owner,
                dialogue,
                Limit::new_clamped(10, 100),
                Some(ifs_domain::MessageCursor { after_seq: 20 }),
            )
            .await;
        assert!(matches!(later, Err(StoreError::NotFound)), "{later:?}");
        let appended = store.append_message(owner, dialogue, said("hello?")).await;
        assert!(matches!(appended, Err(StoreError::NotFound)), "{appended:?}");
    }
    let listed = store.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    assert_eq!(listed.items.iter().map(|d| d.id).collect::<Vec<_>>(), [kept]);
    let report = store.audit().await.unwrap();
    assert_eq!(report.findings, Default::default(), "a deletion in progress is not corruption");
    assert_eq!((report.dialogues, report.messages), (1, 3));
    assert_eq!(
        report.deleting.iter().copied().collect::<std::collections::BTreeSet<_>>(),
        [first, second].into()
    );

    // The owner deleting that one again finishes it; the operator's repair finishes the other.
    store.delete_dialogue(owner, first).await.unwrap();
    assert_eq!(items(first).await, 0);
    assert_eq!(store.finish_deletions().await.unwrap(), 1);
    assert_eq!(items(second).await, 0);
    assert_eq!(store.finish_deletions().await.unwrap(), 0);
    let report = store.audit().await.unwrap();
    assert_eq!(report.findings, Default::default());
    assert_eq!((report.dialogues, report.messages, report.deleting.len()), (1, 3, 0));
}

/// Deleting a dialogue costs a call per batch of 25 messages and a query per 100, plus the
/// head's two and a look for earlier reply versions: it grows with the dialogue, as nothing else does, and is bounded by it.
#[tokio::test]
async fn deleting_a_dialogue_costs_one_batch_per_25_messages() {
    let store = table().await;
    let owner = UserId::generate();
    let mut counts = Vec::new();
    for length in [1_u64, 26, 301] {
        let dialogue = store.start_dialogue(owner, said("first")).await.unwrap().dialogue_id;
        for i in 1..length {
            store.append_message(owner, dialogue, said(&format!("message {i}"))).await.unwrap();
        }
        let before = store.calls();
        store.delete_dialogue(owner, dialogue).await.unwrap();
        counts.push(store.calls() - before);
    }
    // hide + queries (one per 100 others, and the empty one that ends) + batches + one query of
    // the reply versions' partition + the head.
    let cost = |queries: u64, batches: u64| 1 + queries + batches + 1 + 1;
    assert_eq!(counts, [cost(1, 0), cost(2, 1), cost(4, 12)]);
}

/// Regenerating the last reply reads the head and the reply and writes one transaction, however
/// long the dialogue; listing a message's versions reads its ids up to it, then it and them.
#[tokio::test]
async fn regenerating_costs_the_same_at_2_and_at_300_messages() {
    let store = table().await;
    let owner = UserId::generate();
    let mut counts = Vec::new();
    for length in [2_u64, 300] {
        let dialogue = store.start_dialogue(owner, said("first")).await.unwrap().dialogue_id;
        let mut last = None;
        for i in 2..=length {
            let role = if i % 2 == 0 { ifs_domain::Role::Assistant } else { ifs_domain::Role::User };
            let message = ifs_store::conformance::said(role, &format!("message {i}"), chrono::Utc::now());
            last = Some(store.append_message(owner, dialogue, message).await.unwrap().id);
        }
        let reply = last.unwrap();
        let again = ifs_store::conformance::said(ifs_domain::Role::Assistant, "again", chrono::Utc::now());
        let before = store.calls();
        store.replace_reply(owner, dialogue, reply, again).await.unwrap();
        counts.push(store.calls() - before);
    }
    assert_eq!(counts, [3, 3]);
}

/// A fork of *n* messages reads the original's head and ids, then writes a transaction per 99
/// copies, each after reading them: it grows with the fork, bounded by FORK_MAX_MESSAGES.
#[tokio::test]
async fn forking_costs_a_transaction_per_99_messages() {
    let store = table().await;
    let owner = UserId::generate();
    let dialogue = store.start_dialogue(owner, said("first")).await.unwrap().dialogue_id;
    let mut ids =
        vec![store.messages(owner, dialogue, Limit::new_clamped(1, 1), None).await.unwrap().items[0].id];
    for i in 1..200 {
        ids.push(store.append_message(owner, dialogue, said(&format!("message {i}"))).await.unwrap().id);
    }
    let mut counts = Vec::new();
    for through in [1_usize, 100, 200] {
        let before = store.calls();
        store.fork_dialogue(owner, dialogue, ids[through - 1]).await.unwrap();
        counts.push(store.calls() - before);
    }
    // head + the ids (one query) + the fork's head + (read + write) per 99 copies + showing it.
    let cost = |batches: u64| 1 + 1 + 1 + 2 * batches + 1;
    assert_eq!(counts, [cost(0), cost(1), cost(3)]);
}

/// A fork being written while its owner deletes everything: whichever wins, no copy outlives
/// the deletion and nothing is left half-done — the deletion takes the fork's mark away, and its
/// next batch fails on that instead of writing orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fork_cut_short_by_a_deletion_leaves_nothing_behind() {
    use ifs_store::Audit as _;

    let store = table().await;
    let owner = UserId::generate();
    let mut outcomes = Vec::new();
    for delay in [0, 30, 90] {
        let original = store.start_dialogue(owner, said("message 1")).await.unwrap().dialogue_id;
        for i in 2..=300 {
            store.append_message(owner, original, said(&format!("message {i}"))).await.unwrap();
        }
        let last = store.messages_before(owner, original, 301, 1).await.unwrap()[0].id;
        let forking = tokio::spawn({
            let store = store.clone();
            async move { store.fork_dialogue(owner, original, last).await }
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        store.delete_dialogues(owner).await.unwrap();
        let forked = forking.await.unwrap();
        // The fork either finished before the deletion (and went with it) or was stopped.
        assert!(matches!(forked, Ok(_) | Err(StoreError::NotFound)), "{forked:?}");
        outcomes.push(forked.is_ok());
        // A fork that finished after the deletion listed its owner's dialogues is theirs to
        // delete again; nothing else may be left.
        store.delete_dialogues(owner).await.unwrap();
        let report = store.audit().await.unwrap();
        assert_eq!(report.findings, Default::default(), "after a {delay} ms head start");
        assert_eq!((report.dialogues, report.messages, report.deleting.len()), (0, 0, 0), "{delay} ms");
    }
    eprintln!("forks that finished before the deletion: {outcomes:?}");
}
