//! The conformance suite with sessions and counters on a real redis-server (users and dialogues on
//! the embedded store, as `SESSIONS=redis` runs them), and what happens when Redis goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ifs_domain::{SessionId, UserId};
use ifs_store::conformance::Stores;
use ifs_store::local_servers::RedisServer;
use ifs_store::{EmbeddedStore, RedisStore, Session, SessionStore as _, StoreError};

async fn redis() -> Stores {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let embedded = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store"));
    let redis = Arc::new(RedisStore::new(&server.url().into()).expect("redis store"));
    Stores {
        users: embedded.clone(),
        dialogues: embedded.clone(),
        safety: embedded.clone(),
        audit: embedded,
        sessions: redis.clone(),
        counters: redis,
        guard: Box::new((dir, server)),
    }
}

ifs_store::conformance_suite!(redis);

fn session() -> Session {
    let now = chrono::Utc::now();
    Session {
        id: SessionId::generate(),
        user_id: UserId::generate(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_operations_fail_fast_as_unavailable_and_recover_when_it_is_back() {
    let mut server = RedisServer::start();
    let store = RedisStore::new(&server.url().into()).unwrap();
    let before = session();
    store.create_session(&before).await.unwrap();

    server.stop();
    let started = Instant::now();
    let down = store.session(before.id, chrono::Utc::now()).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());

    server.restart();
    let after = session();
    let mut recovered = false;
    for _ in 0..50 {
        if store.create_session(&after).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store did not reconnect");
    assert_eq!(store.session(after.id, chrono::Utc::now()).await.unwrap(), Some(after));
}

#[tokio::test]
async fn a_session_key_expires_in_redis_with_its_token() {
    let server = RedisServer::start();
    let store = RedisStore::new(&server.url().into()).unwrap();
    let now = chrono::Utc::now();
    let short =
        Session { expires_at: now + chrono::Duration::milliseconds(300), created_at: now, ..session() };
    store.create_session(&short).await.unwrap();
    // Redis itself drops it: asked with a clock from before the expiry, it is still gone.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.session(short.id, now).await.unwrap(), None);
}

/// ElastiCache Serverless speaks only TLS: `rediss://` works, and the server's certificate is
/// verified — an authority nobody named is refused, and so is plain text to a TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_tls_with_the_certificate_verified() {
    let server = RedisServer::start_tls();
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = std::fs::read(server.ca_file().unwrap()).unwrap();

    let trusted = RedisStore::with_ca(&url.clone().into(), ca).unwrap();
    let kept = session();
    trusted.create_session(&kept).await.unwrap();
    assert_eq!(trusted.session(kept.id, chrono::Utc::now()).await.unwrap(), Some(kept.clone()));

    // The public roots do not vouch for this server's authority.
    let untrusted = RedisStore::new(&url.clone().into()).unwrap();
    let refused = untrusted.session(kept.id, chrono::Utc::now()).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    assert!(format!("{refused:?}").contains("UnknownIssuer"), "refused for another reason: {refused:?}");

    let plain = RedisStore::new(&url.replacen("rediss://", "redis://", 1).into()).unwrap();
    let refused = plain.session(kept.id, chrono::Utc::now()).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
}
