//! AWS Lambda entry point of `GET /api/v1/me`.

use ifs_api::lambda::{self, ProtectedConfig};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: ProtectedConfig = lambda::config("me");
    let (backends, auth) = config.open().await?;
    lambda::run(ifs_me::router(ifs_me::MeState { auth, users: backends.users })).await
}
