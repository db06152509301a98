//! The local ifs-guide server: every function's router merged into one process on the embedded
//! store, with the agent in-process too unless `AGENT_URL` points elsewhere — the same handlers
//! that run as separate Lambdas in AWS, with no second implementation.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use ifs_agent::service::PromptObserver;
use ifs_agent::{AgentConfig, LocalAgent};
use ifs_api::agent::{Agent, HttpAgent};
use ifs_api::backends::{Backends, TableCheck};
use ifs_api::config::{DialogueConfig, DynamoConfig, StoreBackend, StoreConfig, TokenConfig};
use ifs_api::server::ServerConfig;
use ifs_auth::{Authenticator, PasswordHasher, TokenIssuer, TokenVerifier};
use ifs_domain::AuditReport;
use ifs_domain::{Clock, SystemClock};
use ifs_store::{Audit, Sweep, Swept};
use tokio::net::TcpListener;

pub mod openapi;
pub mod web;

/// `ifs-guide`: run ifs-guide locally.
#[derive(Debug, clap::Parser)]
#[command(name = "ifs-guide", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve every endpoint (auth, dialogues, agent) in this process, on the embedded store
    /// unless STORE / SESSIONS name others.
    Serve(Box<ServeArgs>),
    /// Create the DynamoDB table and its index (TABLE_NAME, DYNAMODB_ENDPOINT) if missing.
    CreateTable(DynamoConfig),
    /// Print the OpenAPI 3.1 document of the whole API (what openapi.json holds).
    Openapi,
    /// Walk every dialogue in the store and report each broken link, gap, fork, orphan or
    /// summary that disagrees with its list, and deletions left unfinished (finished with
    /// --repair-deletions); exit 1 if there is a finding, 2 if the store cannot be read.
    Check(CheckArgs),
    /// Print the safety counters: screened turns by day, level and screener, without anything
    /// that names a person (docs/safety.md).
    SafetyReport(SafetyReportArgs),
    /// Write the chat page's files as a static host serves them (index.html, assets/<version>/…)
    /// into DIR, for `make web-deploy`; prints each with its content type and cache policy.
    WebExport {
        /// Where to write them; created if missing.
        dir: std::path::PathBuf,
    },
}

/// Which store of users and dialogues a command reads.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The store of users and dialogues: `embedded` (in DATA_DIR) or `dynamodb` (TABLE_NAME).
    #[arg(long, env = "STORE", value_enum, default_value = "embedded")]
    pub store: StoreBackend,
    /// Directory of the embedded store.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    #[command(flatten)]
    pub dynamodb: DynamoConfig,
}

/// What `safety-report` reads.
#[derive(Debug, Clone, clap::Args)]
pub struct SafetyReportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The first day (UTC, YYYY-MM-DD) to report; 30 days ago unless given.
    #[arg(long)]
    pub since: Option<chrono::NaiveDate>,
}

/// Which store `check` reads.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// First finish every deletion that was interrupted (a dialogue hidden, its messages not
    /// all deleted yet); without it they are only reported.
    #[arg(long)]
    pub repair_deletions: bool,
}

/// What `check` read and found.
#[derive(Debug)]
pub struct Checked {
    /// The store, in words.
    pub store: String,
    /// Interrupted deletions finished before the audit (with `--repair-deletions`).
    pub finished: u64,
    pub report: AuditReport,
}

/// Everything `serve` reads; each flag can also be set through the environment variable named.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:3000")]
    pub bind_addr: SocketAddr,
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub tokens: TokenConfig,
    #[command(flatten)]
    pub dialogue: DialogueConfig,
    /// The in-process agent, used when AGENT_URL is unset.
    #[command(flatten)]
    pub agent: AgentConfig,
}

/// How often the embedded store is swept of expired sessions and counter windows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Records deleted per sweep transaction, so that a large backlog never holds the writer long.
const SWEEP_BATCH: usize = 1000;

/// The assembled application and a description of what it runs on.
pub struct App {
    pub router: Router,
    /// Lines for the start-up banner: which backends, which agent, where the keys are, limits.
    pub backends: Vec<String>,
    /// How connections are treated.
    pub server: ServerConfig,
    /// What to sweep of expired records while serving.
    pub sweeper: Option<Arc<dyn Sweep>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("backends", &self.backends).finish_non_exhaustive()
    }
}

