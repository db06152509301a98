//! AWS Lambda entry point of `POST /api/v1/signup`.

use std::sync::Arc;

use ifs_api::backends::{self, TableCheck};
use ifs_api::config::StoreConfig;
use ifs_api::lambda;
use ifs_signup::SignupState;

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    store: StoreConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: Config = lambda::config("signup");
    // Sign-up checks no sessions: it needs DynamoDB only, and runs outside the VPC.
    let users = backends::open_users(&config.store, TableCheck::Trust).await?;
    let hasher = ifs_auth::PasswordHasher::new()?;
    let state = SignupState { users, hasher, clock: Arc::new(ifs_domain::SystemClock) };
    lambda::run(ifs_signup::router(state)).await
}
