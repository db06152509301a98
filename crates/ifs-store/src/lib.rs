//! Storage ports of ifs-guide — users, dialogues (linked lists of messages) and sessions — and
//! their adapters. Handlers depend on the small traits here, never on an adapter; every adapter
//! passes the same [`conformance`] suite.

use std::time::Duration;

use async_trait::async_trait;
use ifs_domain::{
    DialogueCursor, DialogueId, DialogueSummary, Email, Limit, Message, MessageCursor, NewMessage, Page,
    SessionId, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;

pub use embedded::EmbeddedStore;

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A user with that email already exists.
    #[error("email already registered")]
    EmailTaken,
    /// The thing does not exist, or belongs to someone else: callers cannot tell which.
    #[error("not found")]
    NotFound,
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
}

/// A login session: the server-side half of an access token, so that logout can revoke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Failed logins counted for one email in a fixed window that starts at the first failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureWindow {
    pub failures: u32,
    pub resets_at: Timestamp,
}

/// Users by id and by (unique) email.
#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new user; [`StoreError::EmailTaken`] if the email is registered.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
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

    /// A page of the owner's dialogues, newest activity first.
    async fn dialogues(
        &self,
        owner: UserId,
        limit: Limit,
        after: Option<DialogueCursor>,
    ) -> StoreResult<Page<DialogueSummary, DialogueCursor>>;
}

/// Sessions and the login-failure counters that throttle guessing.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    /// The session if it exists and has not expired at `now`.
    async fn session(&self, id: SessionId, now: Timestamp) -> StoreResult<Option<Session>>;
    /// Removes the session; revoking an unknown session is not an error.
    async fn revoke_session(&self, id: SessionId) -> StoreResult<()>;

    /// The current failure window for `email`, if one is open at `now`.
    async fn login_failures(&self, email: &Email, now: Timestamp) -> StoreResult<Option<FailureWindow>>;
    /// Counts one failure, opening a window of length `window` if none is open.
    async fn record_login_failure(
        &self,
        email: &Email,
        now: Timestamp,
        window: Duration,
    ) -> StoreResult<FailureWindow>;
    async fn clear_login_failures(&self, email: &Email) -> StoreResult<()>;
}