/// Opens the store, loads or creates keys, sets up the agent (in-process unless `AGENT_URL` is
/// set), and merges every function's router.
pub async fn build(args: &ServeArgs) -> anyhow::Result<App> {
    build_observed(args, None).await
}

/// [`build`], with `observer` receiving every prompt the in-process model is given.
pub async fn build_observed(args: &ServeArgs, observer: Option<PromptObserver>) -> anyhow::Result<App> {
    let (agent, agent_routes): (Arc<dyn Agent>, Option<Router>) = match &args.dialogue.agent_url {
        Some(url) => (
            Arc::new(
                HttpAgent::new(url.clone(), args.dialogue.agent_timeout())?
                    .with_key(args.dialogue.agent_api_key.clone()),
            ),
            None,
        ),
        None => {
            let mut service = args.agent.service()?;
            if let Some(observer) = observer {
                service = service.observing_prompts(observer);
            }
            let service = Arc::new(service);
            // The agent's own routes, which serve mounts too, take the same key as a standalone
            // agent would; the Dialogue Manager calls the model in-process, without one.
            let routes = ifs_api::agent_key::guarded(
                ifs_agent::router(service.clone()),
                args.dialogue.agent_api_key.clone(),
            );
            (Arc::new(LocalAgent(service)), Some(routes))
        }
    };
    let backends = Backends::open(&args.store, TableCheck::CreateLocally).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let data_dir = args.store.data_dir.as_path();
    let keys = args.tokens.signing_keys(Some(data_dir))?;
    let public = match &args.tokens.jwt_public_key {
        Some(_) => args.tokens.public_key(Some(data_dir))?,
        None => keys.public.clone(),
    };
    let settings = args.tokens.settings();
    let auth =
        Authenticator::new(TokenVerifier::new(public, &settings), backends.sessions.clone(), clock.clone());
    let hasher = PasswordHasher::new()?;
    let key_source = if args.tokens.jwt_private_key.is_some() {
        "JWT_PRIVATE_KEY".to_owned()
    } else {
        format!("generated, kept in {}", data_dir.display())
    };
    let described = vec![
        format!("store:  {}", backends.description),
        format!("agent:  {}", agent.describe()),
        format!("tokens: Ed25519 key {key_source}"),
        args.server.describe(),
    ];

    let router = Router::new()
        .merge(ifs_signup::router(ifs_signup::SignupState {
            users: backends.users.clone(),
            hasher: hasher.clone(),
            clock: clock.clone(),
        }))
        .merge(ifs_login::router(ifs_login::LoginState {
            users: backends.users.clone(),
            sessions: backends.sessions.clone(),
            counters: backends.counters.clone(),
            hasher: hasher.clone(),
            issuer: Arc::new(TokenIssuer::new(keys, settings)),
            clock: clock.clone(),
            throttle: ifs_login::Throttle::default(),
        }))
        .merge(ifs_me::router(ifs_me::MeState {
            auth: auth.clone(),
            users: backends.users.clone(),
            dialogues: backends.dialogues.clone(),
            sessions: backends.sessions.clone(),
            counters: backends.counters.clone(),
            hasher: hasher.clone(),
            clock: clock.clone(),
            throttle: ifs_login::Throttle::default(),
            daily_token_limit: args.dialogue.quota.daily_token_limit,
        }))
        .merge(ifs_logout::router(ifs_logout::LogoutState {
            auth: auth.clone(),
            sessions: backends.sessions.clone(),
        }))
        .merge(ifs_dialogue::router(ifs_dialogue::DialogueState {
            auth: auth.clone(),
            dialogues: backends.dialogues.clone(),
            users: backends.users.clone(),
            counters: backends.counters.clone(),
            agent,
            screener: ifs_dialogue::screener(&args.dialogue.safety)?,
            safety_counts: backends.safety.clone(),
            settings: Arc::new(ifs_dialogue::DialogueSettings::new(
                &args.dialogue,
                args.agent.agent_max_tokens_limit,
            )),
            clock,
        }))
        .merge(ifs_dialogues::router(ifs_dialogues::DialoguesState {
            auth: auth.clone(),
            dialogues: backends.dialogues.clone(),
        }))
        .merge(ifs_messages::router(ifs_messages::MessagesState { auth, dialogues: backends.dialogues }))
        .merge(openapi::router(agent_routes.is_some()))
        .merge(web::router())
        .merge(agent_routes.unwrap_or_default());
    Ok(App {
        router: ifs_api::http::edge(router),
        backends: described,
        server: args.server.clone(),
        sweeper: backends.sweeper,
    })
}

