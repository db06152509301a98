//! Configuration, read once at start-up from the environment (and, for the local binary, flags).
//! Each group is a `clap::Args` so the local binary and every Lambda `main` share one definition,
//! one default and one error message per variable. Invalid values stop the process at start-up
//! with a message naming the variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ifs_auth::{JwtKeys, PublicKey, TokenSettings};
use reqwest::Url;
use secrecy::{ExposeSecret as _, SecretString};

/// The persona sent as the system message when `SYSTEM_PROMPT` is unset.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are IFS Guide, a warm and careful companion for self-exploration \
in the spirit of Internal Family Systems. You help the person notice their parts, get curious about them \
and listen to what they need, one gentle question at a time. You are not a therapist and do not diagnose \
or treat; if someone may be in danger, encourage them to contact local emergency services or a crisis line.";

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(raw.into())
}

/// PEMs often arrive through one-line settings with literal `\n`s; accept both forms.
fn unescape_pem(raw: &str) -> String {
    raw.trim().replace("\\n", "\n")
}

/// Access tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenConfig {
    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens; only the auth functions need it.
    /// Locally, when unset, a key pair is generated once and kept in DATA_DIR.
    #[arg(long, env = "JWT_PRIVATE_KEY", hide_env_values = true, value_parser = secret)]
    pub jwt_private_key: Option<SecretString>,
    /// Ed25519 public key (SPKI PEM) that verifies access tokens; derived from the private key when unset.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// `iss` claim written and required.
    #[arg(long, env = "JWT_ISSUER", default_value = "ifs-guide")]
    pub jwt_issuer: String,
    /// `aud` claim written and required.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "ifs-guide")]
    pub jwt_audience: String,
    /// Lifetime of an access token and its session, in seconds (60 to 2592000).
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(60..=2_592_000))]
    pub access_token_ttl: u32,
}

impl TokenConfig {
    #[must_use]
    pub fn settings(&self) -> TokenSettings {
        TokenSettings {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            ttl: chrono::Duration::seconds(self.access_token_ttl.into()),
        }
    }

    /// The signing keys: from `JWT_PRIVATE_KEY`, else (locally) kept in `local_dir`.
    pub fn signing_keys(&self, local_dir: Option<&Path>) -> anyhow::Result<JwtKeys> {
        match (&self.jwt_private_key, local_dir) {
            (Some(pem), _) => JwtKeys::from_private_pem(&unescape_pem(pem.expose_secret()).into())
                .context("JWT_PRIVATE_KEY is not an Ed25519 private key in PKCS#8 PEM"),
            (None, Some(dir)) => JwtKeys::load_or_create_in(dir),
            (None, None) => anyhow::bail!("JWT_PRIVATE_KEY must be set (Ed25519, PKCS#8 PEM)"),
        }
    }

    /// The verifying key: `JWT_PUBLIC_KEY`, else derived from the signing keys.
    pub fn public_key(&self, local_dir: Option<&Path>) -> anyhow::Result<PublicKey> {
        match &self.jwt_public_key {
            Some(pem) => PublicKey::from_pem(&unescape_pem(pem))
                .context("JWT_PUBLIC_KEY is not an Ed25519 public key in SPKI PEM"),
            None if self.jwt_private_key.is_some() || local_dir.is_some() => {
                Ok(self.signing_keys(local_dir)?.public)
            }
            None => anyhow::bail!("JWT_PUBLIC_KEY must be set (Ed25519, SPKI PEM)"),
        }
    }
}

/// The budget of agent tokens each user has per day.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct QuotaConfig {
    /// Agent tokens (prompt + completion, as the agent reports them) one user's turns may use per
    /// UTC day; past it a turn is refused (429 quota_exceeded) until midnight UTC. 0 turns the
    /// quota off.
    #[arg(long, env = "DAILY_TOKEN_LIMIT", default_value_t = DEFAULT_DAILY_TOKEN_LIMIT)]
    pub daily_token_limit: u32,
}

/// About 150 turns of the bundled model with its default memory: a day of heavy use, while a
/// script sending turns around the clock stops within hours.
pub const DEFAULT_DAILY_TOKEN_LIMIT: u32 = 300_000;

