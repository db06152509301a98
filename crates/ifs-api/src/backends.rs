//! Builds the store adapters a process uses from its configuration.

use std::sync::Arc;

use anyhow::Context as _;
use ifs_store::{Counters, DialogueStore, EmbeddedStore, SessionStore, Sweep, UserStore};

use crate::config::StoreConfig;

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
    /// Opens the embedded store in `DATA_DIR`, creating the directory if needed.
    pub fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
        let store = Arc::new(EmbeddedStore::open(&config.data_dir.join(EMBEDDED_FILE))?);
        let description = format!("embedded store {} (users, dialogues, sessions)", store.path().display());
        Ok(Self {
            users: store.clone(),
            dialogues: store.clone(),
            sessions: store.clone(),
            counters: store.clone(),
            sweeper: Some(store),
            description,
        })
    }
}
