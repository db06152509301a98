//! AWS Lambda entry point of `POST /api/v1/login`: the only function holding the signing key.

use std::sync::Arc;

use ifs_api::backends::{Backends, TableCheck};
use ifs_api::lambda::{self, ProtectedConfig};
use ifs_auth::{PasswordHasher, TokenIssuer};
use ifs_login::{LoginState, Throttle};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda::init_tracing();
    let config: ProtectedConfig = lambda::config("login");
    let backends = Backends::open(&config.store, TableCheck::Trust).await?;
    let keys = config.tokens.signing_keys(None)?;
    let state = LoginState {
        users: backends.users,
        sessions: backends.sessions,
        counters: backends.counters,
        hasher: PasswordHasher::new()?,
        issuer: Arc::new(TokenIssuer::new(keys, config.tokens.settings())),
        clock: Arc::new(ifs_domain::SystemClock),
        throttle: Throttle::default(),
    };
    lambda::run(ifs_login::router(state)).await
}
