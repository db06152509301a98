//! HTTP glue shared by every ifs-guide endpoint: the one error type, extractors, the middleware
//! stack at the edge, configuration read from the environment, the agent port and its HTTP
//! client, backend wiring, the Lambda runner and the hardened HTTP server for local processes. Endpoint logic lives in `functions/*`.

pub mod agent;
pub mod agent_key;
pub mod backends;
pub mod config;
pub mod error;
pub mod export;
pub mod extract;
pub mod http;
pub mod lambda;
pub mod logs;
pub mod openai;
pub mod openapi;
pub mod route;
pub mod server;
pub mod sse;
#[cfg(feature = "testing")]
pub mod testing;
pub mod views;

pub use error::ApiError;
pub use extract::{AuthUser, Json, keep_if_signed_in};
pub use route::Route;
