//! The two peers `make bench-api` measures ifs-guide against: `hello`, an empty axum server (the
//! yardstick: what the same runtime, HTTP stack and load generator do with no work at all), and
//! `agent`, an OpenAI-compatible double that answers every chat completion at once with a fixed
//! reply, so that dialogue benchmarks measure ifs-guide rather than a model.
//!
//! `cargo run --release --example bench_peers -- hello|agent ADDR`; prints `listening on ADDR`.

use axum::Router;
use axum::routing::{get, post};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench_peers hello|agent 127.0.0.1:PORT");
    };
    let app = match kind.as_str() {
        "hello" => Router::new().route("/", get(|| async { "Hello, World!" })),
        "agent" => Router::new().route("/v1/chat/completions", post(reply)),
        other => anyhow::bail!("no peer called {other:?}"),
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A fixed, well-formed answer; the request is not even read, as a model would be the cost here.
async fn reply() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-double",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Noted. What happened next?"},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    }))
}
