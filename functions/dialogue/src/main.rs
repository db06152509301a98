//! AWS Lambda entry point of `POST /api/v1/dialogue`.

use std::sync::Arc;

use ifs_api::agent::HttpAgent;
use ifs_api::backends::Backends;
use ifs_api::config::{DialogueConfig, StoreConfig, TokenConfig};
use ifs_api::lambda;
use ifs_dialogue::{DialogueSettings, DialogueState};

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    store: StoreConfig,
    #[command(flatten)]
    tokens: TokenConfig,
    #[command(flatten)]
    dialogue: DialogueConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::init_tracing();
    let config: Config = lambda::config("dialogue");
    let backends = Backends::open(&config.store)?;
    let clock = Arc::new(ifs_domain::SystemClock);
    let verifier = ifs_auth::TokenVerifier::new(config.tokens.public_key(None)?, &config.tokens.settings());
    let url = config
        .dialogue
        .agent_url
        .clone()
        .ok_or("AGENT_URL must be set to the agent's chat-completions URL")?;
    let state = DialogueState {
        auth: ifs_auth::Authenticator::new(verifier, backends.sessions, clock.clone()),
        dialogues: backends.dialogues,
        agent: Arc::new(HttpAgent::new(url, config.dialogue.agent_timeout())?),
        settings: Arc::new(DialogueSettings::from(&config.dialogue)),
        clock,
    };
    lambda::run(ifs_dialogue::router(state)).await
}
