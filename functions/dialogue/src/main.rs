//! AWS Lambda entry point of `POST /api/v1/dialogue`.

use std::sync::Arc;

use ifs_api::agent::HttpAgent;
use ifs_api::config::DialogueConfig;
use ifs_api::lambda::{self, ProtectedConfig};
use ifs_dialogue::{DialogueSettings, DialogueState};

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    protected: ProtectedConfig,
    #[command(flatten)]
    dialogue: DialogueConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::init_tracing();
    let config: Config = lambda::config("dialogue");
    let (backends, auth) = config.protected.open().await?;
    let url = config
        .dialogue
        .agent_url
        .clone()
        .ok_or("AGENT_URL must be set to the agent's chat-completions URL")?;
    let state = DialogueState {
        auth,
        dialogues: backends.dialogues,
        counters: backends.counters,
        agent: Arc::new(HttpAgent::new(url, config.dialogue.agent_timeout())?),
        settings: Arc::new(DialogueSettings::from(&config.dialogue)),
        clock: Arc::new(ifs_domain::SystemClock),
    };
    lambda::run(ifs_dialogue::router(state)).await
}
