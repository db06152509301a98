//! Storage ports of ifs-guide — users, dialogues (linked lists of messages) and sessions — and
//! their adapters. Handlers depend on the small traits here, never on an adapter; every adapter
//! passes the same [`conformance`] suite.

use std::time::Duration;

use async_trait::async_trait;
use ifs_domain::{
    AuditReport, DialogueCursor, DialogueId, DialogueSummary, Email, Limit, Message, MessageCursor,
    MessageId, NewMessage, Page, ReplyVersion, SessionId, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dynamodb;
pub mod embedded;
#[cfg(feature = "conformance")]
pub mod local_servers;
pub mod redis;

pub use dynamodb::{DynamoStore, sdk_loader};
pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A user with that email already exists.
    #[error("email already registered")]
    EmailTaken,
    /// The thing does not exist, or belongs to someone else: callers cannot tell which.
    #[error("not found")]
    NotFound,
    /// A reply cannot be regenerated, and why.
    #[error(transparent)]
    Regenerate(#[from] ifs_domain::RegenerateRefusal),
    /// A fork would copy more than [`ifs_domain::FORK_MAX_MESSAGES`] messages.
    #[error("a fork copies at most {} messages", ifs_domain::FORK_MAX_MESSAGES)]
    ForkTooLong,
    /// The backend could not be reached in time; worth retrying shortly. The cause is for logs.
    #[error("the store is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The backend failed; the cause is for logs only.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A registered user as stored, with the PHC string of their password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
    pub created_at: Timestamp,
    /// Where the person is, if they said: whose crisis lines they are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<ifs_domain::Country>,
}

/// A login session: the server-side half of an access token, so that logout can revoke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What a fixed-window counter counts, and for whom. Counters throttle login guessing and cap how
/// fast one account can add messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter<'a> {
    /// Login attempts for one email, counted before the password is checked.
    LoginAttempts(&'a Email),
    /// Dialogue turns one user has sent.
    DialogueTurns(UserId),
    /// Dialogue turns of one user being answered right now (a lease per turn).
    TurnsInFlight(UserId),
    /// Agent tokens (prompt and completion) one user's turns used today (UTC).
    TokensToday(UserId),
}

impl Counter<'_> {
    /// The counter's name in a store; kinds cannot collide.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Self::LoginAttempts(email) => format!("login:{email}"),
            Self::DialogueTurns(user) => format!("turns:{user}"),
            Self::TurnsInFlight(user) => format!("in-flight:{user}"),
            Self::TokensToday(user) => format!("tokens:{user}"),
        }
    }
}

/// Hits counted in a fixed window that opened at the first hit and closes at `resets_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub hits: u32,
    pub resets_at: Timestamp,
}

impl Window {
    /// Whole seconds from `now` until the window closes, rounded up: what `Retry-After` says.
    #[must_use]
    pub fn seconds_left(&self, now: Timestamp) -> u64 {
        u64::try_from((self.resets_at - now).num_milliseconds().saturating_add(999) / 1000).unwrap_or(1)
    }
}

/// What one sweep of expired records removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub windows: usize,
}

/// Users by id and by (unique) email.
#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new user; [`StoreError::EmailTaken`] if the email is registered.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Sets (or, with `None`, clears) the user's country; answers the user as now stored, or
    /// [`StoreError::NotFound`] for a user who is gone.
    async fn set_country(&self, id: UserId, country: Option<ifs_domain::Country>) -> StoreResult<UserRecord>;
    /// Removes the user and their email, which can then sign up again. Removing a user who is
    /// gone is not an error; an email that now belongs to someone else is left to them.
    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()>;
}

