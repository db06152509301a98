//! Authentication for ifs-guide: Argon2id password hashing, Ed25519-signed access tokens bound to
//! server-side sessions, and [`Authenticator::authenticate`] — the one check that `/me` and every
//! dialogue endpoint run, in-process.

pub mod keys;
pub mod password;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use ifs_domain::{Clock, SessionId, Timestamp, UserId};
use ifs_store::{SessionStore, StoreError};

pub use keys::{JwtKeys, PublicKey};
pub use password::{HashError, HashLimits, PasswordHasher};
pub use token::{Claims, TokenError, TokenIssuer, TokenSettings, TokenVerifier};

/// How many password checks for one email (logins, and the password that confirms an account's
/// deletion) are evaluated within how long; beyond that, 429 until the window passes. A correct
/// password starts the count afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub max_attempts: u32,
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Self { max_attempts: 5, window: Duration::from_secs(15 * 60) }
    }
}

/// Who is calling, established from a valid token whose session is still alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub session_expires_at: Timestamp,
}

/// Why a caller is not authenticated. The variants are for logs; clients only ever see 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is malformed, forged, expired or for someone else: {0}")]
    InvalidToken(String),
    #[error("the session was revoked or has expired")]
    SessionGone,
    /// The sessions could not be checked (their store is unreachable); not the caller's fault.
    #[error("sessions cannot be checked right now: {0:#}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Verifies tokens and checks their session still exists. Holds only the public key.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Arc<TokenVerifier>,
    sessions: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    #[must_use]
    pub fn new(verifier: TokenVerifier, sessions: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Self {
        Self { verifier: Arc::new(verifier), sessions, clock }
    }

    /// The principal behind a bearer token, or why there is none.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        let claims = self.verifier.verify(token, now).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let user_id = UserId::parse(&claims.sub).map_err(|_| AuthError::InvalidToken("bad sub".into()))?;
        let session_id =
            SessionId::parse(&claims.sid).map_err(|_| AuthError::InvalidToken("bad sid".into()))?;
        let session = self
            .sessions
            .session(session_id, now)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(cause) => AuthError::Unavailable(cause),
                other => AuthError::Unexpected(anyhow::Error::new(other).context("looking up a session")),
            })?
            .ok_or(AuthError::SessionGone)?;
        if session.user_id != user_id {
            return Err(AuthError::InvalidToken("session belongs to another user".into()));
        }
        Ok(Principal { user_id, session_id, session_expires_at: session.expires_at })
    }

    /// Checks again that `principal`'s session has not ended since it was authenticated: for
    /// a write that must not outlive a logout or an account's erasure that happened meanwhile.
    pub async fn confirm(&self, principal: &Principal) -> Result<(), AuthError> {
        let session =
            self.sessions.session(principal.session_id, self.clock.now()).await.map_err(|e| match e {
                StoreError::Unavailable(cause) => AuthError::Unavailable(cause),
                other => AuthError::Unexpected(anyhow::Error::new(other).context("looking up a session")),
            })?;
        match session {
            Some(session) if session.user_id == principal.user_id => Ok(()),
            _ => Err(AuthError::SessionGone),
        }
    }
}
