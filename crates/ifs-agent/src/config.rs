//! The agent's configuration, from flags or the environment, shared by `ifs-guide serve` and the
//! standalone `agent` binary.

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::Reuse;
use crate::engine::{Engine, EngineSettings};
use crate::service::{AgentService, Limits};
use ifs_admission::Admission;

/// Where the default model lands (`make model`).
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The agent routes' default body limit: 200 messages of 16,000 characters fit unescaped, the
/// default 20-message memory however it is escaped (16,000 × 12-byte escapes × 20 ≈ 3.7 MiB).
pub const DEFAULT_BODY_LIMIT: u32 = 4 * 1024 * 1024;

/// Everything the agent reads at start-up.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// GGUF model file.
    #[arg(long, env = "AGENT_MODEL_PATH", default_value = DEFAULT_MODEL_PATH)]
    pub agent_model_path: PathBuf,
    /// One of llama.cpp's built-in chat templates (chatml, llama2, llama3, …), for models whose
    /// GGUF has none.
    #[arg(long, env = "AGENT_CHAT_TEMPLATE")]
    pub agent_chat_template: Option<String>,
    /// Context size in tokens, capped by the model's training context.
    #[arg(long, env = "AGENT_CTX", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub agent_ctx: u32,
    /// Reply length when a request names none, in tokens.
    #[arg(long, env = "AGENT_MAX_TOKENS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub agent_max_tokens: u32,
    /// Longest reply a request may ask for, in tokens. The Dialogue Manager refuses a longer
    /// `max_tokens` before it stores anything, by the same setting.
    #[arg(long, env = "AGENT_MAX_TOKENS_LIMIT", default_value_t = ifs_api::openai::MAX_TOKENS_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    pub agent_max_tokens_limit: u32,
    /// Largest chat-completions request body, in bytes. The Dialogue Manager sends up to
    /// MEMORY_MESSAGES messages of up to 16,000 characters each, JSON-escaped: the 64 KiB of the
    /// user-facing routes would turn long dialogues away.
    #[arg(long, env = "AGENT_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT, value_parser = clap::value_parser!(u32).range(65_536..=67_108_864))]
    pub agent_body_limit: u32,
    /// Generations decoded together, one batch per step (continuous batching); each has a KV
    /// cache of AGENT_CTX tokens.
    #[arg(long, env = "AGENT_PARALLEL", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub agent_parallel: u32,
    /// Requests that may wait for a turn; beyond that, 503 agent_busy.
    #[arg(long, env = "AGENT_QUEUE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub agent_queue: u32,
    /// Dialogues whose evaluated prompt is kept, so that a prompt beginning like an earlier one
    /// (the dialogue's next turn) evaluates only what is new. The agent has
    /// max(AGENT_PARALLEL, this) sequences of AGENT_CTX tokens each. 0 turns the cache off.
    #[arg(long, env = "AGENT_PROMPT_CACHE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub agent_prompt_cache: u32,
    /// What a next prompt reuses: `exact` (earlier prompts, not their replies: the same reply as
    /// without the cache), `all` (everything, the reply included, as llama-server
    /// does: faster, and a reply may differ from the uncached one), or `auto`: `exact` for a
    /// request at temperature 0 or with a seed, `all` for one sampled at random.
    #[arg(long, env = "AGENT_PROMPT_CACHE_REUSE", value_enum, default_value_t = Reuse::Auto)]
    pub agent_prompt_cache_reuse: Reuse,
    /// CPU threads per generation; 0 means all available cores.
    #[arg(long, env = "AGENT_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=512))]
    pub agent_threads: u32,
}

impl AgentConfig {
    /// Loads the model and builds the service.
    pub fn service(&self) -> anyhow::Result<AgentService> {
        anyhow::ensure!(
            self.agent_max_tokens <= self.agent_max_tokens_limit,
            "AGENT_MAX_TOKENS ({}) must not exceed AGENT_MAX_TOKENS_LIMIT ({})",
            self.agent_max_tokens,
            self.agent_max_tokens_limit
        );
        let threads = match self.agent_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        };
        let engine = Engine::load(&EngineSettings {
            model_path: self.agent_model_path.clone(),
            context: self.agent_ctx,
            threads,
            chat_template: self.agent_chat_template.clone(),
            parallel: self.agent_parallel,
            cached_prompts: self.agent_prompt_cache,
            reuse: self.agent_prompt_cache_reuse,
        })?;
        Ok(AgentService::new(
            Arc::new(engine),
            Admission::new(self.agent_parallel as usize, self.agent_queue as usize),
            Limits {
                default_max_tokens: self.agent_max_tokens,
                max_tokens_limit: self.agent_max_tokens_limit,
                body_limit: self.agent_body_limit as usize,
            },
        ))
    }
}
