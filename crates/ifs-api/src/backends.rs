//! Builds the store adapters a process uses from its configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use ifs_store::{
    Counters, DialogueStore, DynamoStore, EmbeddedStore, RedisStore, SafetyCounts, SessionStore, Sweep,
    UserStore,
};

use crate::config::{DynamoConfig, SessionsBackend, StoreBackend, StoreConfig};

/// File name of the embedded store inside `DATA_DIR`.
pub const EMBEDDED_FILE: &str = "ifs-guide.redb";

/// The ports, wired to adapters.
#[derive(Clone)]
pub struct Backends {
    pub users: Arc<dyn UserStore>,
    pub dialogues: Arc<dyn DialogueStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    /// The safety counters, beside the dialogues.
    pub safety: Arc<dyn SafetyCounts>,
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

/// What to do about a missing DynamoDB table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCheck {
    /// Nothing: the deployment made it (Lambda; no extra call at each cold start).
    Trust,
    /// Create it when missing if `DYNAMODB_ENDPOINT` is set (DynamoDB Local), otherwise fail
    /// naming it (`ifs-guide serve`).
    CreateLocally,
}

impl Backends {
    /// Everything in the embedded store in `data_dir`, created if needed.
    pub fn embedded(data_dir: &Path) -> anyhow::Result<Self> {
        Self::embedded_with_cache(data_dir, ifs_store::embedded::DEFAULT_CACHE_BYTES)
    }

    /// [`embedded`](Self::embedded) with a page cache of at most `cache_bytes`.
    pub fn embedded_with_cache(data_dir: &Path, cache_bytes: usize) -> anyhow::Result<Self> {
        let store = open_embedded(data_dir, cache_bytes)?;
        let description = format!("embedded store {} (users, dialogues, sessions)", store.path().display());
        Ok(Self {
            users: store.clone(),
            dialogues: store.clone(),
            sessions: store.clone(),
            counters: store.clone(),
            safety: store.clone(),
            sweeper: Some(store),
            description,
        })
    }

    /// The backends `config` names: `STORE` for users and dialogues, `SESSIONS` for sessions and
    /// counters, each `embedded` unless named otherwise. On Lambda, where a function's disk does
    /// not outlive it, the embedded store must be asked for by name.
    pub async fn open(config: &StoreConfig, check: TableCheck) -> anyhow::Result<Self> {
        let store = store_backend(config)?;
        let sessions = match config.sessions {
            Some(kind) => kind,
            None if on_lambda() => return Err(unnamed_on_lambda("SESSIONS", "redis")),
            None => SessionsBackend::Embedded,
        };
        if (store, sessions) == (StoreBackend::Embedded, SessionsBackend::Embedded) {
            return Self::embedded_with_cache(&config.data_dir, config.embedded_cache_bytes());
        }
        let embedded = if store == StoreBackend::Embedded || sessions == SessionsBackend::Embedded {
            Some(open_embedded(&config.data_dir, config.embedded_cache_bytes())?)
        } else {
            None
        };
        let mut described = Vec::new();
        type Durable = (Arc<dyn UserStore>, Arc<dyn DialogueStore>, Arc<dyn SafetyCounts>);
        let (users, dialogues, safety): Durable = match (store, &embedded) {
            (StoreBackend::Embedded, Some(local)) => {
                described.push(format!("embedded store {} (users, dialogues)", local.path().display()));
                (local.clone(), local.clone(), local.clone())
            }
            _ => {
                let dynamo = Arc::new(open_dynamo(&config.dynamodb, check).await?);
                let place = config.dynamodb.endpoint().unwrap_or_else(|| "AWS".to_owned());
                described.push(format!("dynamodb table {} at {place} (users, dialogues)", dynamo.table()));
                (dynamo.clone(), dynamo.clone(), dynamo)
            }
        };
        let mut sweeper: Option<Arc<dyn Sweep>> = None;
        let (sessions, counters): (Arc<dyn SessionStore>, Arc<dyn Counters>) = match (sessions, embedded) {
            (SessionsBackend::Embedded, Some(local)) => {
                described.push(format!("embedded store {} (sessions, counters)", local.path().display()));
                sweeper = Some(local.clone());
                (local.clone(), local)
            }
            _ => {
                let url = config.redis_url.as_ref().context("SESSIONS=redis needs REDIS_URL")?;
                let redis = Arc::new(match &config.redis_ca_file {
                    Some(path) => {
                        let ca = std::fs::read(path)
                            .with_context(|| format!("reading REDIS_CA_FILE {}", path.display()))?;
                        RedisStore::with_ca(url, ca)?
                    }
                    None => RedisStore::new(url)?,
                });
                described.push(format!("{} (sessions, counters)", redis.endpoint()));
                (redis.clone(), redis)
            }
        };
        Ok(Self { users, dialogues, sessions, counters, safety, sweeper, description: described.join("; ") })
    }
}

/// The users' store alone (`STORE`), for a function that checks no sessions (sign-up): it needs
/// neither `SESSIONS` nor a way to Redis.
pub async fn open_users(config: &StoreConfig, check: TableCheck) -> anyhow::Result<Arc<dyn UserStore>> {
    Ok(match store_backend(config)? {
        StoreBackend::Embedded => open_embedded(&config.data_dir, config.embedded_cache_bytes())?,
        StoreBackend::Dynamodb => Arc::new(open_dynamo(&config.dynamodb, check).await?),
    })
}

fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

fn unnamed_on_lambda(variable: &str, durable: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{variable} must be set on Lambda: `{durable}`, or `embedded`, which a function's /tmp does not keep"
    )
}

/// `STORE`, which on Lambda must be named.
fn store_backend(config: &StoreConfig) -> anyhow::Result<StoreBackend> {
    match config.store {
        Some(kind) => Ok(kind),
        None if on_lambda() => Err(unnamed_on_lambda("STORE", "dynamodb")),
        None => Ok(StoreBackend::Embedded),
    }
}

fn open_embedded(data_dir: &Path, cache_bytes: usize) -> anyhow::Result<Arc<EmbeddedStore>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating DATA_DIR {}", data_dir.display()))?;
    Ok(Arc::new(EmbeddedStore::open_with_cache(&data_dir.join(EMBEDDED_FILE), cache_bytes)?))
}

/// The DynamoDB store on `config`'s table, checked as `check` says.
pub async fn open_dynamo(config: &DynamoConfig, check: TableCheck) -> anyhow::Result<DynamoStore> {
    let endpoint = config.endpoint();
    let store = DynamoStore::connect(&config.table_name, endpoint.as_deref()).await;
    if check == TableCheck::CreateLocally && !store.table_exists().await.map_err(anyhow::Error::new)? {
        anyhow::ensure!(
            endpoint.is_some(),
            "the DynamoDB table {} (TABLE_NAME) does not exist: deploy the stack, or create it with \
             `ifs-guide create-table`",
            config.table_name
        );
        store.create_table().await.map_err(anyhow::Error::new)?;
    }
    Ok(store)
}