/// The Dialogue Manager's conversation with the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct DialogueConfig {
    /// Full URL of an OpenAI-compatible chat-completions endpoint, e.g.
    /// http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long, env = "AGENT_URL")]
    pub agent_url: Option<Url>,
    /// The key AGENT_URL's agent was started with (its AGENT_API_KEY, or llama-server's
    /// --api-key), sent as `Authorization: Bearer …`; at least 16 printable characters.
    #[arg(long, env = "AGENT_API_KEY", hide_env_values = true)]
    pub agent_api_key: Option<crate::agent_key::AgentKey>,
    /// Model name sent in each request to AGENT_URL.
    #[arg(long, env = "AGENT_MODEL", default_value = "ifs-guide")]
    pub agent_model: String,
    /// Seconds to wait for the agent's reply before answering 504 (1 to 900).
    #[arg(long, env = "AGENT_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=900))]
    pub agent_timeout: u64,
    /// The persona sent to the agent as the system message.
    #[arg(long, env = "SYSTEM_PROMPT", default_value = DEFAULT_SYSTEM_PROMPT, hide_default_value = true)]
    pub system_prompt: String,
    /// How many of the most recent messages go to the agent as memory (0 to 200).
    #[arg(long, env = "MEMORY_MESSAGES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=200))]
    pub memory_messages: u32,
    /// Dialogue turns one user may send per minute; beyond that, 429 (1 to 100000).
    #[arg(long, env = "DIALOGUE_RATE_LIMIT", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub dialogue_rate_limit: u32,
    /// Turns of one user answered at once; beyond that, 429 before the message is stored
    /// (1 to 64). One account must not take every generation slot.
    #[arg(long, env = "DIALOGUE_CONCURRENT_TURNS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub dialogue_concurrent_turns: u32,
    #[command(flatten)]
    pub quota: QuotaConfig,
    #[command(flatten)]
    pub safety: SafetyConfig,
}

/// The optional safety classifier beside the built-in phrase list (docs/safety.md).
#[derive(Debug, Clone, clap::Args)]
pub struct SafetyConfig {
    /// Full URL of an OpenAI-compatible chat-completions endpoint serving a guard model (Llama
    /// Guard 3 under llama-server, for example); unset, the built-in phrase list screens alone.
    /// It can only raise a turn's level; when it is down the built-in list decides (fail open).
    #[arg(long, env = "SAFETY_URL")]
    pub safety_url: Option<Url>,
    /// Model name sent to SAFETY_URL.
    #[arg(long, env = "SAFETY_MODEL", default_value = "llama-guard")]
    pub safety_model: String,
    /// Milliseconds a screening waits for SAFETY_URL before the built-in list decides alone
    /// (50 to 10000).
    #[arg(long, env = "SAFETY_TIMEOUT_MS", default_value_t = 1500,
          value_parser = clap::value_parser!(u64).range(50..=10_000))]
    pub safety_timeout_ms: u64,
}

impl DialogueConfig {
    #[must_use]
    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout)
    }
}

/// Where data lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// Directory of the embedded store (and, locally, the generated token keys).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Most memory the embedded store keeps of its file, in MiB (1 to 65536); more makes reads
    /// of a large store faster, and the process grows to it as the store does.
    #[arg(long, env = "EMBEDDED_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub embedded_cache_mb: u32,
    /// Where users and dialogues live: `embedded` (in DATA_DIR) or `dynamodb` (TABLE_NAME).
    /// Locally the default is `embedded`; on Lambda it must be named.
    #[arg(long, env = "STORE", value_enum)]
    pub store: Option<StoreBackend>,
    /// Where sessions and the login and turn counters live: `embedded` (in DATA_DIR) or `redis`
    /// (REDIS_URL). Locally the default is `embedded`; on Lambda it must be named.
    #[arg(long, env = "SESSIONS", value_enum)]
    pub sessions: Option<SessionsBackend>,
    /// Redis for SESSIONS=redis: redis://host:port or, with TLS (ElastiCache Serverless),
    /// rediss://host:port; a password goes in the URL.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<SecretString>,
    /// PEM file of the certificate authority that signed a rediss:// server's certificate, when
    /// the public roots do not vouch for it (ElastiCache's certificates need none).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub dynamodb: DynamoConfig,
}

impl StoreConfig {
    /// `EMBEDDED_CACHE_MB` in bytes.
    #[must_use]
    pub fn embedded_cache_bytes(&self) -> usize {
        self.embedded_cache_mb as usize * 1024 * 1024
    }
}

/// The DynamoDB table.
#[derive(Debug, Clone, clap::Args)]
pub struct DynamoConfig {
    /// The table of users and dialogues (STORE=dynamodb).
    #[arg(long, env = "TABLE_NAME", default_value = "ifs-guide")]
    pub table_name: String,
    /// A DynamoDB endpoint to use instead of AWS's, e.g. DynamoDB Local at
    /// http://127.0.0.1:8000; unset, the default AWS credential and region chain applies.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<Url>,
}

impl DynamoConfig {
    /// The endpoint without the trailing slash that `Url` adds.
    #[must_use]
    pub fn endpoint(&self) -> Option<String> {
        self.dynamodb_endpoint.as_ref().map(|url| url.as_str().trim_end_matches('/').to_owned())
    }
}

/// The backends for users and dialogues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreBackend {
    Embedded,
    Dynamodb,
}

/// The backends for sessions and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SessionsBackend {
    Embedded,
    Redis,
}
