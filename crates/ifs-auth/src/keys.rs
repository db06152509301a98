//! Ed25519 key material for access tokens: read from PEM (deployed), or generated once and kept
//! in the data directory (local runs), so tokens survive restarts without any setup.

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret as _, SecretString};

/// File names inside the data directory.
const PRIVATE_FILE: &str = "jwt-ed25519.pem";
const PUBLIC_FILE: &str = "jwt-ed25519.pub.pem";

/// The public half: enough to verify tokens. Every non-auth function gets only this.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey(Ed25519)")
    }
}

impl PublicKey {
    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
            .context("not an Ed25519 public key PEM")?;
        let decoding = DecodingKey::from_ed_pem(pem.trim().as_bytes()).context("loading the public key")?;
        Ok(Self { decoding })
    }
}

/// Both halves: signs tokens (auth functions) and verifies them.
#[derive(Clone)]
pub struct JwtKeys {
    pub(crate) encoding: EncodingKey,
    pub public: PublicKey,
    public_pem: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(Ed25519, private key hidden)")
    }
}

impl JwtKeys {
    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) and derives the public half.
    pub fn from_private_pem(pem: &SecretString) -> anyhow::Result<Self> {
        let signing = SigningKey::from_pkcs8_pem(pem.expose_secret().trim())
            .context("not an Ed25519 private key PEM")?;
        Self::from_signing(&signing)
    }

    fn from_signing(signing: &SigningKey) -> anyhow::Result<Self> {
        let private_pem = signing.to_pkcs8_pem(LineEnding::LF).context("encoding the private key")?;
        let public_pem =
            signing.verifying_key().to_public_key_pem(LineEnding::LF).context("encoding the public key")?;
        Ok(Self {
            encoding: EncodingKey::from_ed_pem(private_pem.as_bytes()).context("loading the private key")?,
            public: PublicKey::from_pem(&public_pem)?,
            public_pem,
        })
    }

    /// A fresh random key pair.
    pub fn generate() -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Self::from_signing(&SigningKey::from_bytes(&seed))
    }

    /// The key pair kept in `dir`, generated and written (private key mode 0600) on first use.
    pub fn load_or_create_in(dir: &Path) -> anyhow::Result<Self> {
        let private_path = dir.join(PRIVATE_FILE);
        if private_path.exists() {
            let pem = std::fs::read_to_string(&private_path)
                .with_context(|| format!("reading {}", private_path.display()))?;
            return Self::from_private_pem(&pem.into()).with_context(|| {
                format!("{} is not a usable key; delete it to get a new one", private_path.display())
            });
        }
        // DATA_DIR may not exist yet: with every backend remote, nothing else creates it.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // DATA_DIR may not exist yet: with every backend remote, nothing else creates it.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let signing = SigningKey::from_bytes(&seed);
        let private_pem = signing.to_pkcs8_pem(LineEnding::LF).context("encoding the private key")?;
        write_private(&private_path, private_pem.as_bytes())?;
        let keys = Self::from_signing(&signing)?;
        std::fs::write(dir.join(PUBLIC_FILE), &keys.public_pem).context("writing the public key")?;
        Ok(keys)
    }

    #[must_use]
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(pem).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_is_kept_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = JwtKeys::load_or_create_in(dir.path()).unwrap();
        let again = JwtKeys::load_or_create_in(dir.path()).unwrap();
        assert_eq!(first.public_pem(), again.public_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(PRIVATE_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn keys_are_kept_in_a_directory_that_did_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("data").join("keys");
        let first = JwtKeys::load_or_create_in(&nested).unwrap();
        assert_eq!(JwtKeys::load_or_create_in(&nested).unwrap().public_pem(), first.public_pem());
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(
            JwtKeys::from_private_pem(&"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into())
                .is_err()
        );
        assert!(PublicKey::from_pem("hello").is_err());
    }
}
