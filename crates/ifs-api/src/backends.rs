//! Builds the store adapters a process uses from its configuration.

use std::sync::Arc;

use anyhow::Context as _;
use ifs_store::{Counters, DialogueStore, EmbeddedStore, RedisStore, SessionStore, Sweep, UserStore};

use crate::config::{SessionsBackend, StoreConfig};

/// File name of the embedded store inside `DATA_DIR`.
pub const EMBEDDED_FILE: &str = "ifs-guide.redb";

/// The ports, wired to adapters.
#[derive(Clone)]
pub struct Backends {
    pub users: Arc<dyn UserStore>,
    pub dialogues: Arc<dyn DialogueStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    /// What must be swept of expired sessions and counter windows now and then; `None` where the
    /// backends expire records themselves.
    pub sweeper: Option<Arc<dyn Sweep>>,
    /// What they are, for the start-up banner.
    pub description: String,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Backends {
    /// The backends `config` names: the embedded store in `DATA_DIR` (created if needed) for
    /// users and dialogues, and for sessions and counters unless `SESSIONS=redis`. On Lambda,
    /// where a function's disk does not outlive it, embedded sessions must be asked for by name.
    pub fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
        let sessions = match config.sessions {
            Some(kind) => kind,
            None if on_lambda => anyhow::bail!(
                "SESSIONS must be set on Lambda: `redis` (with REDIS_URL), or `embedded`, which a \
                 function's /tmp does not keep"
            ),
            None => SessionsBackend::Embedded,
        };
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
        let store = Arc::new(EmbeddedStore::open(&config.data_dir.join(EMBEDDED_FILE))?);
        let place = store.path().display().to_string();
        Ok(match sessions {
            SessionsBackend::Embedded => Self {
                users: store.clone(),
                dialogues: store.clone(),
                sessions: store.clone(),
                counters: store.clone(),
                sweeper: Some(store),
                description: format!("embedded store {place} (users, dialogues, sessions)"),
            },
            SessionsBackend::Redis => {
                let url = config.redis_url.as_ref().context("SESSIONS=redis needs REDIS_URL")?;
                let redis = Arc::new(RedisStore::new(url)?);
                let description = format!(
                    "embedded store {place} (users, dialogues); redis {} (sessions, counters)",
                    redis.endpoint()
                );
                Self {
                    users: store.clone(),
                    dialogues: store,
                    sessions: redis.clone(),
                    counters: redis,
                    sweeper: None,
                    description,
                }
            }
        })
    }
}