/// Creates the DynamoDB table if it is missing; says which it was.
pub async fn create_table(config: &DynamoConfig) -> anyhow::Result<String> {
    let store = ifs_api::backends::open_dynamo(config, TableCheck::Trust).await?;
    let created = store.create_table().await?;
    let place = config.endpoint().unwrap_or_else(|| "AWS".to_owned());
    Ok(if created {
        format!("created table {} at {place}", store.table())
    } else {
        format!("table {} at {place} exists already", store.table())
    })
}

/// Audits every dialogue of the store `args` names, after finishing interrupted deletions if
/// asked to. The store must exist: `check` never creates one.
pub async fn check(args: &CheckArgs) -> anyhow::Result<Checked> {
    let opened = open_existing(&args.store).await?;
    let finished = if args.repair_deletions { opened.audit.finish_deletions().await? } else { 0 };
    Ok(Checked { store: opened.described, finished, report: opened.audit.audit().await? })
}

/// The safety counters from `args.since` (30 days ago by default) on, and where they were read.
pub async fn safety_report(
    args: &SafetyReportArgs,
) -> anyhow::Result<(String, chrono::NaiveDate, Vec<ifs_store::SafetyCount>)> {
    let since = args.since.unwrap_or_else(|| (chrono::Utc::now() - chrono::Duration::days(30)).date_naive());
    let opened = open_existing(&args.store).await?;
    Ok((opened.described, since, opened.safety.screenings(since).await?))
}

/// The store of users and dialogues, which must exist, as the maintenance commands read it.
struct Opened {
    audit: Arc<dyn Audit>,
    safety: Arc<dyn ifs_store::SafetyCounts>,
    described: String,
}

async fn open_existing(args: &StoreArgs) -> anyhow::Result<Opened> {
    Ok(match args.store {
        StoreBackend::Embedded => {
            let path = args.data_dir.join(ifs_api::backends::EMBEDDED_FILE);
            anyhow::ensure!(path.is_file(), "no embedded store at {} (DATA_DIR)", path.display());
            let store = Arc::new(ifs_store::EmbeddedStore::open(&path).with_context(|| {
                "redb lets one process open a store: stop `ifs-guide serve` on it first".to_owned()
            })?);
            Opened {
                audit: store.clone(),
                safety: store,
                described: format!("embedded store {}", path.display()),
            }
        }
        StoreBackend::Dynamodb => {
            let store = ifs_api::backends::open_dynamo(&args.dynamodb, TableCheck::Trust).await?;
            anyhow::ensure!(
                store.table_exists().await?,
                "the DynamoDB table {} (TABLE_NAME) does not exist",
                store.table()
            );
            let place = args.dynamodb.endpoint().unwrap_or_else(|| "AWS".to_owned());
            let described = format!("dynamodb table {} at {place}", store.table());
            let store = Arc::new(store);
            Opened { audit: store.clone(), safety: store, described }
        }
    })
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// within `SHUTDOWN_TIMEOUT`. Sweeps expired records meanwhile, where the store needs it.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeping = app.sweeper.map(|sweeper| tokio::spawn(sweep_periodically(sweeper)));
    let served = ifs_api::server::serve(listener, app.router, &app.server, shutdown).await;
    if let Some(task) = sweeping {
        task.abort();
    }
    served.context("serving HTTP")
}

/// Deletes expired sessions and counter windows every [`SWEEP_INTERVAL`], starting at once.
async fn sweep_periodically(sweeper: Arc<dyn Sweep>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticks.tick().await;
        let mut total = Swept::default();
        loop {
            match sweeper.sweep_expired(chrono::Utc::now(), SWEEP_BATCH).await {
                Ok(swept) => {
                    total.sessions += swept.sessions;
                    total.windows += swept.windows;
                    if swept.sessions < SWEEP_BATCH && swept.windows < SWEEP_BATCH {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = ?error, "sweeping expired records failed");
                    break;
                }
            }
        }
        if total != Swept::default() {
            tracing::info!(sessions = total.sessions, windows = total.windows, "swept expired records");
        }
    }
}
