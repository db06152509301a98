//! The embedded adapter: every port in one redb file, for running on a laptop with nothing else
//! installed. Transactions are ACID and serialised for writers, which makes appends race-free.
//! Key layouts are private to this module.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use ifs_domain::{
    AuditReport, DialogueCursor, DialogueId, DialogueSummary, Email, FORK_MAX_MESSAGES, Fork, ForkOrigin,
    Limit, Message, MessageCursor, MessageId, NewMessage, Page, PageFill, RegenerateRefusal, ReplyVersion,
    SessionId, StoredDialogue, StoredLink, Timestamp, UserId,
};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    Audit, Counter, Counters, DialogueStore, SafetyCount, SafetyCounts, Session, SessionStore, StoreError,
    StoreResult, Sweep, Swept, UserRecord, UserStore, Window,
};

mod layout;

use layout::{decode_message, decode_session, encode_message, encode_session};

/// user id → `UserRecord` (JSON).
const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
/// normalised email → user id; the uniqueness constraint on emails.
const USER_EMAILS: TableDefinition<&str, &[u8]> = TableDefinition::new("user_emails");
/// session id → `Session` (binary, see `layout`; JSON from earlier versions still reads).
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// expiry (ms, big-endian) ‖ session id → nothing: what the sweep deletes, oldest first.
const SESSION_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("session_expiry");
/// user id ‖ session id → nothing: a user's sessions, so that all can be revoked at once.
const USER_SESSIONS: TableDefinition<&[u8], ()> = TableDefinition::new("user_sessions");
/// counter key → `Window` (JSON).
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
/// window end (ms, big-endian) ‖ counter key → nothing: what the sweep deletes, oldest first.
const COUNTER_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("counter_expiry");
/// Failure windows of earlier versions, keyed by email and never deleted; dropped at open.
const LEGACY_LOGIN_FAILURES: &str = "login_failures";
/// dialogue id ‖ seq (big-endian) → `StoredMessage` (binary, see `layout`): a dialogue's
/// messages are contiguous and in list order, so pages and "the last n" are range scans.
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// dialogue id ‖ seq ‖ version (big-endian) → `ReplyVersion` (JSON): a reply's earlier versions,
/// read only when asked for.
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reply_versions");
/// owner ‖ (u64::MAX − updated ms) ‖ dialogue id → nothing: the owner's dialogues, newest first.
const DIALOGUES_BY_OWNER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dialogues_by_owner");

/// day | level rank | level | screener → how many turns were screened so (see
/// [`SafetyCounts`]); a range scan from a day lists every count since.
const SAFETY_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("safety_counts");

/// A message as kept here: the head of a dialogue also carries the dialogue's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMessage {
    message: Message,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    summary: Option<DialogueSummary>,
}

fn message_key(dialogue: DialogueId, seq: u64) -> [u8; 24] {
    let mut key = [0; 24];
    key[..16].copy_from_slice(dialogue.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn version_key(dialogue: DialogueId, seq: u64, version: u32) -> [u8; 28] {
    let mut key = [0; 28];
    key[..24].copy_from_slice(&message_key(dialogue, seq));
    key[24..].copy_from_slice(&version.to_be_bytes());
    key
}

fn owner_key(owner: UserId, updated_at_ms: i64, dialogue: DialogueId) -> [u8; 40] {
    let newest_first = u64::MAX - u64::try_from(updated_at_ms).unwrap_or(0);
    let mut key = [0; 40];
    key[..16].copy_from_slice(owner.as_bytes());
    key[16..24].copy_from_slice(&newest_first.to_be_bytes());
    key[24..].copy_from_slice(dialogue.as_bytes());
    key
}

fn summary_key(summary: &DialogueSummary) -> [u8; 40] {
    owner_key(summary.owner, summary.updated_at.timestamp_millis(), summary.id)
}

fn encode<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(value).context("encoding a record")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).context("decoding a stored record")
}

