//! Access tokens: EdDSA JWTs whose claims name the user (`sub`) and the session (`sid`).
//! Verification accepts only EdDSA and checks issuer, audience and expiry. Tokens already
//! verified are remembered, as an Ed25519 verification was most of the CPU a `/me` cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Duration;
use ifs_domain::{SessionId, Timestamp, UserId};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{JwtKeys, PublicKey};

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECONDS: i64 = 5;

/// Verified tokens remembered at most; when full, the memory starts afresh. Only genuine tokens
/// enter it, and only login issues those (a password hash each), so it fills slowly: at 10,000 it
/// holds about 3 MB.
pub const VERIFIED_CACHE: usize = 10_000;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// Who issues tokens, for whom, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
}

/// Signs access tokens; only the login function has one.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    keys: JwtKeys,
    settings: TokenSettings,
}

impl TokenIssuer {
    #[must_use]
    pub fn new(keys: JwtKeys, settings: TokenSettings) -> Self {
        Self { keys, settings }
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.settings.ttl
    }

    /// A signed token for `user` in `session`, valid from `now` for the configured lifetime.
    pub fn issue(&self, user: UserId, session: SessionId, now: Timestamp) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now.timestamp(),
            exp: (now + self.settings.ttl).timestamp(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.keys.encoding)
            .map_err(|e| anyhow::anyhow!("signing a token: {e}"))
    }
}

/// Checks signatures and claims; every protected function has one. Clones share what they have
/// verified.
#[derive(Clone)]
pub struct TokenVerifier {
    key: PublicKey,
    validation: Validation,
    /// Tokens whose signature, issuer and audience were checked, by their exact text. A signature
    /// never stops being valid, so remembering it is safe; expiry depends on the time and is
    /// checked on every use, and the session behind the token by the caller.
    verified: Arc<Mutex<HashMap<Box<str>, Arc<Claims>>>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("issuer", &self.validation.iss).finish_non_exhaustive()
    }
}

impl TokenVerifier {
    #[must_use]
    pub fn new(key: PublicKey, settings: &TokenSettings) -> Self {
        // Pinning the algorithm refuses `alg: none` and HMAC-with-the-public-key forgeries.
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked against the injected clock in `verify`, not the library's.
        validation.validate_exp = false;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self { key, validation, verified: Arc::default() }
    }

