//! What an unauthenticated client could once do to the server, tried again: bursts of password
//! hashing, connections that never finish a request, parallel password guessing, a client that
//! keeps shutdown waiting. Each case is the attack, and the bound that now holds.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{Served, spawn_app, spawn_app_with};

/// Reads until the server closes the connection or `limit` passes; the bytes, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buffer = [0_u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (received, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_parallel_signups_keep_memory_bounded_and_every_created_account_works() {
    let server = Served::start(&[]).await;
    let client = reqwest::Client::new();
    let signups = (0..300).map(|i| {
        let (client, address) = (client.clone(), server.address.clone());
        async move {
            let email = format!("burst{i}@example.com");
            let response = client
                .post(format!("{address}/api/v1/signup"))
                .json(&json!({"email": email, "password": "a burst password"}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            (email, response.status().as_u16(), retry_after)
        }
    });
    let results = futures::future::join_all(signups).await;

    let peak_mb = server.status_kb("VmHWM") / 1024;
    // Each hash needs 19 MiB; 300 at once took this process to 6.7 GB before hashing was bounded.
    assert!(peak_mb < 300, "peak resident memory {peak_mb} MB");
    let created: Vec<&str> = results.iter().filter(|r| r.1 == 201).map(|r| r.0.as_str()).collect();
    eprintln!("300 parallel signups: {} created, peak resident memory {peak_mb} MB", created.len());
    assert!(!created.is_empty());
    for (email, status, retry_after) in &results {
        assert!(matches!(status, 201 | 503), "{email}: {status}");
        assert!(*status != 503 || *retry_after, "a 503 says when to come back");
    }
    for email in created {
        let response = client
            .post(format!("{}/api/v1/login", server.address))
            .json(&json!({"email": email, "password": "a burst password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{email}");
    }
}

#[tokio::test]
async fn sixty_parallel_guesses_get_at_most_five_evaluated() {
    let app = spawn_app().await;
    assert_eq!(app.signup("target@example.com", "the real password").await.0, StatusCode::CREATED);
    let app = &app;
    let guesses =
        (0..60).map(|i| async move { app.login("target@example.com", &format!("guess number {i}")).await.0 });
    let statuses = futures::future::join_all(guesses).await;

    let evaluated = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((evaluated, refused), (5, 55), "{statuses:?}");
    // Even the right password waits for the window now.
    assert_eq!(app.login("target@example.com", "the real password").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed_within_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout", "1"]).await;
    let silent = TcpStream::connect(app.socket_address()).await.unwrap();
    let mut partial = TcpStream::connect(app.socket_address()).await.unwrap();
    partial.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();

    let started = Instant::now();
    for mut stream in [silent, partial] {
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "the server kept a half-open connection");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout", "1"]).await;
    let mut stream = TcpStream::connect(app.socket_address()).await.unwrap();
    stream.write_all(b"GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(closed && started.elapsed() < Duration::from_secs(3), "idle for {:?}", started.elapsed());
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_gets_408_at_the_body_deadline() {
    let app = spawn_app_with(&["--body-timeout", "1"]).await;
    let mut stream = TcpStream::connect(app.socket_address()).await.unwrap();
    stream
        .write_all(
            b"POST /api/v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 60\r\n\r\n{",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Fast enough for any per-read timeout, far too slow for the whole body.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#) && answer.contains("x-request-id"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn sigterm_exits_within_the_shutdown_deadline_even_with_a_client_trickling_a_body() {
    let mut server = Served::start(&[("SHUTDOWN_TIMEOUT", "1"), ("BODY_TIMEOUT", "120")]).await;
    let address = server.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"POST /api/v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let killed =
        std::process::Command::new("kill").arg("-TERM").arg(server.pid().to_string()).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    trickle.abort();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn open_connections_are_capped_and_the_rest_wait_their_turn() {
    let server = Served::start(&[("MAX_CONNECTIONS", "8"), ("HEADER_TIMEOUT", "60")]).await;
    let address = server.address.trim_start_matches("http://").to_owned();
    let before = server.open_sockets();
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = server.open_sockets() - before;
    assert!(held <= 8, "the server holds {held} connections");

    // Once those clients go, the ones that waited in the backlog are served.
    drop(idle);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new().get(format!("{}/api/v1/me", server.address)).send(),
    )
    .await
    .expect("served once the idle connections are gone")
    .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