/// An expiry-index key: the instant first, so that a range scan finds everything expired by now.
fn expiry_key(at: Timestamp, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + suffix.len());
    key.extend_from_slice(&u64::try_from(at.timestamp_millis()).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

/// Keys of up to `batch` entries of an expiry index that expired at or before `now`.
fn expired_keys(
    index: &impl ReadableTable<&'static [u8], ()>,
    now: Timestamp,
    batch: usize,
) -> StoreResult<Vec<Vec<u8>>> {
    let after_now = u64::try_from(now.timestamp_millis()).unwrap_or(0).saturating_add(1).to_be_bytes();
    let mut keys = Vec::new();
    for entry in index.range::<&[u8]>(..after_now.as_slice()).context("scanning an expiry index")?.take(batch)
    {
        keys.push(entry.context("scanning an expiry index")?.0.value().to_vec());
    }
    Ok(keys)
}

fn user_session_key(user: UserId, session: SessionId) -> [u8; 32] {
    let mut key = [0; 32];
    key[..16].copy_from_slice(user.as_bytes());
    key[16..].copy_from_slice(session.as_bytes());
    key
}

/// Files under their user the sessions of a store written before sessions were indexed by
/// user, once: afterwards every session is indexed as it is created.
fn index_user_sessions(txn: &WriteTransaction) -> anyhow::Result<()> {
    let mut index = txn.open_table(USER_SESSIONS)?;
    if !index.is_empty()? {
        return Ok(());
    }
    let sessions = txn.open_table(SESSIONS)?;
    for entry in sessions.iter()? {
        let (_, value) = entry?;
        let session = decode_session(value.value())?;
        index.insert(user_session_key(session.user_id, session.id).as_slice(), ())?;
    }
    Ok(())
}

/// The embedded store's page cache unless configured (`EMBEDDED_CACHE_MB`).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Users remembered by id at most; when full, the memory starts afresh.
const USER_CACHE: usize = 10_000;

/// The leases on one counter: each holder and when its lease ends.
type Leases = Vec<(String, Timestamp)>;

/// All ports in one redb database file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Users by id, as read. A user record never changes once written, a deleted one is
    /// forgotten here as it is deleted, and this process is the file's only writer (redb locks
    /// it), so a remembered record is the stored one; every `/me` read one. Sessions are never remembered: a logout
    /// must take effect at once, however many processes serve.
    users: Arc<Mutex<HashMap<UserId, UserRecord>>>,
    /// Leases by counter: holder and expiry. Kept in memory, not in the file: a lease stands for
    /// work under way in this process (the file's only user), which ends with it.
    leases: Arc<Mutex<HashMap<String, Leases>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path` and makes sure every table exists, with a page
    /// cache of [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open) with a page cache of at most `cache_bytes`. redb's own default, 1 GiB,
    /// let a local server's memory grow with its data file for as long as the file grew.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> anyhow::Result<Self> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .with_context(|| format!("opening the embedded store at {}", path.display()))?;
        let txn = db.begin_write().context("starting the schema transaction")?;
        txn.open_table(USERS)?;
        txn.open_table(USER_EMAILS)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(SESSION_EXPIRY)?;
        index_user_sessions(&txn)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(COUNTER_EXPIRY)?;
        txn.delete_table(TableDefinition::<&str, &[u8]>::new(LEGACY_LOGIN_FAILURES))
            .context("dropping the legacy login_failures table")?;
        txn.open_table(MESSAGES)?;
        txn.open_table(DIALOGUES_BY_OWNER)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(SAFETY_COUNTS)?;
        txn.commit().context("creating the tables")?;
        Ok(Self { db: Arc::new(db), path: path.to_owned(), users: Arc::default(), leases: Arc::default() })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a bounded read transaction (a few records, or one page) on the calling task. Such a
    /// read takes microseconds — its pages come from redb's cache or the OS page cache, and
    /// readers never wait for the writer — while the hop to the blocking pool and back cost more
    /// than the read and woke two threads per request (measured in docs/benchmarks.md).
    fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&ReadTransaction) -> StoreResult<T>,
    {
        let txn = self.db.begin_read().context("starting a read transaction")?;
        work(&txn)
    }

    /// Keeps `user` for the next `user_by_id`; when full, the memory starts afresh.
    fn remember(&self, user: &UserRecord) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.len() >= USER_CACHE {
            users.clear();
        }
        users.insert(user.id, user.clone());
    }

    /// Runs a read transaction of unbounded size (the audit's full scan) off the async runtime.
    async fn read_everything<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().context("starting a read transaction")?;
            work(&txn)
        })
        .await
        .context("store task panicked")?
    }

    /// Runs a write transaction off the async runtime and commits it if `work` succeeds. redb runs
    /// one writer at a time, so each `work` sees the effects of all the writes before it.
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().context("starting a write transaction")?;
            let value = work(&txn)?;
            txn.commit().context("committing")?;
            Ok(value)
        })
        .await
        .context("store task panicked")?
    }
}

/// Reads the head of `dialogue` and checks that `owner` owns it.
fn owned_head(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    owner: UserId,
    dialogue: DialogueId,
) -> StoreResult<(Message, DialogueSummary)> {
    let stored: StoredMessage =
        match table.get(message_key(dialogue, 1).as_slice()).context("reading a head")? {
            Some(bytes) => decode_message(bytes.value())?,
            None => return Err(StoreError::NotFound),
        };
    let summary = owns(stored.summary, owner, dialogue)?;
    Ok((stored.message, summary))
}

/// The head's `summary` (owned or borrowed) if it says that `owner` owns `dialogue`; anyone
/// else is told that there is no such dialogue.
fn owns<S: std::borrow::Borrow<DialogueSummary>>(
    summary: Option<S>,
    owner: UserId,
    dialogue: DialogueId,
) -> StoreResult<S> {
    match summary {
        Some(summary) if summary.borrow().owner == owner => Ok(summary),
        Some(_) => Err(StoreError::NotFound),
        None => Err(anyhow::anyhow!("head of {dialogue} has no summary").into()),
    }
}

/// Checks that `owner` owns `dialogue` for a range of its messages read as `page`: from the page
/// itself when it starts at the head, which carries the summary (the head would otherwise be
/// read and decoded twice), else by reading the head.
fn owns_page(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    owner: UserId,
    dialogue: DialogueId,
    page: &[StoredMessage],
) -> StoreResult<()> {
    match page.first() {
        Some(head) if head.message.seq == 1 => owns(head.summary.as_ref(), owner, dialogue).map(drop),
        _ => owned_head(table, owner, dialogue).map(drop),
    }
}

fn read_message(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dialogue: DialogueId,
    seq: u64,
) -> StoreResult<StoredMessage> {
    let bytes = table
        .get(message_key(dialogue, seq).as_slice())
        .context("reading a message")?
        .with_context(|| format!("message {seq} of {dialogue} is missing"))?;
    Ok(decode_message(bytes.value())?)
}

/// The message of `dialogue` whose id is `id`, found by walking the dialogue from its head.
fn find_message(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    dialogue: DialogueId,
    id: MessageId,
) -> StoreResult<Message> {
    let range = table
        .range(message_key(dialogue, 1).as_slice()..=message_key(dialogue, u64::MAX).as_slice())
        .context("scanning messages")?;
    for entry in range {
        let (_, value) = entry.context("scanning messages")?;
        let message = decode_message(value.value())?.message;
        if message.id == id {
            return Ok(message);
        }
    }
    Err(StoreError::NotFound)
}

/// Collects up to `limit` messages of a key range, plus whether more followed.
fn take_page(
    range: impl Iterator<
        Item = Result<
            (redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, &'static [u8]>),
            redb::StorageError,
        >,
    >,
    mut fill: PageFill,
) -> StoreResult<(Vec<StoredMessage>, bool)> {
    let mut items = Vec::with_capacity(fill.room());
    for entry in range {
        // A page at its limit ends before the next record is decoded, as it did before the byte
        // budget: only a page cut short by its bytes pays for one record it does not keep.
        if fill.room() == 0 {
            return Ok((items, true));
        }
        let (_, value) = entry.context("scanning")?;
        let stored = decode_message(value.value())?;
        if !fill.admit(stored.message.content.len()) {
            return Ok((items, true));
        }
        items.push(stored);
    }
    Ok((items, false))
}

/// Dialogues deleted per write transaction by [`DialogueStore::delete_dialogues`].
const DELETE_BATCH: usize = 16;

/// The first and last possible keys of `owner`'s entries in the listing index.
fn owner_bounds(owner: UserId) -> ([u8; 40], [u8; 40]) {
    let mut last = [0xff; 40];
    last[..16].copy_from_slice(owner.as_bytes());
    (owner_key(owner, i64::MAX, DialogueId::from_bytes([0; 16])), last)
}

/// The dialogue an entry of the listing index names.
fn dialogue_in(index_key: &[u8]) -> StoreResult<DialogueId> {
    let id: [u8; 16] = index_key.get(24..40).and_then(|id| id.try_into().ok()).context("an index key")?;
    Ok(DialogueId::from_bytes(id))
}

/// Removes every message of the dialogue `summary` describes, their earlier versions, and its
/// listing entry.
fn remove_dialogue(
    txn: &WriteTransaction,
    messages: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    index: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    summary: &DialogueSummary,
) -> StoreResult<()> {
    index.remove(summary_key(summary).as_slice()).context("unlisting a dialogue")?;
    let (first, last) = (message_key(summary.id, 1), message_key(summary.id, u64::MAX));
    messages
        .retain_in::<&[u8], _>(first.as_slice()..=last.as_slice(), |_, _| false)
        .context("deleting messages")?;
    let mut versions = txn.open_table(VERSIONS).context("opening reply_versions")?;
    let (first, last) = (version_key(summary.id, 0, 0), version_key(summary.id, u64::MAX, u32::MAX));
    versions
        .retain_in::<&[u8], _>(first.as_slice()..=last.as_slice(), |_, _| false)
        .context("deleting versions")?;
    Ok(())
}

#[async_trait]
impl SafetyCounts for EmbeddedStore {
    async fn count_screening(
        &self,
        day: chrono::NaiveDate,
        level: ifs_domain::SafetyLevel,
        screener: &str,
    ) -> StoreResult<()> {
        let key = crate::safety_key(day, level, screener);
        self.write(move |txn| {
            let mut counts = txn.open_table(SAFETY_COUNTS).context("opening safety_counts")?;
            let now = counts.get(key.as_str()).context("reading a safety count")?.map_or(0, |v| v.value());
            counts.insert(key.as_str(), now.saturating_add(1)).context("writing a safety count")?;
            Ok(())
        })
        .await
    }

    async fn screenings(&self, since: chrono::NaiveDate) -> StoreResult<Vec<SafetyCount>> {
        let from = since.to_string();
        self.read_everything(move |txn| {
            let counts = txn.open_table(SAFETY_COUNTS).context("opening safety_counts")?;
            let mut all = Vec::new();
            for entry in counts.range::<&str>(from.as_str()..).context("reading safety_counts")? {
                let (key, count) = entry.context("reading a safety count")?;
                all.push(crate::safety_count(key.value(), count.value())?);
            }
            Ok(all)
        })
        .await
    }
}

#[async_trait]
impl UserStore for EmbeddedStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |txn| {
            let mut emails = txn.open_table(USER_EMAILS).context("opening user_emails")?;
            if emails.get(user.email.as_str()).context("reading user_emails")?.is_some() {
                return Err(StoreError::EmailTaken);
            }
            emails.insert(user.email.as_str(), user.id.as_bytes().as_slice()).context("indexing email")?;
            let mut users = txn.open_table(USERS).context("opening users")?;
            users.insert(user.id.as_bytes().as_slice(), encode(&user)?.as_slice()).context("writing user")?;
            Ok(())
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>> {
        let email = email.clone();
        self.read(move |txn| {
            let emails = txn.open_table(USER_EMAILS).context("opening user_emails")?;
            let Some(id) = emails.get(email.as_str()).context("reading user_emails")? else {
                return Ok(None);
            };
            let users = txn.open_table(USERS).context("opening users")?;
            let user = users.get(id.value()).context("reading user")?;
            Ok(user.map(|bytes| decode(bytes.value())).transpose()?)
        })
    }

    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()> {
        let user = user.clone();
        self.users.lock().unwrap_or_else(PoisonError::into_inner).remove(&user.id);
        self.write(move |txn| {
            let mut emails = txn.open_table(USER_EMAILS).context("opening user_emails")?;
            let theirs = emails
                .get(user.email.as_str())
                .context("reading user_emails")?
                .is_some_and(|id| id.value() == user.id.as_bytes().as_slice());
            if theirs {
                emails.remove(user.email.as_str()).context("removing an email")?;
            }
            let mut users = txn.open_table(USERS).context("opening users")?;
            users.remove(user.id.as_bytes().as_slice()).context("removing a user")?;
            Ok(())
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        if let Some(user) = self.users.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Some(user.clone()));
        }
        let user: Option<UserRecord> = self.read(move |txn| {
            let users = txn.open_table(USERS).context("opening users")?;
            let user = users.get(id.as_bytes().as_slice()).context("reading user")?;
            Ok(user.map(|bytes| decode(bytes.value())).transpose()?)
        })?;
        if let Some(user) = &user {
            self.remember(user);
        }
        Ok(user)
    }

    async fn set_country(&self, id: UserId, country: Option<ifs_domain::Country>) -> StoreResult<UserRecord> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        self.write(move |txn| {
            let mut users = txn.open_table(USERS).context("opening users")?;
            let mut user: UserRecord = {
                let stored = users.get(id.as_bytes().as_slice()).context("reading user")?;
                decode(stored.ok_or(StoreError::NotFound)?.value())?
            };
            user.country = country;
            users.insert(id.as_bytes().as_slice(), encode(&user)?.as_slice()).context("writing user")?;
            Ok(user)
        })
        .await
    }
}

#[async_trait]
impl DialogueStore for EmbeddedStore {
    async fn start_dialogue(&self, owner: UserId, first: NewMessage) -> StoreResult<Message> {
        self.write(move |txn| {
            let head = first.into_head();
            let summary = DialogueSummary::of_head(owner, &head);
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let key = message_key(head.dialogue_id, 1);
            if messages.get(key.as_slice()).context("reading messages")?.is_some() {
                return Err(anyhow::anyhow!("message id {} reused", head.id).into());
            }
            let stored = StoredMessage { message: head, summary: Some(summary) };
            messages.insert(key.as_slice(), encode_message(&stored).as_slice()).context("writing head")?;
            let mut index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            let summary = stored.summary.as_ref().context("summary just set")?;
            index.insert(summary_key(summary).as_slice(), [].as_slice()).context("indexing dialogue")?;
            Ok(stored.message)
        })
        .await
    }

    async fn append_message(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: NewMessage,
    ) -> StoreResult<Message> {
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (mut head, mut summary) = owned_head(&messages, owner, dialogue)?;
            let old_index_key = summary_key(&summary);

            // Four reads and writes whatever the length: head, tail, new message, index entry.
            let appended = if summary.message_count == 1 {
                message.link_after(&mut head)
            } else {
                let mut tail = read_message(&messages, dialogue, summary.message_count)?;
                let appended = message.link_after(&mut tail.message);
                let key = message_key(dialogue, tail.message.seq);
                messages
                    .insert(key.as_slice(), encode_message(&tail).as_slice())
                    .context("relinking the tail")?;
                appended
            };
            summary.record_append(&appended);
            let new_index_key = summary_key(&summary);

            let key = message_key(dialogue, appended.seq);
            let stored = StoredMessage { message: appended, summary: None };
            messages
                .insert(key.as_slice(), encode_message(&stored).as_slice())
                .context("writing the message")?;
            let head_stored = StoredMessage { message: head, summary: Some(summary) };
            messages
                .insert(message_key(dialogue, 1).as_slice(), encode_message(&head_stored).as_slice())
                .context("updating the head")?;

            let mut index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            index.remove(old_index_key.as_slice()).context("unindexing")?;
            index.insert(new_index_key.as_slice(), [].as_slice()).context("reindexing")?;
            Ok(stored.message)
        })
        .await
    }

    async fn replace_reply(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        reply: MessageId,
        new: NewMessage,
    ) -> StoreResult<Message> {
        // One write transaction, like an append's: the two cannot interleave.
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (head, mut summary) = owned_head(&messages, owner, dialogue)?;
            if summary.tail_id != reply {
                return Err(RegenerateRefusal::NotLastReply.into());
            }
            let tail = if summary.message_count == 1 {
                head.clone()
            } else {
                read_message(&messages, dialogue, summary.message_count)?.message
            };
            let regenerated = tail.regenerated(new)?;
            let mut versions = txn.open_table(VERSIONS).context("opening reply_versions")?;
            let earlier = ReplyVersion::of(&tail);
            versions
                .insert(
                    version_key(dialogue, tail.seq, earlier.version).as_slice(),
                    encode(&earlier)?.as_slice(),
                )
                .context("keeping the earlier version")?;
            let old_index_key = summary_key(&summary);
            summary.updated_at = summary.updated_at.max(regenerated.created_at);
            let stored = StoredMessage { message: regenerated, summary: None };
            messages
                .insert(
                    message_key(dialogue, stored.message.seq).as_slice(),
                    encode_message(&stored).as_slice(),
                )
                .context("writing the new version")?;
            let head_stored = StoredMessage { message: head, summary: Some(summary.clone()) };
            messages
                .insert(message_key(dialogue, 1).as_slice(), encode_message(&head_stored).as_slice())
                .context("updating the head")?;
            let mut index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            index.remove(old_index_key.as_slice()).context("unindexing")?;
            index.insert(summary_key(&summary).as_slice(), [].as_slice()).context("reindexing")?;
            Ok(stored.message)
        })
        .await
    }

    async fn versions(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: MessageId,
    ) -> StoreResult<Vec<ReplyVersion>> {
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            owned_head(&messages, owner, dialogue)?;
            let current = find_message(&messages, dialogue, message)?;
            let versions = txn.open_table(VERSIONS).context("opening reply_versions")?;
            let (first, last) =
                (version_key(dialogue, current.seq, 0), version_key(dialogue, current.seq, u32::MAX));
            let mut all = Vec::new();
            for entry in
                versions.range::<&[u8]>(first.as_slice()..=last.as_slice()).context("scanning versions")?
            {
                let (_, value) = entry.context("scanning versions")?;
                all.push(decode::<ReplyVersion>(value.value())?);
            }
            all.push(ReplyVersion::of(&current));
            Ok(all)
        })
    }

    async fn dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<DialogueSummary> {
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            Ok(owned_head(&messages, owner, dialogue)?.1)
        })
    }

    async fn rename_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        title: String,
    ) -> StoreResult<DialogueSummary> {
        // One write transaction, like an append's: the two cannot interleave.
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (head, mut summary) = owned_head(&messages, owner, dialogue)?;
            summary.title = title;
            let head_stored = StoredMessage { message: head, summary: Some(summary.clone()) };
            messages
                .insert(message_key(dialogue, 1).as_slice(), encode_message(&head_stored).as_slice())
                .context("renaming the head")?;
            Ok(summary)
        })
        .await
    }

    async fn fork_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        through: MessageId,
    ) -> StoreResult<DialogueSummary> {
        // One write transaction: the fork appears whole or not at all. The original is read a
        // message at a time, so that memory stays bounded however long the fork; the head, which
        // carries the summary of every copy, is written last.
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (original_head, original) = owned_head(&messages, owner, dialogue)?;
            let count = find_message(&messages, dialogue, through)?.seq;
            if count > FORK_MAX_MESSAGES {
                return Err(StoreError::ForkTooLong);
            }
            let fork = Fork::new(ForkOrigin { dialogue_id: dialogue, message_id: through }, count);
            let head = fork.copy(&original_head);
            let mut latest = head.created_at;
            for seq in 2..=count {
                let copy = fork.copy(&read_message(&messages, dialogue, seq)?.message);
                latest = latest.max(copy.created_at);
                let key = message_key(fork.dialogue_id(), seq);
                let stored = StoredMessage { message: copy, summary: None };
                messages
                    .insert(key.as_slice(), encode_message(&stored).as_slice())
                    .context("writing a copy")?;
            }
            let summary = fork.summary(owner, original.title, &head, latest);
            let stored = StoredMessage { message: head, summary: Some(summary.clone()) };
            messages
                .insert(message_key(fork.dialogue_id(), 1).as_slice(), encode_message(&stored).as_slice())
                .context("writing the fork's head")?;
            let mut index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            index.insert(summary_key(&summary).as_slice(), [].as_slice()).context("indexing the fork")?;
            Ok(summary)
        })
        .await
    }

    async fn delete_dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<()> {
        // One write transaction, whatever the length: redb commits it whole or not at all, so
        // there is never a half-deleted dialogue here, and appends are serialised with it.
        self.write(move |txn| {
            let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (_, summary) = owned_head(&messages, owner, dialogue)?;
            let mut index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            remove_dialogue(txn, &mut messages, &mut index, &summary)
        })
        .await
    }

    async fn delete_dialogues(&self, owner: UserId) -> StoreResult<u64> {
        // A batch of dialogues per transaction, so that one account's erasure does not hold the
        // single writer for long; each batch is whole, and the next call resumes where one
        // interrupted stopped (what is left is still listed).
        let mut deleted = 0;
        loop {
            let batch = self
                .write(move |txn| {
                    let mut messages = txn.open_table(MESSAGES).context("opening messages")?;
                    let mut index =
                        txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
                    let mut owned = Vec::new();
                    let (first, last) = owner_bounds(owner);
                    for entry in index
                        .range::<&[u8]>(first.as_slice()..=last.as_slice())
                        .context("scanning dialogues")?
                    {
                        if owned.len() == DELETE_BATCH {
                            break;
                        }
                        let (key, _) = entry.context("scanning dialogues")?;
                        owned.push(dialogue_in(key.value())?);
                    }
                    for dialogue in &owned {
                        let (_, summary) = owned_head(&messages, owner, *dialogue)?;
                        remove_dialogue(txn, &mut messages, &mut index, &summary)?;
                    }
                    Ok(owned.len() as u64)
                })
                .await?;
            deleted += batch;
            if batch < DELETE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    async fn messages_before(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        before_seq: u64,
        count: usize,
    ) -> StoreResult<Vec<Message>> {
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            // Backwards from just before `before_seq`, as DynamoDB's query reads: the newest are
            // the ones kept, and a position past the end gives the last messages.
            let range = messages
                .range(
                    message_key(dialogue, 1).as_slice()..message_key(dialogue, before_seq.max(1)).as_slice(),
                )
                .context("scanning messages")?
                .rev();
            let (mut stored, _) = take_page(range, PageFill::counting(count))?;
            stored.reverse();
            owns_page(&messages, owner, dialogue, &stored)?;
            Ok(stored.into_iter().map(|s| s.message).collect())
        })
    }

    async fn messages(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        limit: Limit,
        after: Option<MessageCursor>,
    ) -> StoreResult<Page<Message, MessageCursor>> {
        self.read(move |txn| {
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            let from = after.map_or(1, |c| c.after_seq.saturating_add(1));
            let range = messages
                .range(message_key(dialogue, from).as_slice()..=message_key(dialogue, u64::MAX).as_slice())
                .context("scanning messages")?;
            let (stored, more) = take_page(range, PageFill::new(limit))?;
            owns_page(&messages, owner, dialogue, &stored)?;
            let items: Vec<Message> = stored.into_iter().map(|s| s.message).collect();
            let next = more.then(|| items.last().map(|m| MessageCursor { after_seq: m.seq })).flatten();
            Ok(Page { items, next })
        })
    }

    async fn dialogues(
        &self,
        owner: UserId,
        limit: Limit,
        after: Option<DialogueCursor>,
    ) -> StoreResult<Page<DialogueSummary, DialogueCursor>> {
        self.read(move |txn| {
            let index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            let (first, end) = owner_bounds(owner);
            // The cursor names the last item already seen, so the page starts just after it.
            let start = match after {
                Some(cursor) => Bound::Excluded(owner_key(owner, cursor.updated_at_ms, cursor.id)),
                None => Bound::Included(first),
            };
            let start = start.as_ref().map(|key| key.as_slice());
            let range = index
                .range::<&[u8]>((start, Bound::Included(end.as_slice())))
                .context("scanning dialogues")?;
            let mut items = Vec::with_capacity(limit.get());
            let mut more = false;
            for entry in range {
                if items.len() == limit.get() {
                    more = true;
                    break;
                }
                let (key, _) = entry.context("scanning dialogues")?;
                let dialogue = dialogue_in(key.value())?;
                let head = read_message(&messages, dialogue, 1)?;
                items.push(head.summary.with_context(|| format!("head of {dialogue} has no summary"))?);
            }
            let next =
                more.then(|| items.last().map(|d| DialogueCursor::after(d.updated_at, d.id))).flatten();
            Ok(Page { items, next })
        })
    }
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        let session = session.clone();
        self.write(move |txn| {
            let mut sessions = txn.open_table(SESSIONS).context("opening sessions")?;
            let id = session.id.as_bytes().as_slice();
            sessions.insert(id, encode_session(&session).as_slice()).context("writing")?;
            let mut expiry = txn.open_table(SESSION_EXPIRY).context("opening session_expiry")?;
            expiry.insert(expiry_key(session.expires_at, id).as_slice(), ()).context("indexing expiry")?;
            let mut by_user = txn.open_table(USER_SESSIONS).context("opening user_sessions")?;
            by_user
                .insert(user_session_key(session.user_id, session.id).as_slice(), ())
                .context("indexing")?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id: SessionId, now: Timestamp) -> StoreResult<Option<Session>> {
        self.read(move |txn| {
            let sessions = txn.open_table(SESSIONS).context("opening sessions")?;
            let Some(bytes) = sessions.get(id.as_bytes().as_slice()).context("reading")? else {
                return Ok(None);
            };
            let session = decode_session(bytes.value())?;
            Ok((session.expires_at > now).then_some(session))
        })
    }

    async fn revoke_session(&self, id: SessionId) -> StoreResult<()> {
        self.write(move |txn| {
            let mut sessions = txn.open_table(SESSIONS).context("opening sessions")?;
            let Some(bytes) = sessions.remove(id.as_bytes().as_slice()).context("removing")? else {
                return Ok(());
            };
            let session = decode_session(bytes.value())?;
            let mut expiry = txn.open_table(SESSION_EXPIRY).context("opening session_expiry")?;
            expiry.remove(expiry_key(session.expires_at, id.as_bytes()).as_slice()).context("unindexing")?;
            let mut by_user = txn.open_table(USER_SESSIONS).context("opening user_sessions")?;
            by_user.remove(user_session_key(session.user_id, id).as_slice()).context("unindexing")?;
            Ok(())
        })
        .await
    }

    async fn revoke_user_sessions(&self, user: UserId) -> StoreResult<u64> {
        self.write(move |txn| {
            let mut by_user = txn.open_table(USER_SESSIONS).context("opening user_sessions")?;
            let (first, last) = (
                user_session_key(user, SessionId::from_bytes([0; 16])),
                user_session_key(user, SessionId::from_bytes([0xff; 16])),
            );
            let mut ids = Vec::new();
            for entry in by_user
                .range::<&[u8]>(first.as_slice()..=last.as_slice())
                .context("scanning user_sessions")?
            {
                let (key, _) = entry.context("scanning user_sessions")?;
                let id: [u8; 16] = key.value()[16..].try_into().context("a user_sessions key")?;
                ids.push(SessionId::from_bytes(id));
            }
            let mut sessions = txn.open_table(SESSIONS).context("opening sessions")?;
            let mut expiry = txn.open_table(SESSION_EXPIRY).context("opening session_expiry")?;
            for id in &ids {
                by_user.remove(user_session_key(user, *id).as_slice()).context("unindexing")?;
                if let Some(bytes) = sessions.remove(id.as_bytes().as_slice()).context("removing")? {
                    let session = decode_session(bytes.value())?;
                    expiry
                        .remove(expiry_key(session.expires_at, id.as_bytes()).as_slice())
                        .context("unindexing")?;
                }
            }
            Ok(ids.len() as u64)
        })
        .await
    }
}

#[async_trait]
impl Counters for EmbeddedStore {
    async fn add(
        &self,
        counter: Counter<'_>,
        amount: u32,
        now: Timestamp,
        closes_at: Timestamp,
    ) -> StoreResult<Window> {
        let key = counter.key();
        // One write transaction reads and increments: redb runs writers one at a time, so
        // parallel hits are serialised and none can read a count another has already raised.
        self.write(move |txn| {
            let mut counters = txn.open_table(COUNTERS).context("opening counters")?;
            let current = match counters.get(key.as_str()).context("reading a counter")? {
                Some(bytes) => Some(decode::<Window>(bytes.value())?),
                None => None,
            };
            let updated = match current {
                Some(open) if open.resets_at > now => {
                    Window { hits: open.hits.saturating_add(amount), ..open }
                }
                closed => {
                    let fresh = Window { hits: amount, resets_at: closes_at };
                    let mut expiry = txn.open_table(COUNTER_EXPIRY).context("opening counter_expiry")?;
                    if let Some(closed) = closed {
                        expiry
                            .remove(expiry_key(closed.resets_at, key.as_bytes()).as_slice())
                            .context("unindexing a closed window")?;
                    }
                    expiry
                        .insert(expiry_key(fresh.resets_at, key.as_bytes()).as_slice(), ())
                        .context("indexing a window")?;
                    fresh
                }
            };
            counters.insert(key.as_str(), encode(&updated)?.as_slice()).context("writing a counter")?;
            Ok(updated)
        })
        .await
    }

    async fn peek(&self, counter: Counter<'_>, now: Timestamp) -> StoreResult<Option<Window>> {
        let key = counter.key();
        self.read(move |txn| {
            let counters = txn.open_table(COUNTERS).context("opening counters")?;
            let Some(bytes) = counters.get(key.as_str()).context("reading a counter")? else {
                return Ok(None);
            };
            let window: Window = decode(bytes.value())?;
            Ok((window.resets_at > now).then_some(window))
        })
    }

    async fn reset(&self, counter: Counter<'_>) -> StoreResult<()> {
        let key = counter.key();
        self.leases.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        self.write(move |txn| {
            let mut counters = txn.open_table(COUNTERS).context("opening counters")?;
            let Some(bytes) = counters.remove(key.as_str()).context("removing a counter")? else {
                return Ok(());
            };
            let window: Window = decode(bytes.value())?;
            let mut expiry = txn.open_table(COUNTER_EXPIRY).context("opening counter_expiry")?;
            expiry.remove(expiry_key(window.resets_at, key.as_bytes()).as_slice()).context("unindexing")?;
            Ok(())
        })
        .await
    }

    async fn lease(
        &self,
        counter: Counter<'_>,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        max: u32,
    ) -> StoreResult<bool> {
        let until = now + chrono::Duration::from_std(ttl).context("lease length")?;
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired leases are dropped when their counter is next used; one that outlives its
        // holder costs a few bytes until then.
        let held = leases.entry(counter.key()).or_default();
        held.retain(|(_, expires)| *expires > now);
        if let Some(mine) = held.iter_mut().find(|(name, _)| name == holder) {
            mine.1 = until;
            return Ok(true);
        }
        if held.len() >= max as usize {
            return Ok(false);
        }
        held.push((holder.to_owned(), until));
        Ok(true)
    }

    async fn release(&self, counter: Counter<'_>, holder: &str) -> StoreResult<()> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let key = counter.key();
        if let Some(held) = leases.get_mut(&key) {
            held.retain(|(name, _)| name != holder);
            if held.is_empty() {
                leases.remove(&key);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sweep for EmbeddedStore {
    async fn sweep_expired(&self, now: Timestamp, batch: usize) -> StoreResult<Swept> {
        self.write(move |txn| {
            let mut expiry = txn.open_table(SESSION_EXPIRY).context("opening session_expiry")?;
            let mut sessions = txn.open_table(SESSIONS).context("opening sessions")?;
            let expired = expired_keys(&expiry, now, batch)?;
            let mut by_user = txn.open_table(USER_SESSIONS).context("opening user_sessions")?;
            for key in &expired {
                expiry.remove(key.as_slice()).context("unindexing a session")?;
                if let Some(bytes) = sessions.remove(&key[8..]).context("deleting a session")? {
                    let session = decode_session(bytes.value())?;
                    by_user
                        .remove(user_session_key(session.user_id, session.id).as_slice())
                        .context("unindexing")?;
                }
            }
            let mut windows = txn.open_table(COUNTER_EXPIRY).context("opening counter_expiry")?;
            let mut counters = txn.open_table(COUNTERS).context("opening counters")?;
            let closed = expired_keys(&windows, now, batch)?;
            for key in &closed {
                windows.remove(key.as_slice()).context("unindexing a counter")?;
                let name = std::str::from_utf8(&key[8..]).context("a counter key")?;
                counters.remove(name).context("deleting a counter")?;
            }
            Ok(Swept { sessions: expired.len(), windows: closed.len() })
        })
        .await
    }
}

#[async_trait]
impl Audit for EmbeddedStore {
    /// One read transaction: a consistent snapshot even while the server writes.
    async fn audit(&self) -> StoreResult<AuditReport> {
        self.read_everything(|txn| {
            let mut listed = listing_entries(txn)?;
            let messages = txn.open_table(MESSAGES).context("opening messages")?;
            let mut report = AuditReport::default();
            let mut current: Option<StoredDialogue> = None;
            for entry in messages.iter().context("scanning messages")? {
                let (key, value) = entry.context("scanning messages")?;
                let key = key.value();
                let (Some(dialogue), Some(position)) = (
                    key.get(..16).and_then(|b| b.try_into().ok()).map(DialogueId::from_bytes),
                    key.get(16..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
                ) else {
                    return Err(anyhow::anyhow!("a message key of {} bytes", key.len()).into());
                };
                // Keys order a dialogue's messages together, so a new id closes the previous one.
                if current.as_ref().is_none_or(|c| c.id != dialogue) {
                    if let Some(done) = current.take() {
                        report.record(&done);
                    }
                    let mut fresh = StoredDialogue::new(dialogue);
                    fresh.listed = listed.remove(&dialogue).unwrap_or_default();
                    current = Some(fresh);
                }
                let stored = current.as_mut().context("a dialogue being read")?;
                match decode_message(value.value()) {
                    Ok(StoredMessage { message, summary }) => {
                        if position == 1 {
                            stored.summary = summary;
                        }
                        stored.messages.push(StoredLink {
                            position,
                            seq: message.seq,
                            id: message.id,
                            dialogue_id: message.dialogue_id,
                            prev_id: message.prev_id,
                            next_id: message.next_id,
                            created_at: message.created_at,
                            owner: None,
                        });
                    }
                    Err(error) => stored.unreadable.push((position, format!("{error:#}"))),
                }
            }
            if let Some(done) = current {
                report.record(&done);
            }
            // Listing entries whose dialogue has no messages at all.
            for (dialogue, entries) in listed {
                report.record(&StoredDialogue { listed: entries, ..StoredDialogue::new(dialogue) });
            }
            Ok(report)
        })
        .await
    }

    async fn finish_deletions(&self) -> StoreResult<u64> {
        // A dialogue is deleted in one transaction here: none is ever left half-deleted.
        Ok(0)
    }
}

/// Every entry of the owners' listing index, by the dialogue it lists: (owner, activity ms).
fn listing_entries(txn: &ReadTransaction) -> StoreResult<HashMap<DialogueId, Vec<(UserId, i64)>>> {
    let index = txn.open_table(DIALOGUES_BY_OWNER).context("opening dialogues_by_owner")?;
    let mut entries: HashMap<DialogueId, Vec<(UserId, i64)>> = HashMap::new();
    for entry in index.iter().context("scanning dialogues_by_owner")? {
        let (key, _) = entry.context("scanning dialogues_by_owner")?;
        let key: [u8; 40] = key.value().try_into().context("a dialogues_by_owner key")?;
        let owner = UserId::from_bytes(key[..16].try_into().context("owner bytes")?);
        let newest_first = u64::from_be_bytes(key[16..24].try_into().context("activity bytes")?);
        let dialogue = DialogueId::from_bytes(key[24..].try_into().context("dialogue bytes")?);
        let activity = i64::try_from(u64::MAX - newest_first).unwrap_or(i64::MAX);
        entries.entry(dialogue).or_default().push((owner, activity));
    }
    Ok(entries)
}
