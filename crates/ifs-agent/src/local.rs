//! The agent in the same process as the Dialogue Manager: the `Agent` port implemented by calling
//! [`AgentService`] directly, with no HTTP in between; a stream is the engine's own channel.

use std::sync::Arc;

use async_trait::async_trait;
use ifs_api::agent::{Agent, AgentError, AgentEvent, AgentStream, Finished};
use ifs_api::openai::{ChatRequest, ChatResponse};
use ifs_domain::Usage;

use crate::service::{AgentService, BUSY_RETRY_AFTER, ChatError, Streamed, finish_reason};

fn agent_error(error: ChatError) -> AgentError {
    match error {
        ChatError::Busy => AgentError::Busy { retry_after: BUSY_RETRY_AFTER },
        ChatError::Failed(cause) => AgentError::Unavailable(format!("{cause:#}")),
        refused => {
            let api = refused.into_api_error();
            AgentError::Rejected { code: api.code(), message: api.message().to_owned() }
        }
    }
}

/// [`AgentService`] as an [`Agent`].
#[derive(Debug, Clone)]
pub struct LocalAgent(pub Arc<AgentService>);

#[async_trait]
impl Agent for LocalAgent {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        self.0.chat(request).await.map_err(agent_error)
    }

    async fn stream(&self, request: ChatRequest) -> Result<AgentStream, AgentError> {
        let stream = self.0.chat_stream(request).await.map_err(agent_error)?;
        Ok(Box::pin(futures::stream::unfold(stream, |mut stream| async move {
            let event = match stream.next().await? {
                Streamed::Text(text) => Ok(AgentEvent::Delta(text)),
                Streamed::End(Ok(completion)) => Ok(AgentEvent::Finished(Finished {
                    finish_reason: Some(finish_reason(completion.finish).into()),
                    model: stream.model.clone(),
                    usage: Some(Usage::of(completion.prompt_tokens, completion.completion_tokens)),
                    truncated_messages: Some(completion.truncated_messages),
                })),
                Streamed::End(Err(error)) => Err(agent_error(error)),
            };
            Some((event, stream))
        })))
    }

    fn admits(&self) -> Result<(), AgentError> {
        if self.0.admission().has_room() {
            Ok(())
        } else {
            Err(AgentError::Busy { retry_after: crate::service::BUSY_RETRY_AFTER })
        }
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
