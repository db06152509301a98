//! Sessions on a real redis-server, and what the API does while Redis is away. (The whole suite
//! also runs on Redis: `TEST_SESSIONS=redis`, as `make test` does.)

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ifs_store::local_servers::RedisServer;

use crate::helpers::{read, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_the_api_answers_503_and_recovers_when_it_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(&["--sessions", "redis", "--redis-url", &url]).await;
    let token = app.user("ada@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);

    redis.stop();
    let started = Instant::now();
    let response = app.client.get(app.url("/api/v1/me")).bearer_auth(&token).send().await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    for (status, body) in [
        app.login("ada@example.com", "a long password").await,
        app.say(&token, "are you there?", None).await,
        app.post("/api/v1/logout", Some(&token), &serde_json::json!(null)).await,
    ] {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
        );
    }
    assert!(started.elapsed() < Duration::from_secs(16), "{:?}", started.elapsed());

    // This Redis kept nothing in memory across the restart: the old session is gone, a new
    // login works as soon as the connection is back.
    redis.restart();
    let mut token = None;
    for _ in 0..50 {
        let (status, body) = app.login("ada@example.com", "a long password").await;
        if status == StatusCode::OK {
            token = body["access_token"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token.expect("logging in works again once Redis is back");
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
}
