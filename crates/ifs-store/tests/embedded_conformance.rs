//! The conformance suite against the embedded (redb) adapter.

use std::sync::Arc;

use ifs_store::EmbeddedStore;
use ifs_store::conformance::Stores;

async fn embedded() -> Stores {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store"));
    Stores {
        users: store.clone(),
        dialogues: store.clone(),
        sessions: store.clone(),
        counters: store.clone(),
        safety: store.clone(),
        audit: store,
        guard: Box::new(dir),
    }
}

ifs_store::conformance_suite!(embedded);

#[tokio::test]
async fn the_embedded_store_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let owner = ifs_domain::UserId::generate();
    let first = {
        let store = EmbeddedStore::open(&path).unwrap();
        let text = ifs_domain::MessageText::parse("remember me".into()).unwrap();
        let message = ifs_domain::NewMessage {
            id: ifs_domain::MessageId::generate(),
            role: ifs_domain::Role::User,
            content: text,
            created_at: chrono::Utc::now(),
            meta: None,
        };
        ifs_store::DialogueStore::start_dialogue(&store, owner, message).await.unwrap()
    };
    let reopened = EmbeddedStore::open(&path).unwrap();
    let limit = ifs_domain::Limit::new_clamped(10, 10);
    let page =
        ifs_store::DialogueStore::messages(&reopened, owner, first.dialogue_id, limit, None).await.unwrap();
    assert_eq!(page.items, vec![first]);
}

/// Sessions and counter windows that expired are deleted by the sweep, and only those: logins for
/// emails nobody owns, and sessions nobody revoked, must not pile up forever.
#[tokio::test]
async fn the_sweep_deletes_what_expired_and_nothing_else() {
    use std::time::Duration;

    use ifs_domain::{Email, SessionId, UserId};
    use ifs_store::{Counter, Counters as _, Session, SessionStore as _, Sweep as _, Swept};

    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let now = chrono::Utc::now();
    let minutes = |m: i64| now + chrono::Duration::minutes(m);
    let session = |expires_at| Session {
        id: SessionId::generate(),
        user_id: UserId::generate(),
        created_at: minutes(-120),
        expires_at,
    };
    let (stale, also_stale, live) = (session(minutes(-60)), session(minutes(-1)), session(minutes(30)));
    for s in [&stale, &also_stale, &live] {
        store.create_session(s).await.unwrap();
    }
    let emails: Vec<Email> =
        (0..3).map(|i| Email::parse(&format!("nobody{i}@example.com")).unwrap()).collect();
    let window = Duration::from_secs(15 * 60);
    store.hit(Counter::LoginAttempts(&emails[0]), minutes(-30), window).await.unwrap();
    store.hit(Counter::LoginAttempts(&emails[1]), minutes(-20), window).await.unwrap();
    store.hit(Counter::LoginAttempts(&emails[2]), minutes(-5), window).await.unwrap();

    // A small batch takes the oldest first; the next sweep takes the rest.
    assert_eq!(store.sweep_expired(now, 1).await.unwrap(), Swept { sessions: 1, windows: 1 });
    assert_eq!(store.sweep_expired(now, 100).await.unwrap(), Swept { sessions: 1, windows: 1 });
    assert_eq!(store.sweep_expired(now, 100).await.unwrap(), Swept::default());

    // What is still alive is untouched: the live session authenticates, the open window counts on.
    assert_eq!(store.session(live.id, now).await.unwrap(), Some(live.clone()));
    assert_eq!(store.hit(Counter::LoginAttempts(&emails[2]), now, window).await.unwrap().hits, 2);
    // Revoking keeps the index in step: nothing is left for a later sweep to find.
    store.revoke_session(live.id).await.unwrap();
    assert_eq!(store.sweep_expired(minutes(60), 100).await.unwrap(), Swept { sessions: 0, windows: 1 });
}

