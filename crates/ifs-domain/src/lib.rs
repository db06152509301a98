//! Pure domain of ifs-guide: identifiers, credentials, message text and the rules of the
//! doubly linked list that a dialogue is. Nothing here does I/O; adapters and handlers build on it.

pub mod audit;
pub mod clock;
pub mod credentials;
pub mod dialogue;
pub mod id;
pub mod page;
pub mod safety;
pub mod text;

pub use audit::{AuditReport, Finding, StoredDialogue, StoredLink, audit};
pub use clock::{Clock, ManualClock, SystemClock, next_utc_midnight};
pub use credentials::{Email, EmailError, Password, PasswordError};
pub use dialogue::{
    ChainError, DialogueSummary, FORK_MAX_MESSAGES, Fork, ForkOrigin, Message, MessageText, MessageTextError,
    NewMessage, REPLY_VERSIONS_MAX, RegenerateRefusal, ReplyMeta, ReplyVersion, Role, Usage, check_chain,
    title_for,
};
pub use id::{DialogueId, IdError, MessageId, SessionId, UserId};
pub use page::{CursorError, DialogueCursor, Limit, LimitError, MessageCursor, PAGE_BYTES, Page, PageFill};
pub use safety::{Country, CountryError, DISCLAIMER, SafetyLevel, SafetyNote};

/// A point in time as the domain sees it: UTC, millisecond precision.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
