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
        counters: store,
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
