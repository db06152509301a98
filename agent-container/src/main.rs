//! `agent`: the agent service on its own. On Lambda (`AWS_LAMBDA_RUNTIME_API` set) it runs the
//! agent router through `lambda_http`; anywhere else it serves the same router over HTTP on
//! `BIND_ADDR`, e.g. for OpenAI clients pointed at `http://127.0.0.1:8081/v1`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use ifs_agent::AgentConfig;
use ifs_api::server::ServerConfig;

#[derive(Debug, clap::Parser)]
#[command(name = "agent", version, about)]
struct Config {
    /// Address to listen on when not on Lambda; port 0 picks a free one.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8081")]
    bind_addr: SocketAddr,
    #[command(flatten)]
    server: ServerConfig,
    #[command(flatten)]
    agent: AgentConfig,
    /// On Lambda: answer through Lambda response streaming (the dialogue function invokes it with
    /// `InvokeWithResponseStream`; template.yaml sets it).
    #[arg(long, env = "LAMBDA_STREAMING", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    lambda_streaming: bool,
    /// Answer only requests with `Authorization: Bearer <key>` (as llama-server's --api-key);
    /// GET /health stays open. At least 16 printable characters. Not used on Lambda, where IAM
    /// decides who may call.
    #[arg(long, env = "AGENT_API_KEY", hide_env_values = true)]
    api_key: Option<ifs_api::agent_key::AgentKey>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _logs = ifs_api::lambda::init_tracing();
    let config = Config::parse();
    let service = match config.agent.service() {
        Ok(service) => Arc::new(service),
        Err(error) => {
            eprintln!("agent: {error:#}");
            return ExitCode::from(2);
        }
    };
    let routes = ifs_agent::router(Arc::clone(&service));
    let served = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        if config.api_key.is_some() {
            eprintln!("agent: AGENT_API_KEY is not used on Lambda, where IAM decides who may call");
        }
        let running = if config.lambda_streaming {
            ifs_api::lambda::run_streaming(routes).await
        } else {
            ifs_api::lambda::run(routes).await
        };
        running.map_err(|e| e.to_string())
    } else {
        serve(&config, routes, &service).await
    };
    served.map_or_else(
        |error| {
            eprintln!("agent: {error}");
            ExitCode::FAILURE
        },
        |()| ExitCode::SUCCESS,
    )
}

async fn serve(
    config: &Config,
    routes: axum::Router,
    service: &ifs_agent::AgentService,
) -> Result<(), String> {
    let address = config.bind_addr;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (BIND_ADDR): {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let info = service.engine().info();
    println!("agent listening on http://{bound} (OpenAI base URL http://{bound}/v1)");
    println!(
        "  model: {} ({}), context {} per sequence, {} threads",
        info.name,
        info.file.display(),
        info.context,
        info.threads
    );
    println!(
        "  {} generations batched together, prompt cache of {} ({})",
        info.parallel,
        info.cached_prompts,
        info.reuse.name()
    );
    println!("  {}", config.server.describe());
    println!(
        "  {}",
        if config.api_key.is_some() {
            "key: required (AGENT_API_KEY); GET /health is open"
        } else {
            "key: none, anyone who reaches this port may use the model (set AGENT_API_KEY)"
        }
    );
    // The health check stays outside the key, for load balancers and orchestrators.
    let routes = ifs_api::agent_key::guarded(routes, config.api_key.clone())
        .route("/health", axum::routing::get(|| async { axum::Json(ifs_api::agent_key::HEALTHY) }));
    ifs_api::server::serve(
        listener,
        ifs_api::http::edge(routes),
        &config.server,
        ifs_api::http::shutdown_signal(),
    )
    .await
    .map_err(|e| format!("{e:#}"))
}