    /// The claims of a genuine token that has not expired at `now` (give or take the leeway).
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        let claims = match self.remembered(token) {
            Some(claims) => claims,
            None => {
                let claims = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &self.validation)
                    .map_err(|e| TokenError::Invalid(e.to_string()))?
                    .claims;
                self.remember(token, claims)
            }
        };
        if claims.exp.saturating_add(LEEWAY_SECONDS) <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(Claims::clone(&claims))
    }

    /// How many verified tokens are remembered.
    #[must_use]
    pub fn remembered_count(&self) -> usize {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn remembered(&self, token: &str) -> Option<Arc<Claims>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned()
    }

    fn remember(&self, token: &str, claims: Claims) -> Arc<Claims> {
        let claims = Arc::new(claims);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CACHE {
            // Simplest bound that cannot grow: tokens still in use are verified again once.
            verified.clear();
        }
        verified.insert(token.into(), Arc::clone(&claims));
        claims
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_ts() -> Timestamp {
        chrono::Utc::now()
    }

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "ifs-guide".into(),
            audience: "ifs-guide".into(),
            ttl: Duration::seconds(3600),
        }
    }

    #[test]
    fn an_issued_token_verifies_with_the_public_key() {
        let keys = JwtKeys::generate().unwrap();
        let issuer = TokenIssuer::new(keys.clone(), settings());
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let (user, session) = (UserId::generate(), SessionId::generate());
        let now = chrono::Utc::now();

        let claims = verifier.verify(&issuer.issue(user, session, now).unwrap(), now).unwrap();
        assert_eq!((claims.sub, claims.sid), (user.to_string(), session.to_string()));
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), ("ifs-guide", "ifs-guide"));
    }

    #[test]
    fn tokens_from_another_key_issuer_or_audience_or_past_expiry_are_refused() {
        let keys = JwtKeys::generate().unwrap();
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let now = chrono::Utc::now();
        let ids = (UserId::generate(), SessionId::generate());

        let other_key = TokenIssuer::new(JwtKeys::generate().unwrap(), settings());
        let other_issuer =
            TokenIssuer::new(keys.clone(), TokenSettings { issuer: "evil".into(), ..settings() });
        let other_audience =
            TokenIssuer::new(keys.clone(), TokenSettings { audience: "else".into(), ..settings() });
        let expired =
            TokenIssuer::new(keys.clone(), TokenSettings { ttl: Duration::seconds(1), ..settings() });

        for (name, issuer, at) in [
            ("other key", &other_key, now),
            ("other issuer", &other_issuer, now),
            ("other audience", &other_audience, now),
            ("expired beyond leeway", &expired, now - Duration::seconds(10)),
        ] {
            let token = issuer.issue(ids.0, ids.1, at).unwrap();
            assert!(verifier.verify(&token, now).is_err(), "{name} was accepted");
        }
        let within_leeway = expired.issue(ids.0, ids.1, now - Duration::seconds(3)).unwrap();
        assert!(verifier.verify(&within_leeway, now).is_ok());
        assert_eq!(verifier.verify(&within_leeway, now + Duration::seconds(10)), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires_and_forgeries_are_never_remembered() {
        let keys = JwtKeys::generate().unwrap();
        let issuer = TokenIssuer::new(keys.clone(), settings());
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let now = chrono::Utc::now();
        let token = issuer.issue(UserId::generate(), SessionId::generate(), now).unwrap();

        let first = verifier.verify(&token, now).unwrap();
        assert_eq!(verifier.clone().verify(&token, now), Ok(first), "clones share the memory");
        assert_eq!(verifier.remembered_count(), 1);
        assert_eq!(verifier.verify(&token, now + Duration::hours(2)), Err(TokenError::Expired));

        let forged = TokenIssuer::new(JwtKeys::generate().unwrap(), settings())
            .issue(UserId::generate(), SessionId::generate(), now)
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(verifier.verify(&forged, now), Err(TokenError::Invalid(_))));
        }
        assert_eq!(verifier.remembered_count(), 1, "only genuine tokens are remembered");
    }

    #[test]
    fn the_memory_of_verified_tokens_stays_bounded() {
        let keys = JwtKeys::generate().unwrap();
        let issuer = TokenIssuer::new(keys.clone(), settings());
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let now = chrono::Utc::now();
        for _ in 0..=VERIFIED_CACHE {
            let token = issuer.issue(UserId::generate(), SessionId::generate(), now).unwrap();
            verifier.verify(&token, now).unwrap();
        }
        assert!(
            (1..=VERIFIED_CACHE).contains(&verifier.remembered_count()),
            "{}",
            verifier.remembered_count()
        );
    }

    /// Every one-byte change of a genuine token, to any ASCII byte (a header value carries no
    /// other), is refused — also once the genuine token is remembered — and none is remembered.
    #[test]
    fn every_one_byte_change_of_a_genuine_token_is_refused() {
        let keys = JwtKeys::generate().unwrap();
        let issuer = TokenIssuer::new(keys.clone(), settings());
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let now = chrono::Utc::now();
        let token = issuer.issue(UserId::generate(), SessionId::generate(), now).unwrap();
        verifier.verify(&token, now).unwrap();
        let mut changed = token.clone().into_bytes();
        for at in 0..changed.len() {
            let original = changed[at];
            for byte in (0..0x80_u8).filter(|&b| b != original) {
                changed[at] = byte;
                let text = std::str::from_utf8(&changed).unwrap();
                assert!(
                    matches!(verifier.verify(text, now), Err(TokenError::Invalid(_))),
                    "byte {at} changed to {byte:#x} was accepted"
                );
            }
            changed[at] = original;
        }
        assert_eq!(verifier.remembered_count(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes, and three arbitrary base64url segments (the shape of a token), are
        /// refused as invalid: never a panic, never taken for an expired genuine token.
        #[test]
        fn arbitrary_text_is_never_a_token(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            segments in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 3),
        ) {
            use base64::Engine as _;
            let keys = test_keys();
            let verifier = TokenVerifier::new(keys.public.clone(), &settings());
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let shaped = segments.iter().map(|s| b64.encode(s)).collect::<Vec<_>>().join(".");
            for text in [String::from_utf8_lossy(&bytes).into_owned(), shaped] {
                proptest::prop_assert!(matches!(verifier.verify(&text, now_ts()), Err(TokenError::Invalid(_))));
            }
            proptest::prop_assert_eq!(verifier.remembered_count(), 0);
        }
    }

    /// One key pair for all the cases of a property (generating is the slow part).
    fn test_keys() -> &'static JwtKeys {
        static KEYS: std::sync::OnceLock<JwtKeys> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| JwtKeys::generate().unwrap())
    }

    #[test]
    fn unsigned_and_hmac_tokens_are_refused() {
        let keys = JwtKeys::generate().unwrap();
        let verifier = TokenVerifier::new(keys.public.clone(), &settings());
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: UserId::generate().to_string(),
            sid: SessionId::generate().to_string(),
            iat: now,
            exp: now + 60,
            iss: "ifs-guide".into(),
            aud: "ifs-guide".into(),
        };
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(keys.public_pem().as_bytes()),
        )
        .unwrap();
        assert!(verifier.verify(&hmac, now_ts()).is_err());

        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert!(verifier.verify(&none, now_ts()).is_err());
        assert!(verifier.verify("not.a.token", now_ts()).is_err());
        assert!(verifier.verify("", now_ts()).is_err());
    }
}
