//! The conformance suite against the embedded (redb) adapter.

use std::sync::Arc;

use ifs_store::EmbeddedStore;
use ifs_store::conformance::Stores;

async fn embedded() -> Stores {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store"));
    Stores { users: store.clone(), dialogues: store.clone(), sessions: store, guard: Box::new(dir) }
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
