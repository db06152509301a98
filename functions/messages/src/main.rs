//! AWS Lambda entry point of `GET /api/v1/messages`.

use std::sync::Arc;

use ifs_api::backends::Backends;
use ifs_api::config::{StoreConfig, TokenConfig};
use ifs_api::lambda;
use ifs_messages::MessagesState;

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    store: StoreConfig,
    #[command(flatten)]
    tokens: TokenConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::init_tracing();
    let config: Config = lambda::config("messages");
    let backends = Backends::open(&config.store)?;
    let verifier = ifs_auth::TokenVerifier::new(config.tokens.public_key(None)?, &config.tokens.settings());
    let auth = ifs_auth::Authenticator::new(verifier, backends.sessions, Arc::new(ifs_domain::SystemClock));
    lambda::run(ifs_messages::router(MessagesState { auth, dialogues: backends.dialogues })).await
}
