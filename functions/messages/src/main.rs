//! AWS Lambda entry point of `GET /api/v1/messages`.

use ifs_api::lambda::{self, ProtectedConfig};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: ProtectedConfig = lambda::config("messages");
    let (backends, auth) = config.open().await?;
    lambda::run(ifs_messages::router(ifs_messages::MessagesState { auth, dialogues: backends.dialogues }))
        .await
}
