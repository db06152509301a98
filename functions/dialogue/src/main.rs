//! AWS Lambda entry point of `POST /api/v1/dialogue`.

use std::sync::Arc;

use ifs_api::agent::{Agent, HttpAgent};
use ifs_api::config::DialogueConfig;
use ifs_api::lambda::{self, ProtectedConfig};
use ifs_dialogue::lambda_agent::LambdaAgent;
use ifs_dialogue::{DialogueSettings, DialogueState};

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    protected: ProtectedConfig,
    #[command(flatten)]
    dialogue: DialogueConfig,
    /// The agent's Lambda function (name or ARN), invoked directly; the alternative to AGENT_URL.
    #[arg(long, env = "AGENT_FUNCTION", conflicts_with = "agent_url")]
    agent_function: Option<String>,
    /// A Lambda API endpoint to invoke AGENT_FUNCTION through instead of AWS's (a local emulator
    /// such as `cargo lambda watch`).
    #[arg(long, env = "AGENT_LAMBDA_ENDPOINT")]
    agent_lambda_endpoint: Option<String>,
    /// AGENT_FUNCTION answers with Lambda response streaming (its LAMBDA_STREAMING): invoke it with
    /// InvokeWithResponseStream and pass its reply on as it comes.
    #[arg(long, env = "AGENT_FUNCTION_STREAMING", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    agent_function_streaming: bool,
    /// Answer through Lambda response streaming, so that streamed turns reach the client as they
    /// are produced; the function's invocations must stream too (template.yaml does both).
    #[arg(long, env = "LAMBDA_STREAMING", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    lambda_streaming: bool,
    /// The longest `max_tokens` the agent takes (the agent's own AGENT_MAX_TOKENS_LIMIT): a turn
    /// asking for more is refused before its message is stored.
    #[arg(long, env = "AGENT_MAX_TOKENS_LIMIT", default_value_t = ifs_api::openai::MAX_TOKENS_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..))]
    agent_max_tokens_limit: u32,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: Config = lambda::config("dialogue");
    let (backends, auth) = config.protected.open().await?;
    let timeout = config.dialogue.agent_timeout();
    let agent: Arc<dyn Agent> = match (&config.agent_function, &config.dialogue.agent_url) {
        (Some(function), _) => {
            let endpoint = config.agent_lambda_endpoint.as_deref();
            Arc::new(LambdaAgent::connect(function, endpoint, timeout, config.agent_function_streaming).await)
        }
        (None, Some(url)) => {
            Arc::new(HttpAgent::new(url.clone(), timeout)?.with_key(config.dialogue.agent_api_key.clone()))
        }
        (None, None) => {
            return Err("AGENT_FUNCTION (the agent's Lambda function) or AGENT_URL (its chat-completions URL) must be set".into());
        }
    };
    lambda_http::tracing::info!(agent = agent.describe(), "dialogue function configured");
    let state = DialogueState {
        auth,
        dialogues: backends.dialogues,
        users: backends.users,
        counters: backends.counters,
        agent,
        screener: ifs_dialogue::screener(&config.dialogue.safety)?,
        safety_counts: backends.safety,
        settings: Arc::new(DialogueSettings::new(&config.dialogue, config.agent_max_tokens_limit)),
        clock: Arc::new(ifs_domain::SystemClock),
    };
    let routes = ifs_dialogue::router(state);
    if config.lambda_streaming { lambda::run_streaming(routes).await } else { lambda::run(routes).await }
}
