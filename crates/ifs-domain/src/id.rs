//! Typed identifiers: UUIDv7 (time-ordered) behind newtypes, so a user id can never be passed as a
//! message id, and parsing is the only way in from text.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Text that is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a valid id")]
pub struct IdError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            #[must_use]
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the canonical hyphenated form (any case).
            pub fn parse(text: &str) -> Result<Self, IdError> {
                Uuid::try_parse(text.trim()).map(Self).map_err(|_| IdError)
            }

            /// Rebuilds an id from its 16 bytes, as adapters store it.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }

            #[must_use]
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

id_type!(
    /// A registered user.
    UserId
);
id_type!(
    /// One message in a dialogue.
    MessageId
);
id_type!(
    /// A login session; the `sid` claim of an access token.
    SessionId
);
id_type!(
    /// A dialogue. It is the id of the dialogue's first message: there is no separate dialogue entity.
    DialogueId
);

impl From<MessageId> for DialogueId {
    fn from(head: MessageId) -> Self {
        Self(head.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_survives_display_and_parse() {
        let id = UserId::generate();
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn garbage_is_not_an_id() {
        for text in ["", "abc", "123e4567-e89b-12d3-a456-42661417400", "../../etc/passwd"] {
            assert_eq!(MessageId::parse(text), Err(IdError), "{text:?}");
        }
    }

    #[test]
    fn a_dialogue_is_named_after_its_first_message() {
        let head = MessageId::generate();
        assert_eq!(DialogueId::from(head).to_string(), head.to_string());
    }
}
