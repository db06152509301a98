//! AWS Lambda entry point of `POST /api/v1/logout`.

use ifs_api::lambda::{self, ProtectedConfig};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: ProtectedConfig = lambda::config("logout");
    let (backends, auth) = config.open().await?;
    lambda::run(ifs_logout::router(ifs_logout::LogoutState { auth, sessions: backends.sessions })).await
}