/// Dialogues as doubly linked lists of messages, owned by one user each.
///
/// Every operation that names a dialogue answers [`StoreError::NotFound`] both when it does not
/// exist and when `owner` does not own it.
#[async_trait]
pub trait DialogueStore: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a dialogue whose first message is `first`; the dialogue id is that message's id.
    async fn start_dialogue(&self, owner: UserId, first: NewMessage) -> StoreResult<Message>;

    /// Appends at the tail atomically: concurrent appends all land, in some order, in one list.
    /// Costs a constant number of operations whatever the dialogue's length.
    async fn append_message(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: NewMessage,
    ) -> StoreResult<Message>;

    /// The `count` messages just before position `before_seq`, oldest first.
    async fn messages_before(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        before_seq: u64,
        count: usize,
    ) -> StoreResult<Vec<Message>>;

    /// A page of the dialogue in list order.
    async fn messages(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        limit: Limit,
        after: Option<MessageCursor>,
    ) -> StoreResult<Page<Message, MessageCursor>>;

    /// Regenerates the dialogue's last reply `reply`: its words become `new`'s, its version one
    /// more, and what it said until now is kept as an earlier version; the dialogue's activity
    /// moves to `new`'s time. Atomic against appends and deletions: a reply that is no longer
    /// the tail is [`RegenerateRefusal::NotLastReply`](ifs_domain::RegenerateRefusal).
    async fn replace_reply(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        reply: MessageId,
        new: NewMessage,
    ) -> StoreResult<Message>;

    /// Every version of `message` in `dialogue`, oldest first, the current one last (just the
    /// current one for a message never regenerated).
    async fn versions(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: MessageId,
    ) -> StoreResult<Vec<ReplyVersion>>;

    /// The dialogue's summary.
    async fn dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<DialogueSummary>;

    /// Gives the dialogue a new title (already cleaned, see [`ifs_domain::dialogue::title_for`]);
    /// answers its summary. Renaming is not activity: the dialogue keeps its place in the list.
    async fn rename_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        title: String,
    ) -> StoreResult<DialogueSummary>;

    /// Starts a new dialogue holding copies, with new ids, of `dialogue`'s messages from its head
    /// up to and including `through`, under the same title, its summary naming where it came
    /// from; the original is untouched. Not found if `through` is not in the dialogue;
    /// [`StoreError::ForkTooLong`] past [`ifs_domain::FORK_MAX_MESSAGES`]. Costs a write per
    /// message copied. A fork cut short is never read as a dialogue: it is finished off (deleted)
    /// as an interrupted deletion is.
    async fn fork_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        through: MessageId,
    ) -> StoreResult<DialogueSummary>;

    /// Deletes the dialogue: afterwards it, every message in it and its listing entry are gone
    /// for everyone. An append racing the deletion either lands before it (and is deleted with
    /// it) or fails as not found. On a store that cannot delete a long dialogue at once, the
    /// dialogue is hidden first and an interrupted deletion is finished by the next one (or by
    /// [`Audit::finish_deletions`]); an unfinished one is never read as a dialogue.
    async fn delete_dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<()>;

    /// Deletes every dialogue of the owner as [`delete_dialogue`](Self::delete_dialogue) does,
    /// finishing any deletion of theirs that was interrupted; answers how many it deleted.
    async fn delete_dialogues(&self, owner: UserId) -> StoreResult<u64>;

    /// A page of the owner's dialogues, newest activity first.
    async fn dialogues(
        &self,
        owner: UserId,
        limit: Limit,
        after: Option<DialogueCursor>,
    ) -> StoreResult<Page<DialogueSummary, DialogueCursor>>;
}

/// Login sessions, the server-side half of access tokens.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    /// The session if it exists and has not expired at `now`.
    async fn session(&self, id: SessionId, now: Timestamp) -> StoreResult<Option<Session>>;
    /// Removes the session; revoking an unknown session is not an error.
    async fn revoke_session(&self, id: SessionId) -> StoreResult<()>;
    /// Removes every session of `user`, so that each of their tokens is refused from now on;
    /// answers how many there were.
    async fn revoke_user_sessions(&self, user: UserId) -> StoreResult<u64>;
}

