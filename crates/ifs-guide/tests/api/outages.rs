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

/// DynamoDB goes away while turns are being written, and comes back with its data as the real
/// service would: the cut-off turns answer 503, the rest of the API 503 too, and afterwards the
/// service carries on without a restart and `ifs-guide check` finds nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_dynamodb_is_down_dialogues_answer_503_and_recover_when_it_is_back() {
    use ifs_store::local_servers::{DynamoDbLocal, unique_table};
    let disk = tempfile::tempdir().unwrap();
    let mut dynamodb = DynamoDbLocal::start_on_disk(disk.path());
    let (endpoint, table) = (dynamodb.endpoint(), unique_table());
    let store = ["--store", "dynamodb", "--dynamodb-endpoint", &endpoint, "--table-name", &table];
    let app = spawn_app_with(
        &[
            &store[..],
            &[
                "--dialogue-rate-limit",
                "100000",
                "--dialogue-concurrent-turns",
                "4",
                "--daily-token-limit",
                "0",
            ],
        ]
        .concat(),
    )
    .await;
    let token = app.user("ada@example.com").await;
    let (status, first) = app.say(&token, "before", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();

    let unavailable = |(status, body): (StatusCode, serde_json::Value)| {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{body}"
        );
    };
    // Four clients continue the dialogue until DynamoDB is gone under them.
    let writers = (0..4).map(|w| {
        let (app, token, dialogue) = (&app, &token, &dialogue);
        async move {
            let mut answered = 0;
            loop {
                let answer = app.say(token, &format!("writer {w}, turn {answered}"), Some(dialogue)).await;
                if answer.0 != StatusCode::OK {
                    unavailable(answer);
                    return answered;
                }
                answered += 1;
            }
        }
    });
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| dynamodb.stop());
    };
    let (answered, ()) = tokio::join!(futures::future::join_all(writers), stopping);
    let answered: usize = answered.into_iter().sum();
    assert!(answered > 0, "the writers were cut off before they wrote anything");
    unavailable(app.say(&token, "while down", None).await);
    unavailable(app.get("/api/v1/dialogues", Some(&token)).await);

    dynamodb.restart();
    assert_eq!(app.say(&token, "after", Some(&dialogue)).await.0, StatusCode::OK);
    let messages = app.all_messages(&token, &dialogue).await;
    crate::helpers::assert_valid_list(&messages);
    // A cut-off turn may have kept its user message (and, had only the answer been lost, its
    // reply): never less than what was answered.
    assert!(messages.len() >= 2 + 2 * answered + 2, "{} messages, {answered} turns answered", messages.len());

    let mut backing = app.stop().await;
    backing.dynamodb = Some((endpoint, table));
    backing.assert_check_clean(1, messages.len() as u64);
}

/// Sessions on a Redis that speaks only TLS (as ElastiCache Serverless does), its certificate
/// from a private authority named by REDIS_CA_FILE: the whole auth round trip works over it.
#[tokio::test]
async fn sessions_work_over_tls_with_a_private_authority() {
    let redis = RedisServer::start_tls();
    let ca = redis.ca_file().unwrap();
    let url = redis.url();
    let app = spawn_app_with(&[
        "--sessions",
        "redis",
        "--redis-url",
        &url,
        "--redis-ca-file",
        ca.to_str().unwrap(),
    ])
    .await;
    let token = app.user("ada@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
    assert_eq!(
        app.post("/api/v1/logout", Some(&token), &serde_json::json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.0, StatusCode::UNAUTHORIZED);
}
