//! The ifs-guide agent: an LLM on CPU llama.cpp behind the OpenAI chat-completions contract.
//! [`engine`] runs the model, [`service`] turns requests into generations under admission
//! control, [`router`] serves them over HTTP, and [`local`] hands them to an in-process
//! Dialogue Manager.

pub mod batch;
pub mod config;
pub mod decode;
pub mod engine;
pub mod local;
pub mod router;
pub mod service;
pub mod stop;

pub use config::AgentConfig;
pub use local::LocalAgent;
pub use router::router;
pub use service::AgentService;
