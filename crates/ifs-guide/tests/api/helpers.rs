//! `spawn_app()` and the agent double.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Parser as _;
use ifs_guide::{Cli, Command};
use ifs_store::local_servers::{DynamoDbLocal, RedisServer, unique_table};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the app waits for the agent in these tests.
pub const AGENT_TIMEOUT_SECONDS: u64 = 2;

/// An OpenAI-compatible server that echoes, and misbehaves on request by the last message:
/// `[down]` gets a bare 500, `[busy]` our 503 `agent_busy` with `Retry-After: 7`, `[overflow]`
/// our 400 `context_overflow`, `[llama-overflow]` llama-server's form of it, `[garbage]` a body
/// that is not JSON, `[huge]` a 2 MiB answer, `[partial-usage]` a reply whose usage is half
/// broken, `[slow]` no answer in time. Asked to stream, it sends the echo word by word as OpenAI
/// chunks; `[cut]` breaks off after two words with an error event.
#[derive(Debug, Clone)]
pub struct AgentDouble {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Value>>>,
}

async fn complete(
    State(seen): State<Arc<Mutex<Vec<Value>>>>,
    axum::Json(request): axum::Json<Value>,
) -> axum::response::Response {
    seen.lock().unwrap().push(request.clone());
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default().to_owned();
    let error =
        |status: StatusCode, error: Value| (status, axum::Json(json!({ "error": error }))).into_response();
    if last.contains("[down]") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "model not loaded").into_response();
    }
    if last.contains("[busy]") {
        let busy = json!({"code": "agent_busy", "message": "every slot is taken"});
        return ([("retry-after", "7")], error(StatusCode::SERVICE_UNAVAILABLE, busy)).into_response();
    }
    if last.contains("[overflow]") {
        let overflow =
            json!({"code": "context_overflow", "message": "the newest message alone needs 9000 tokens"});
        return error(StatusCode::BAD_REQUEST, overflow);
    }
    if last.contains("[llama-overflow]") {
        let overflow = json!({"code": 400, "message": "request exceeds the available context size", "type": "exceed_context_size_error"});
        return error(StatusCode::BAD_REQUEST, overflow);
    }
    if last.contains("[garbage]") {
        return (StatusCode::OK, "<html>surprise</html>").into_response();
    }
    if last.contains("[slow]") {
        tokio::time::sleep(Duration::from_secs(AGENT_TIMEOUT_SECONDS + 3)).await;
    }
    if request["stream"] == json!(true) {
        return stream_echo(&last, request["stream_options"]["include_usage"] == json!(true));
    }
    let content =
        if last.contains("[huge]") { "surprise ".repeat(256 * 1024) } else { format!("echo: {last}") };
    let usage = if last.contains("[partial-usage]") {
        json!({"prompt_tokens": 12, "completion_tokens": null, "total_tokens": -1})
    } else {
        json!({"prompt_tokens": messages.len() * 10, "completion_tokens": 3, "total_tokens": messages.len() * 10 + 3})
    };
    axum::Json(json!({
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "double",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage
    }))
    .into_response()
}

