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
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the app waits for the agent in these tests.
pub const AGENT_TIMEOUT_SECONDS: u64 = 2;

/// An OpenAI-compatible server that echoes, and misbehaves on request: a last message containing
/// `[down]` gets a 503, `[garbage]` a body that is not JSON, `[slow]` no answer in time.
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
    if last.contains("[down]") {
        return (StatusCode::SERVICE_UNAVAILABLE, "model not loaded").into_response();
    }
    if last.contains("[garbage]") {
        return (StatusCode::OK, "<html>surprise</html>").into_response();
    }
    if last.contains("[slow]") {
        tokio::time::sleep(Duration::from_secs(AGENT_TIMEOUT_SECONDS + 3)).await;
    }
    axum::Json(json!({
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "double",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": messages.len() * 10, "completion_tokens": 3, "total_tokens": messages.len() * 10 + 3}
    }))
    .into_response()
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
    pub agent: AgentDouble,
    pub data_dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// The app on a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), AgentDouble::start().await).await
}

/// The app on `data_dir`, which may hold a previous run's data.
pub async fn spawn_app_in(data_dir: Arc<TempDir>, agent: AgentDouble) -> TestApp {
    let timeout = AGENT_TIMEOUT_SECONDS.to_string();
    let Cli { command: Command::Serve(args) } = Cli::parse_from([
        "ifs-guide",
        "serve",
        "--bind-addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
        "--agent-url",
        &agent.url,
        "--agent-timeout",
        &timeout,
        "--system-prompt",
        "You are a test guide.",
        "--memory-messages",
        "4",
    ]);
    let app = ifs_guide::build(&args).expect("app builds");
    start(app, data_dir, agent).await
}

/// The app on a fresh data directory with the in-process model (no `AGENT_URL`); every prompt
/// the model is given is pushed onto `prompts`.
pub async fn spawn_app_with_model(prompts: Arc<Mutex<Vec<String>>>) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "no model at {}: run `make model`", model.display());
    let Cli { command: Command::Serve(args) } = Cli::parse_from([
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
    ]);
    assert!(args.dialogue.agent_url.is_none(), "AGENT_URL must be unset for this test");
    let observer = Arc::new(move |prompt: &str| prompts.lock().unwrap().push(prompt.to_owned()));
    let app = ifs_guide::build_observed(&args, Some(observer)).expect("app builds");
    // No agent double: an address that refuses connections, should anything try it.
    start(app, data_dir, AgentDouble { url: "http://127.0.0.1:9/".into(), requests: Arc::default() }).await
}

async fn start(app: ifs_guide::App, data_dir: Arc<TempDir>, agent: AgentDouble) -> TestApp {
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
    TestApp { address, client, agent, data_dir, shutdown: Some(tx), server: Some(server) }
}

impl TestApp {
    /// Stops the server and waits until it has released the store.
    pub async fn stop(mut self) -> (Arc<TempDir>, AgentDouble) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
        }
        (self.data_dir.clone(), self.agent.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(body);
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
