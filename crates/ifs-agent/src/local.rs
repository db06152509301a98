//! The agent in the same process as the Dialogue Manager: the `Agent` port implemented by calling
//! [`AgentService`] directly, with no HTTP in between.

use std::sync::Arc;

use async_trait::async_trait;
use ifs_api::agent::{Agent, AgentError};
use ifs_api::openai::{ChatRequest, ChatResponse};

use crate::service::{AgentService, BUSY_RETRY_AFTER, ChatError};

/// [`AgentService`] as an [`Agent`].
#[derive(Debug, Clone)]
pub struct LocalAgent(pub Arc<AgentService>);

#[async_trait]
impl Agent for LocalAgent {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        self.0.chat(request).await.map_err(|error| match error {
            ChatError::Busy => AgentError::Busy { retry_after: BUSY_RETRY_AFTER },
            ChatError::Failed(cause) => AgentError::Unavailable(format!("{cause:#}")),
            refused => {
                let api = refused.into_api_error();
                AgentError::Rejected { code: api.code(), message: api.message().to_owned() }
            }
        })
    }

    fn describe(&self) -> String {
        let info = self.0.engine().info();
        format!(
            "in-process llama.cpp: {} ({}), context {}, {} threads",
            info.name,
            info.file.display(),
            info.context,
            info.threads
        )
    }
}
