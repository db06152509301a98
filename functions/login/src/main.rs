//! AWS Lambda entry point of `POST /api/v1/login`: the only function holding the signing key.

use std::sync::Arc;

use ifs_api::backends::Backends;
use ifs_api::config::{StoreConfig, TokenConfig};
use ifs_api::lambda;
use ifs_login::{LoginState, Throttle};

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
    let config: Config = lambda::config("login");
    let backends = Backends::open(&config.store)?;
    let keys = config.tokens.signing_keys(None)?;
    let state = LoginState {
        users: backends.users,
        sessions: backends.sessions,
        hasher: ifs_auth::PasswordHasher::new()?,
        issuer: Arc::new(ifs_auth::TokenIssuer::new(keys, config.tokens.settings())),
        clock: Arc::new(ifs_domain::SystemClock),
        throttle: Throttle::default(),
    };
    lambda::run(ifs_login::router(state)).await
}
