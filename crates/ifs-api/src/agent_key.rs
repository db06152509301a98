//! `AGENT_API_KEY`: the shared secret of a standalone agent, as llama-server's `--api-key`. The
//! agent, when given one, answers only requests that carry it (`Authorization: Bearer <key>`);
//! the Dialogue Manager sends it with every request to `AGENT_URL`. On Lambda the agent is
//! behind IAM instead, and the key is not used.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::ApiError;

/// The key, and its digest (what each request is compared against). Its `Debug` never shows
/// either, so configuration can be logged.
#[derive(Clone)]
pub struct AgentKey {
    key: Arc<str>,
    digest: [u8; 32],
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(…)")
    }
}

/// What a standalone agent's `GET /health` answers, with or without a key.
pub const HEALTHY: HealthBody = HealthBody { status: "ok" };

/// The health check's body.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HealthBody {
    pub status: &'static str,
}

/// Shortest key accepted: a guessable secret protects nothing.
pub const MIN_KEY_LENGTH: usize = 16;

impl FromStr for AgentKey {
    type Err = String;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        if key.len() < MIN_KEY_LENGTH {
            return Err(format!("must be at least {MIN_KEY_LENGTH} characters"));
        }
        // It travels in a header: printable ASCII without spaces, as tokens are.
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(Self { key: key.into(), digest: sha2::Sha256::digest(key.as_bytes()).into() })
    }
}

impl AgentKey {
    /// The `Authorization` value that carries it.
    #[must_use]
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// Whether `offered` is the key, in time that depends on neither: both are hashed first, so
    /// that neither a shared prefix nor the length shows in how long the answer takes.
    #[must_use]
    pub fn matches(&self, offered: &[u8]) -> bool {
        let offered = sha2::Sha256::digest(offered);
        self.digest.as_slice().ct_eq(offered.as_slice()).into()
    }
}

/// Middleware: a request without `Authorization: Bearer <key>` is refused with 401 in OpenAI's
/// error shape (which is ours with `type` and `param` beside `code` and `message`).
pub async fn require_agent_key(State(key): State<AgentKey>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if key.matches(offered) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "this agent needs its API key: Authorization: Bearer <AGENT_API_KEY>",
    )
    .with("type", "invalid_request_error")
    .with("param", serde_json::Value::Null)
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `router` behind the key, if there is one.
pub fn guarded(router: axum::Router, key: Option<AgentKey>) -> axum::Router {
    match key {
        Some(key) => router.layer(axum::middleware::from_fn_with_state(key, require_agent_key)),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_itself_only_and_short_or_unprintable_keys_are_refused() {
        let key: AgentKey = "s3cret-agent-key-0123".parse().unwrap();
        assert!(key.matches(b"s3cret-agent-key-0123"));
        for wrong in [&b""[..], b"s3cret-agent-key-012", b"s3cret-agent-key-01234", b"S3cret-agent-key-0123"]
        {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert!("short".parse::<AgentKey>().is_err());
        assert!("has a space in it, long enough".parse::<AgentKey>().is_err());
        assert_eq!(format!("{key:?}"), "AgentKey(…)");
    }
}
