//! AWS Lambda entry point of `GET /api/v1/dialogues`.

use ifs_api::lambda::{self, ProtectedConfig};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let _logs = lambda::init_tracing();
    let config: ProtectedConfig = lambda::config("dialogues");
    let (backends, auth) = config.open().await?;
    lambda::run(ifs_dialogues::router(ifs_dialogues::DialoguesState { auth, dialogues: backends.dialogues }))
        .await
}
