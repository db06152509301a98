//! Access tokens: EdDSA JWTs whose claims name the user (`sub`) and the session (`sid`).
//! Verification accepts only EdDSA and checks issuer, audience and expiry.

use chrono::Duration;
use ifs_domain::{SessionId, Timestamp, UserId};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{JwtKeys, PublicKey};

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECONDS: i64 = 5;

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

/// Checks signatures and claims; every protected function has one.
#[derive(Clone)]
pub struct TokenVerifier {
    key: PublicKey,
    validation: Validation,
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
        Self { key, validation }
    }

    /// The claims of a genuine token that has not expired at `now` (give or take the leeway).
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?
            .claims;
        if claims.exp.saturating_add(LEEWAY_SECONDS) <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
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
