//! What the API does while a backend is away: Redis (sessions), DynamoDB Local (dialogues). The
//! whole suite also runs on both: `TEST_BACKENDS=aws`, as `make test` does.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_dynamodb_is_down_dialogues_answer_503_and_recover_when_it_is_back() {
    use ifs_store::local_servers::{DynamoDbLocal, unique_table};
    let mut dynamodb = DynamoDbLocal::start();
    let (endpoint, table) = (dynamodb.endpoint(), unique_table());
    let app =
        spawn_app_with(&["--store", "dynamodb", "--dynamodb-endpoint", &endpoint, "--table-name", &table])
            .await;
    let token = app.user("ada@example.com").await;
    assert_eq!(app.say(&token, "before", None).await.0, StatusCode::CREATED);

    dynamodb.stop();
    for (status, body) in
        [app.say(&token, "while down", None).await, app.get("/api/v1/dialogues", Some(&token)).await]
    {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{body}"
        );
    }

    // This DynamoDB Local kept nothing in memory: the table comes back empty, and the service
    // with it, without a restart.
    dynamodb.restart();
    let config = ifs_api::config::DynamoConfig {
        table_name: table,
        dynamodb_endpoint: Some(endpoint.parse().unwrap()),
    };
    ifs_guide::create_table(&config).await.unwrap();
    assert_eq!(app.say(&token, "after", None).await.0, StatusCode::CREATED);
}