/// A store broken on purpose, behind the adapter's back: the audit names the broken dialogues,
/// and only those.
#[tokio::test]
async fn the_audit_reports_a_list_broken_behind_the_stores_back() {
    use ifs_domain::{DialogueId, Finding, Role, UserId};
    use ifs_store::conformance::said;
    use ifs_store::{Audit as _, DialogueStore as _};
    use redb::{ReadableDatabase as _, ReadableTable as _};

    const MESSAGES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");
    let key = |dialogue: DialogueId, seq: u64| [dialogue.as_bytes().as_slice(), &seq.to_be_bytes()].concat();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let owner = UserId::generate();
    let (broken, intact) = {
        let store = EmbeddedStore::open(&path).unwrap();
        let now = chrono::Utc::now();
        let broken = store.start_dialogue(owner, said(Role::User, "one", now)).await.unwrap().dialogue_id;
        for text in ["two", "three", "four"] {
            store.append_message(owner, broken, said(Role::User, text, now)).await.unwrap();
        }
        let intact = store.start_dialogue(owner, said(Role::User, "fine", now)).await.unwrap().dialogue_id;
        store.append_message(owner, intact, said(Role::Assistant, "yes", now)).await.unwrap();
        assert_eq!(store.audit().await.unwrap().findings, Default::default());
        (broken, intact)
    };

    // Lose the second message, and file a copy of the third under a dialogue with no head.
    let headless = DialogueId::generate();
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut messages = txn.open_table(MESSAGES).unwrap();
            messages.remove(key(broken, 2).as_slice()).unwrap().unwrap();
            let third = messages.get(key(broken, 3).as_slice()).unwrap().unwrap().value().to_vec();
            messages.insert(key(headless, 3).as_slice(), third.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert!(read.open_table(MESSAGES).unwrap().get(key(intact, 2).as_slice()).unwrap().is_some());
    }

    let report = EmbeddedStore::open(&path).unwrap().audit().await.unwrap();
    assert_eq!((report.dialogues, report.messages), (3, 6));
    assert_eq!(report.findings.keys().copied().collect::<Vec<_>>(), {
        let mut expected = vec![broken, headless];
        expected.sort_unstable();
        expected
    });
    let found = &report.findings[&broken];
    assert!(found.contains(&Finding::Gap { after: 1, next: 3 }), "{found:?}");
    assert!(found.contains(&Finding::BrokenLink { position: 1, next: 3 }), "{found:?}");
    assert!(
        found.iter().any(|f| matches!(f, Finding::SummaryMismatch { field: "message_count", .. })),
        "{found:?}"
    );
    let found = &report.findings[&headless];
    assert!(found.contains(&Finding::NoHead { positions: vec![3] }), "{found:?}");
    assert!(found.contains(&Finding::ForeignMessage { position: 3, dialogue: broken }), "{found:?}");
}

