//! AWS Lambda entry point of `GET /api/v1/me`.

use ifs_api::lambda::{self, ProtectedConfig};

#[derive(Debug, clap::Parser)]
struct Config {
    #[command(flatten)]
    protected: ProtectedConfig,
    #[command(flatten)]
    quota: ifs_api::config::QuotaConfig,
    /// Answer through Lambda response streaming; the function's invocations must stream too.
    #[arg(long, env = "LAMBDA_STREAMING", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    lambda_streaming: bool,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: Config = lambda::config("me");
    let (backends, auth) = config.protected.open().await?;
    let routes = ifs_me::router(ifs_me::MeState {
        auth,
        users: backends.users,
        dialogues: backends.dialogues,
        sessions: backends.sessions,
        counters: backends.counters,
        hasher: ifs_auth::PasswordHasher::new()?,
        clock: std::sync::Arc::new(ifs_domain::SystemClock),
        throttle: ifs_auth::Throttle::default(),
        daily_token_limit: config.quota.daily_token_limit,
    });
    // The account's export can outgrow a buffered answer (6 MB): the function streams, and so do
    // its routes (template.yaml).
    if config.lambda_streaming { lambda::run_streaming(routes).await } else { lambda::run(routes).await }
}