/// Fixed-window counters, atomic so that parallel requests cannot slip past a limit.
#[async_trait]
pub trait Counters: Send + Sync + std::fmt::Debug + 'static {
    /// Counts one hit and answers the window including it, opening a window of length `window`
    /// if none is open at `now`. Atomic: of n parallel hits in one window, each sees a different
    /// count, 1 to n.
    async fn hit(&self, counter: Counter<'_>, now: Timestamp, window: Duration) -> StoreResult<Window> {
        let length = chrono::Duration::from_std(window).map_err(|e| StoreError::Unexpected(e.into()))?;
        self.add(counter, 1, now, now + length).await
    }
    /// Counts `amount` hits at once, opening a window that closes at `closes_at` if none is open
    /// at `now` (a window aligned to a calendar day, for example); answers the window including
    /// them. Atomic as [`hit`](Self::hit) is.
    async fn add(
        &self,
        counter: Counter<'_>,
        amount: u32,
        now: Timestamp,
        closes_at: Timestamp,
    ) -> StoreResult<Window>;
    /// The counter's window open at `now`, if one is, without counting anything.
    async fn peek(&self, counter: Counter<'_>, now: Timestamp) -> StoreResult<Option<Window>>;
    /// Closes the counter's window; resetting a counter that has none is not an error.
    async fn reset(&self, counter: Counter<'_>) -> StoreResult<()>;

    /// Takes a lease on `counter` for `holder` until `now + ttl`, or renews the one it holds, if
    /// fewer than `max` other leases on it are held and unexpired at `now`; answers whether
    /// `holder` holds one now. Atomic: of n parallel takers with room for m, m succeed. A lease
    /// that is never released ends by itself, so a process that dies holding one blocks nobody
    /// for longer than `ttl`.
    async fn lease(
        &self,
        counter: Counter<'_>,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        max: u32,
    ) -> StoreResult<bool>;
    /// Ends `holder`'s lease on `counter`; releasing a lease not held is not an error.
    async fn release(&self, counter: Counter<'_>, holder: &str) -> StoreResult<()>;
}

/// One count of screened turns: a day (UTC), a level, and the screener with its version —
/// nothing about who or what (docs/safety.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyCount {
    pub day: chrono::NaiveDate,
    pub level: ifs_domain::SafetyLevel,
    pub screener: String,
    pub count: u64,
}

/// The safety counters: how many turns were screened at each level, by day and screener. Kept
/// with the dialogues (a durable store), never with anything that names a person.
#[async_trait]
pub trait SafetyCounts: Send + Sync + std::fmt::Debug + 'static {
    /// Counts one screening. Atomic: n parallel counts add n.
    async fn count_screening(
        &self,
        day: chrono::NaiveDate,
        level: ifs_domain::SafetyLevel,
        screener: &str,
    ) -> StoreResult<()>;

    /// Every count from `since` on, by day, then level, then screener.
    async fn screenings(&self, since: chrono::NaiveDate) -> StoreResult<Vec<SafetyCount>>;
}

/// The key of a safety count, in the order counts are listed: day, level rank, level, screener.
/// Screener names are what the screeners call themselves (no `|`), never anything a person wrote.
fn safety_key(day: chrono::NaiveDate, level: ifs_domain::SafetyLevel, screener: &str) -> String {
    let rank = ifs_domain::SafetyLevel::ALL.iter().position(|l| *l == level).unwrap_or(0);
    format!("{day}|{rank}|{level}|{screener}")
}

/// The count a [`safety_key`] names.
fn safety_count(key: &str, count: u64) -> anyhow::Result<SafetyCount> {
    use anyhow::Context as _;
    let mut parts = key.splitn(4, '|');
    let day = parts.next().and_then(|d| d.parse().ok()).context("a safety count without a day")?;
    let level =
        parts.nth(1).and_then(ifs_domain::SafetyLevel::parse).context("a safety count without a level")?;
    let screener = parts.next().context("a safety count without a screener")?.to_owned();
    Ok(SafetyCount { day, level, screener, count })
}

/// Erases everything the stores hold of `user`, in an order that leaves a failure resumable:
/// every session first, so that no token of theirs writes anything more; every dialogue (a
/// deletion resumable itself); every counter; the user and their email last, so that until then
/// they can log in and ask again, which finishes the rest. Then the dialogues once more: a turn
/// that passed its token check just before the sessions went may have started one since.
pub async fn erase_account(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    dialogues: &dyn DialogueStore,
    counters: &dyn Counters,
    user: &UserRecord,
) -> StoreResult<()> {
    sessions.revoke_user_sessions(user.id).await?;
    dialogues.delete_dialogues(user.id).await?;
    for counter in [
        Counter::LoginAttempts(&user.email),
        Counter::DialogueTurns(user.id),
        Counter::TurnsInFlight(user.id),
        Counter::TokensToday(user.id),
    ] {
        counters.reset(counter).await?;
    }
    users.delete_user(user).await?;
    dialogues.delete_dialogues(user.id).await?;
    Ok(())
}

/// Stores that must delete expired sessions and counter windows themselves (Redis and DynamoDB
/// expire items on their own and need no sweep).
#[async_trait]
pub trait Sweep: Send + Sync + std::fmt::Debug + 'static {
    /// Deletes up to `batch` expired sessions and `batch` expired windows as of `now`.
    async fn sweep_expired(&self, now: Timestamp, batch: usize) -> StoreResult<Swept>;
}

/// Stores that can read back every dialogue as stored, for `ifs-guide check`.
#[async_trait]
pub trait Audit: Send + Sync + std::fmt::Debug + 'static {
    /// Reads every dialogue and judges it by [`ifs_domain::audit`]. Records that cannot be read
    /// are findings, not errors; an error means the store itself could not be read.
    async fn audit(&self) -> StoreResult<AuditReport>;

    /// Finishes every deletion that was interrupted (a dialogue hidden, not yet all deleted);
    /// answers how many it finished. Stores that delete a dialogue atomically have none.
    async fn finish_deletions(&self) -> StoreResult<u64>;
}