/// A store whose messages and sessions an earlier version wrote as JSON: this version reads,
/// pages, lists, appends to and audits it as if it had written it, and nothing is lost.
#[tokio::test]
async fn records_earlier_versions_wrote_as_json_still_serve() {
    use ifs_domain::{DialogueSummary, Limit, Message, MessageId, ReplyMeta, Role, SessionId, Usage, UserId};
    use ifs_store::conformance::said;
    use ifs_store::{Audit as _, DialogueStore as _, Session, SessionStore as _};
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};

    const MESSAGES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");
    const BY_OWNER: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("dialogues_by_owner");
    const SESSIONS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("sessions");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    drop(EmbeddedStore::open(&path).unwrap());

    let now = chrono::DateTime::from_timestamp(1_795_000_000, 250_000_000).unwrap();
    let owner = UserId::generate();
    let (head_id, reply_id) = (MessageId::generate(), MessageId::generate());
    let dialogue = head_id.into();
    let head = Message {
        id: head_id,
        dialogue_id: dialogue,
        seq: 1,
        role: Role::User,
        content: "Hello from an older version.".into(),
        created_at: now,
        prev_id: None,
        next_id: Some(reply_id),
        meta: None,
    };
    let reply = Message {
        id: reply_id,
        seq: 2,
        role: Role::Assistant,
        content: "Hello.".into(),
        prev_id: Some(head_id),
        next_id: None,
        meta: Some(ReplyMeta {
            model: Some("smollm2".into()),
            finish_reason: Some("stop".into()),
            usage: Some(Usage::of(12, 3)),
            truncated_messages: Some(1),
            version: None,
            safety: None,
        }),
        ..head.clone()
    };
    let summary = DialogueSummary {
        id: dialogue,
        owner,
        title: "Hello from an older version.".into(),
        created_at: now,
        updated_at: now,
        message_count: 2,
        tail_id: reply_id,
        forked_from: None,
    };
    let session = Session {
        id: SessionId::generate(),
        user_id: owner,
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    };
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let key = |seq: u64| [dialogue.as_bytes().as_slice(), &seq.to_be_bytes()].concat();
            let json = |value: serde_json::Value| serde_json::to_vec(&value).unwrap();
            let mut messages = txn.open_table(MESSAGES).unwrap();
            messages
                .insert(
                    key(1).as_slice(),
                    json(serde_json::json!({"message": head, "summary": summary})).as_slice(),
                )
                .unwrap();
            messages
                .insert(key(2).as_slice(), json(serde_json::json!({"message": reply})).as_slice())
                .unwrap();
            let newest_first = u64::MAX - u64::try_from(now.timestamp_millis()).unwrap();
            let index_key =
                [owner.as_bytes().as_slice(), &newest_first.to_be_bytes(), dialogue.as_bytes()].concat();
            txn.open_table(BY_OWNER).unwrap().insert(index_key.as_slice(), [].as_slice()).unwrap();
            let session_json = serde_json::to_vec(&session).unwrap();
            txn.open_table(SESSIONS)
                .unwrap()
                .insert(session.id.as_bytes().as_slice(), session_json.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(db.begin_read().unwrap().open_table(MESSAGES).unwrap().len().unwrap(), 2);
    }

    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.session(session.id, now).await.unwrap(), Some(session.clone()));
    let page = |limit| Limit::parse(Some(limit), 50, 200).unwrap();
    let listed = store.messages(owner, dialogue, page("50"), None).await.unwrap();
    assert_eq!(listed.items, [head.clone(), reply.clone()]);
    assert_eq!(store.dialogues(owner, page("50"), None).await.unwrap().items, [summary]);
    assert_eq!(store.messages_before(owner, dialogue, 3, 10).await.unwrap(), [head.clone(), reply.clone()]);

    let later = now + chrono::Duration::seconds(5);
    let third = store.append_message(owner, dialogue, said(Role::User, "And now?", later)).await.unwrap();
    assert_eq!((third.seq, third.prev_id), (3, Some(reply_id)));
    let all = store.messages(owner, dialogue, page("50"), None).await.unwrap().items;
    assert_eq!(all[..2], [head, Message { next_id: Some(third.id), ..reply }]);
    assert_eq!(all[2], third);
    let listed = store.dialogues(owner, page("50"), None).await.unwrap().items;
    assert_eq!((listed[0].message_count, listed[0].tail_id, listed[0].updated_at), (3, third.id, later));

    let report = store.audit().await.unwrap();
    assert_eq!((report.dialogues, report.messages), (1, 3));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    // Sessions written before sessions were filed by user are filed when the store opens, so
    // that deleting an account revokes them too.
    assert_eq!(store.revoke_user_sessions(owner).await.unwrap(), 1);
    assert_eq!(store.session(session.id, now).await.unwrap(), None);
}

/// A fork copies at most `FORK_MAX_MESSAGES`: at that message it is whole, one further it is
/// refused and nothing is written. (The bound is checked before any store-specific work, so one
/// store shows it; 1,001 appends on DynamoDB Local would cost the suite most of a minute.)
#[tokio::test]
async fn a_fork_past_the_bound_is_refused_and_writes_nothing() {
    use ifs_domain::{FORK_MAX_MESSAGES, Limit, Role, UserId};
    use ifs_store::{Audit as _, DialogueStore as _, StoreError};

    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let owner = UserId::generate();
    let said = |i: u64| ifs_store::conformance::said(Role::User, &format!("message {i}"), chrono::Utc::now());
    let dialogue = store.start_dialogue(owner, said(1)).await.unwrap().dialogue_id;
    let mut ids = Vec::new();
    for i in 2..=FORK_MAX_MESSAGES + 1 {
        ids.push(store.append_message(owner, dialogue, said(i)).await.unwrap().id);
    }
    let refused = store.fork_dialogue(owner, dialogue, ids[ids.len() - 1]).await;
    assert!(matches!(refused, Err(StoreError::ForkTooLong)), "{refused:?}");
    assert_eq!(store.dialogues(owner, Limit::new_clamped(10, 10), None).await.unwrap().items.len(), 1);
    let fork = store.fork_dialogue(owner, dialogue, ids[ids.len() - 2]).await.unwrap();
    assert_eq!(fork.message_count, FORK_MAX_MESSAGES);
    let report = store.audit().await.unwrap();
    assert_eq!(report.findings, Default::default());
    assert_eq!((report.dialogues, report.messages), (2, 2 * FORK_MAX_MESSAGES + 1));
}
