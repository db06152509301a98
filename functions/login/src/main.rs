//! AWS Lambda entry point of `POST /api/v1/login`: the only function holding the signing key.

use std::sync::Arc;

use ifs_api::backends::{Backends, TableCheck};
use ifs_api::lambda::{self, ProtectedConfig};
use ifs_auth::{PasswordHasher, TokenIssuer};
use ifs_login::{LoginState, Throttle};

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    protected: ProtectedConfig,
    /// SSM Parameter Store SecureString holding the signing key (PKCS#8 PEM), read at cold start;
    /// the alternative to JWT_PRIVATE_KEY.
    #[arg(long, env = "JWT_PRIVATE_KEY_PARAMETER", conflicts_with = "jwt_private_key")]
    jwt_private_key_parameter: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let Config { protected: mut config, jwt_private_key_parameter } = lambda::config("login");
    if let Some(name) = &jwt_private_key_parameter {
        config.tokens.jwt_private_key = Some(ifs_login::signing_key::from_parameter(name, None).await?);
    }
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