/// The echo as an OpenAI event stream.
fn stream_echo(last: &str, include_usage: bool) -> axum::response::Response {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "double",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null).to_string()];
    let echo = format!("echo: {last}");
    for (i, word) in echo.split_inclusive(' ').enumerate() {
        if last.contains("[cut]") && i == 2 {
            events.push(json!({"error": {"code": "internal", "message": "the model fell over"}}).to_string());
            break;
        }
        events.push(chunk(json!({"content": word}), Value::Null).to_string());
    }
    if !last.contains("[cut]") {
        events.push(chunk(json!({}), json!("stop")).to_string());
        if include_usage {
            events.push(json!({"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": "double", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).to_string());
        }
        events.push("[DONE]".into());
    }
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

impl AgentDouble {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/v1/chat/completions", post(complete)).with_state(requests.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, requests }
    }

    /// The `messages` of the last request received.
    pub fn last_messages(&self) -> Vec<(String, String)> {
        let seen = self.requests.lock().unwrap();
        let last = seen.last().expect("the agent was called");
        last["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap().to_owned()))
            .collect()
    }
}

/// A running app.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// What it runs on; `backing.agent` is the agent double.
    pub backing: Backing,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// What an app runs on and what outlives it: the data directory, the agent double, and (when
/// `TEST_BACKENDS=aws`) a redis-server and a DynamoDB table of its own.
#[derive(Debug, Clone)]
pub struct Backing {
    pub data_dir: Arc<TempDir>,
    pub agent: AgentDouble,
    pub redis: Option<Arc<RedisServer>>,
    /// DynamoDB Local's endpoint and the table, under `TEST_BACKENDS=aws`.
    pub dynamodb: Option<(String, String)>,
}

impl Backing {
    /// Fresh backing: the suite runs on the embedded store, or with `TEST_BACKENDS=aws` (as
    /// `make test` runs it a second time) as on AWS — users and dialogues in DynamoDB Local, a
    /// table per app, and sessions in a redis-server per app.
    pub async fn fresh() -> Self {
        let aws = match std::env::var("TEST_BACKENDS").as_deref() {
            Ok("aws") => true,
            Ok("embedded") | Err(_) => false,
            Ok(other) => panic!("TEST_BACKENDS={other}: expected embedded or aws"),
        };
        Self {
            data_dir: Arc::new(tempfile::tempdir().unwrap()),
            agent: AgentDouble::start().await,
            redis: aws.then(|| Arc::new(RedisServer::start())),
            dynamodb: aws.then(|| (DynamoDbLocal::shared().endpoint(), unique_table())),
        }
    }
}

impl Backing {
    /// Runs `ifs-guide check` on the store this backing holds (stop the app first: the embedded
    /// store opens in one process at a time); answers the exit code and what it printed.
    pub fn check(&self) -> (i32, String) {
        let mut command = ifs_guide_command();
        command.arg("check").arg("--data-dir").arg(self.data_dir.path());
        if let Some((endpoint, table)) = &self.dynamodb {
            command.args(["--store", "dynamodb", "--dynamodb-endpoint", endpoint, "--table-name", table]);
        }
        let output = command.output().expect("ifs-guide check runs");
        let printed =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), printed)
    }

    /// Runs `ifs-guide safety-report` on the store this backing holds (stop the app first);
    /// answers the exit code and what it printed.
    pub fn safety_report(&self) -> (i32, String) {
        let mut command = ifs_guide_command();
        command.arg("safety-report").arg("--data-dir").arg(self.data_dir.path());
        if let Some((endpoint, table)) = &self.dynamodb {
            command.args(["--store", "dynamodb", "--dynamodb-endpoint", endpoint, "--table-name", table]);
        }
        for _ in 0..50 {
            let output = command.output().expect("ifs-guide safety-report runs");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if !printed.contains("Cannot acquire lock") {
                return (output.status.code().unwrap_or(-1), printed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the embedded store stayed locked for 5 s after the app stopped")
    }

    /// [`check`](Self::check) once the app that used this backing has let go of it: its last
    /// store work (a write handed to the blocking pool just before the shutdown) may hold the
    /// embedded file for a moment after the server task ends.
    pub fn check_stopped(&self) -> (i32, String) {
        for _ in 0..50 {
            let (code, printed) = self.check();
            if !printed.contains("Cannot acquire lock") {
                return (code, printed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the embedded store stayed locked for 5 s after the app stopped")
    }

    /// `ifs-guide check` finds `dialogues` dialogues of `messages` messages, all of them valid.
    pub fn assert_check_clean(&self, dialogues: u64, messages: u64) {
        let (code, printed) = self.check_stopped();
        assert_eq!(code, 0, "{printed}");
        let expected = format!(
            "checked {dialogues} dialogue{}, {messages} messages in ",
            if dialogues == 1 { "" } else { "s" }
        );
        assert!(printed.starts_with(&expected) && printed.trim_end().ends_with(": no findings"), "{printed}");
    }
}

/// The app on a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The app on fresh backing, with more `serve` flags.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    spawn_app_in(Backing::fresh().await, flags).await
}

/// The app on `backing`, which may hold a previous run's data.
pub async fn spawn_app_in(backing: Backing, flags: &[&str]) -> TestApp {
    let timeout = AGENT_TIMEOUT_SECONDS.to_string();
    let redis_url = backing.redis.as_ref().map(|redis| redis.url());
    let dynamodb = backing.dynamodb.clone();
    let mut args = vec![
        "ifs-guide",
        "serve",
        "--bind-addr",
        "127.0.0.1:0",
        "--data-dir",
        backing.data_dir.path().to_str().unwrap(),
        "--agent-url",
        &backing.agent.url,
        "--agent-timeout",
        &timeout,
        "--system-prompt",
        "You are a test guide.",
        "--memory-messages",
        "4",
    ];
    if let Some(url) = &redis_url
        && !flags.contains(&"--sessions")
    {
        args.extend(["--sessions", "redis", "--redis-url", url]);
    }
    if let Some((endpoint, table)) = &dynamodb
        && !flags.contains(&"--store")
    {
        args.extend(["--store", "dynamodb", "--dynamodb-endpoint", endpoint, "--table-name", table]);
    }
    args.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(args).command else { unreachable!("serve was asked for") };
    let app = ifs_guide::build(&args).await.expect("app builds");
    start(app, backing).await
}

/// The app on a fresh data directory with the in-process model (no `AGENT_URL`); every prompt
/// the model is given is pushed onto `prompts`.
pub async fn spawn_app_with_model(prompts: Arc<Mutex<Vec<String>>>) -> TestApp {
    spawn_app_with_model_and(prompts, &[]).await
}

/// [`spawn_app_with_model`] with more `serve` flags.
pub async fn spawn_app_with_model_and(prompts: Arc<Mutex<Vec<String>>>, flags: &[&str]) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "no model at {}: run `make model`", model.display());
    let mut args = vec![
        "ifs-guide",
        "serve",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
        "--agent-model-path",
        model.to_str().unwrap(),
        "--system-prompt",
        "You are a kind guide.",
        "--agent-max-tokens",
        "24",
    ];
    args.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(args).command else { unreachable!("serve was asked for") };
    assert!(args.dialogue.agent_url.is_none(), "AGENT_URL must be unset for this test");
    let observer = Arc::new(move |prompt: &str| prompts.lock().unwrap().push(prompt.to_owned()));
    let app = ifs_guide::build_observed(&args, Some(observer)).await.expect("app builds");
    // No agent double: an address that refuses connections, should anything try it.
    let agent = AgentDouble { url: "http://127.0.0.1:9/".into(), requests: Arc::default() };
    start(app, Backing { data_dir, agent, redis: None, dynamodb: None }).await
}

/// `ifs-guide serve` on an embedded store with `AGENT_URL` pointed at `agent_url`, waiting up to
/// two minutes for it (a real model, unlike the double).
pub async fn spawn_app_with_agent_url(agent_url: &str) -> TestApp {
    spawn_app_with_agent_url_and(agent_url, &[]).await
}

/// [`spawn_app_with_agent_url`] with more flags.
pub async fn spawn_app_with_agent_url_and(agent_url: &str, flags: &[&str]) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut arguments = vec![
        "ifs-guide",
        "serve",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
        "--agent-url",
        agent_url,
        "--agent-timeout",
        "120",
    ];
    arguments.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(arguments).command else {
        unreachable!("serve was asked for")
    };
    let app = ifs_guide::build_observed(&args, None).await.expect("app builds");
    let agent = AgentDouble { url: agent_url.to_owned(), requests: Arc::default() };
    start(app, Backing { data_dir, agent, redis: None, dynamodb: None }).await
}

/// The agent service with the bundled model on its own loopback port, served as the standalone
/// `agent` binary serves it; returns its chat-completions URL.
pub async fn standalone_agent() -> String {
    standalone_agent_with_key(None).await
}

/// [`standalone_agent`] answering only requests that carry `key` (`AGENT_API_KEY`), wired as the
/// `agent` binary wires it.
pub async fn standalone_agent_with_key(key: Option<&str>) -> String {
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let config = ifs_agent::AgentConfig {
        agent_model_path: model,
        agent_chat_template: None,
        agent_ctx: 4096,
        agent_max_tokens: 8,
        agent_max_tokens_limit: 1024,
        agent_parallel: 1,
        agent_queue: 16,
        agent_threads: 0,
        agent_prompt_cache: 4,
        agent_prompt_cache_reuse: ifs_agent::batch::Reuse::Auto,
        agent_body_limit: ifs_agent::config::DEFAULT_BODY_LIMIT,
    };
    let service = Arc::new(config.service().expect("the agent loads its model"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
    let key = key.map(|k| k.parse().expect("a valid key"));
    let routes = ifs_api::http::edge(ifs_api::agent_key::guarded(ifs_agent::router(service), key));
    tokio::spawn(async move {
        let config = ifs_api::server::ServerConfig::default();
        let _ = ifs_api::server::serve(listener, routes, &config, std::future::pending()).await;
    });
    url
}

async fn start(app: ifs_guide::App, backing: Backing) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        ifs_guide::serve(listener, app, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    TestApp { address, client, backing, shutdown: Some(tx), server: Some(server) }
}

impl TestApp {
    /// Stops the server and waits until it has released the store; what it ran on stays.
    pub async fn stop(mut self) -> Backing {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
        }
        self.backing.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `host:port`, for raw sockets.
    pub fn socket_address(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.client.patch(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn signup(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post("/api/v1/signup", None, &json!({"email": email, "password": password})).await
    }

    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post("/api/v1/login", None, &json!({"email": email, "password": password})).await
    }

    /// Signs up and logs in `email`; returns the bearer token.
    pub async fn user(&self, email: &str) -> String {
        assert_eq!(self.signup(email, "a long password").await.0, StatusCode::CREATED);
        let (status, body) = self.login(email, "a long password").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Sends a turn; `dialogue` continues one.
    pub async fn say(&self, token: &str, message: &str, dialogue: Option<&str>) -> (StatusCode, Value) {
        let mut body = json!({"message": message});
        if let Some(id) = dialogue {
            body["dialogue_id"] = json!(id);
        }
        self.post("/api/v1/dialogue", Some(token), &body).await
    }

    /// A turn asked for as a stream; the events' names and data, to the end of the stream.
    pub async fn say_streaming(
        &self,
        token: &str,
        message: &str,
        dialogue: Option<&str>,
    ) -> (StatusCode, Vec<(String, Value)>) {
        let mut body = json!({"message": message, "stream": true});
        if let Some(id) = dialogue {
            body["dialogue_id"] = json!(id);
        }
        let mut response = self
            .client
            .post(self.url("/api/v1/dialogue"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let mut decoder = ifs_api::sse::Decoder::new(1 << 20);
        let mut events = Vec::new();
        while let Some(bytes) = response.chunk().await.unwrap() {
            for event in decoder.push(&bytes).unwrap() {
                events.push((event.name.unwrap_or_default(), serde_json::from_str(&event.data).unwrap()));
            }
        }
        (status, events)
    }

    /// Every message of a dialogue, following cursors.
    pub async fn all_messages(&self, token: &str, dialogue: &str) -> Vec<Value> {
        let mut messages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/messages?dialogue_id={dialogue}&limit=200");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(&path, Some(token)).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            messages.extend(page["messages"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return messages,
            }
        }
    }
}

/// Writes `request` as raw bytes on a new connection to `address` (`host:port`) and reads until
/// the server closes it (at most 5 s): for what an HTTP client library would refuse to send.
pub async fn send_raw(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer and close before it has read everything; that is its right.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let bytes = response.bytes().await.unwrap();
    let body =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    (status, body)
}

/// Checks the list invariants on messages as the API returns them.
pub fn assert_valid_list(messages: &[Value]) {
    assert!(!messages.is_empty());
    assert_eq!(messages[0]["prev_id"], Value::Null, "head has no prev");
    assert_eq!(messages[messages.len() - 1]["next_id"], Value::Null, "tail has no next");
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["seq"], json!(i + 1), "seq has no gaps");
    }
    for pair in messages.windows(2) {
        assert_eq!(pair[0]["next_id"], pair[1]["id"], "a.next = b");
        assert_eq!(pair[1]["prev_id"], pair[0]["id"], "b.prev = a");
    }
    let ids: std::collections::HashSet<_> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), messages.len(), "no duplicates");
}

/// The `ifs-guide` binary with none of the settings a developer's shell may have exported.
pub fn ifs_guide_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ifs-guide"));
    for variable in [
        "AGENT_URL",
        "AGENT_MODEL_PATH",
        "JWT_PRIVATE_KEY",
        "JWT_PUBLIC_KEY",
        "BIND_ADDR",
        "DATA_DIR",
        "HEADER_TIMEOUT",
        "BODY_TIMEOUT",
        "WRITE_TIMEOUT",
        "DIALOGUE_CONCURRENT_TURNS",
        "DAILY_TOKEN_LIMIT",
        "AGENT_MAX_TOKENS_LIMIT",
        "MAX_CONNECTIONS",
        "SHUTDOWN_TIMEOUT",
        "DIALOGUE_RATE_LIMIT",
        "STORE",
        "SESSIONS",
        "REDIS_URL",
        "TABLE_NAME",
        "DYNAMODB_ENDPOINT",
    ] {
        command.env_remove(variable);
    }
    command
}

/// The `ifs-guide` binary serving on a free port with the agent double, killed when dropped.
#[derive(Debug)]
pub struct Served {
    pub child: std::process::Child,
    pub address: String,
    data_dir: TempDir,
}

impl Served {
    /// Starts the binary with `env` on top of a throwaway `DATA_DIR` and the double.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    /// Starts the binary on `data_dir`, which may hold a store already.
    pub async fn start_in(data_dir: TempDir, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead as _;
        let agent = AgentDouble::start().await;
        let mut command = ifs_guide_command();
        command
            .arg("serve")
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("DATA_DIR", data_dir.path())
            .env("AGENT_URL", &agent.url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        let address = banner.strip_prefix("ifs-guide listening on ").expect(&banner).to_owned();
        // Keep reading so that the banner's writes never block the server.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, address, data_dir }
    }

    /// Stops the process and hands back its data directory.
    pub fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let empty = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data_dir, empty)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of `/proc/<pid>/status`, in kB (`VmHWM` is the peak resident set).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).expect(field);
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// How many sockets the process holds open.
    pub fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
