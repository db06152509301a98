//! What every Lambda `main` shares: logging set up for CloudWatch, configuration from the
//! environment, and running a router through `lambda_http` behind the common middleware.

use std::sync::Arc;

use axum::Router;
use axum::http::Uri;
use ifs_auth::{Authenticator, TokenVerifier};
use ifs_domain::SystemClock;
use lambda_http::Request;
use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use tower::util::MapRequest;

use crate::backends::{Backends, TableCheck};
use crate::config::{StoreConfig, TokenConfig};

/// Logs as JSON on Lambda (one object per line, for CloudWatch queries) and as text elsewhere;
/// `RUST_LOG` filters, default `info` with llama.cpp's own chatter cut to warnings. Keep the guard
/// until the process ends: dropping it writes out what is still queued.
pub fn init_tracing() -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // llama.cpp reports every tensor it loads at info level; only its warnings are news.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        // Written before the response: Lambda may freeze the process as soon as it is sent, and
        // one request at a time leaves nothing to gain from a writer thread.
        drop(builder.json().flatten_event(true).with_current_span(true).without_time().try_init());
        return LogGuard { _writer: None };
    }
    // Locally, stdout is for the banner; logs go to stderr, coloured only on a terminal, in
    // batches (see `logs`).
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal();
    let Ok((writer, guard)) = crate::logs::BatchedStderr::start() else {
        drop(builder.with_writer(std::io::stderr).with_ansi(ansi).try_init());
        return LogGuard { _writer: None };
    };
    // A second call (tests) keeps the first subscriber.
    let builder = builder.with_writer(writer).with_ansi(ansi);
    let installed =
        if ansi { builder.try_init() } else { builder.fmt_fields(crate::logs::plain_fields()).try_init() };
    match installed {
        Ok(()) => LogGuard { _writer: Some(guard) },
        Err(_) => LogGuard { _writer: None },
    }
}

/// Keeps the log writer thread; its drop writes out the lines still buffered.
#[must_use = "buffered lines are lost unless the guard lives until the end"]
#[derive(Debug)]
pub struct LogGuard {
    _writer: Option<crate::logs::FlushGuard>,
}

/// What every function that checks tokens reads: where the data is and how tokens look.
#[derive(Debug, Clone, clap::Parser)]
pub struct ProtectedConfig {
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub tokens: TokenConfig,
}

impl ProtectedConfig {
    /// The backends, and the authenticator that verifies with the public key only.
    pub async fn open(&self) -> anyhow::Result<(Backends, Authenticator)> {
        let backends = Backends::open(&self.store, TableCheck::Trust).await?;
        let verifier = TokenVerifier::new(self.tokens.public_key(None)?, &self.tokens.settings());
        let auth = Authenticator::new(verifier, backends.sessions.clone(), Arc::new(SystemClock));
        Ok((backends, auth))
    }
}

/// Reads a function's configuration from the environment; on a bad or missing value, prints
/// which variable and why, and exits.
#[must_use]
pub fn config<T: clap::Parser>(function: &str) -> T {
    T::parse_from([function])
}

/// The service a Lambda runs: the common middleware around `routes`, behind the removal of the
/// API Gateway stage from the path.
pub type LambdaService = MapRequest<Router, fn(Request) -> Request>;

/// Builds the [`LambdaService`] for `routes` (state provided).
pub fn service(routes: Router) -> LambdaService {
    MapRequest::new(crate::http::edge(routes), strip_stage as fn(Request) -> Request)
}

/// The CPU features this binary was compiled for, as text inside the binary: a Lambda build must
/// show x86-64-v3's, never the build machine's (`infra/lambda-build.sh` checks every bootstrap).
pub const TARGET_FEATURES: &str = concat!("ifs-guide-target-features:", env!("IFS_TARGET_FEATURES"), ";");

/// Serves `routes` (state provided) as this Lambda's handler.
pub async fn run(routes: Router) -> Result<(), lambda_http::Error> {
    tracing::info!(built_for = TARGET_FEATURES, "starting the Lambda runtime loop");
    lambda_http::run(service(routes)).await
}

/// Serves `routes` with Lambda response streaming: status and headers go out first (the
/// metadata prelude), then the body as it is produced — an event stream reaches the client piece
/// by piece, and API Gateway's 29-second limit gives way to the integration's own timeout. Only
/// for functions whose invocations stream (template.yaml: `ResponseTransferMode:
/// RESPONSE_STREAM`); a whole JSON answer goes out the same way, in one piece.
pub async fn run_streaming(routes: Router) -> Result<(), lambda_http::Error> {
    tracing::info!(built_for = TARGET_FEATURES, "starting the Lambda runtime loop, streaming responses");
    lambda_http::run_with_streaming_response(service(routes)).await
}

/// `lambda_http` puts a named stage in front of the path (`/prod/api/v1/me`) so that routes can
/// see it; ours are stage-independent, so it comes off again before routing. The same routers
/// then work behind REST APIs, HTTP APIs and custom domains alike.
fn strip_stage(mut request: Request) -> Request {
    let stage = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => context.stage.clone(),
        Some(RequestContext::ApiGatewayV2(context)) => context.stage.clone(),
        _ => None,
    };
    let Some(stage) = stage.filter(|s| s != "$default" && !s.is_empty()) else { return request };
    let prefix = format!("/{stage}");
    let Some(rest) = request.uri().path().strip_prefix(&prefix) else { return request };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return request;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(stripped) = path_and_query.parse() {
        parts.path_and_query = Some(stripped);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}
