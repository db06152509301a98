//! Password hashing with Argon2id (m = 19 MiB, t = 2, p = 1, the OWASP baseline), always off the
//! async runtime because one hash takes tens of milliseconds of CPU.

use std::sync::Arc;

use anyhow::Context as _;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use ifs_domain::Password;

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// Verified against when the user does not exist, so that an unknown email costs the same
    /// time as a wrong password and timing does not reveal who has an account.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).finish_non_exhaustive()
    }
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    /// The production parameters. Computes the dummy hash, which takes one hash's time.
    pub fn new() -> anyhow::Result<Self> {
        let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let dummy = argon2(params.clone())
            .hash_password(b"not anyone's password")
            .map_err(|e| anyhow::anyhow!("hashing the dummy password: {e}"))?
            .to_string();
        Ok(Self { params, dummy_hash: dummy.into() })
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for a new password.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let params = self.params.clone();
        let password = password.clone();
        tokio::task::spawn_blocking(move || {
            argon2(params)
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
        })
        .await
        .context("hashing task panicked")?
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown user) it verifies
    /// against the dummy hash and answers `false`, doing the same work either way.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> anyhow::Result<bool> {
        let known = stored.is_some();
        let hash: String = stored.unwrap_or(&self.dummy_hash).to_owned();
        let params = self.params.clone();
        let password = password.clone();
        let matched = tokio::task::spawn_blocking(move || {
            argon2(params).verify_password(password.expose().as_bytes(), hash.as_str()).is_ok()
        })
        .await
        .context("verifying task panicked")?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let hasher = PasswordHasher::new().unwrap();
        let right = Password::parse("correct horse battery".into()).unwrap();
        let wrong = Password::offered("correct horse battery!".into());
        let hash = hasher.hash(&right).await.unwrap();

        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify(&right, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap());
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let hasher = PasswordHasher::new().unwrap();
        let password = Password::parse("same same same".into()).unwrap();
        assert_ne!(hasher.hash(&password).await.unwrap(), hasher.hash(&password).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_not_even_with_the_dummy_password() {
        let hasher = PasswordHasher::new().unwrap();
        let dummy = Password::offered("not anyone's password".into());
        assert!(!hasher.verify(&dummy, None).await.unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_does_not_verify() {
        let hasher = PasswordHasher::new().unwrap();
        let password = Password::offered("whatever it is".into());
        assert!(!hasher.verify(&password, Some("not a phc string")).await.unwrap());
    }
}
