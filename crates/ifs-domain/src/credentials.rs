//! Credentials as parsed values: an `Email` is normalised (NFKC, trimmed, lowercased), visible
//! and of the plain `name@domain.tld` form; a `Password` has an acceptable length and never shows
//! itself in logs.

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization as _;

use crate::text::is_hidden;

/// Longest address accepted (RFC 5321 path limit).
const EMAIL_MAX: usize = 254;
/// Password length bounds, in characters (not bytes): NIST 800-63B style, no composition rules.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// A syntactically valid, normalised email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Email(String);

impl TryFrom<String> for Email {
    type Error = EmailError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> Self {
        email.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {EMAIL_MAX} characters")]
    TooLong,
    #[error("is not a valid email address")]
    Invalid,
    #[error("must not contain invisible, control or formatting characters")]
    Hidden,
    #[error("quoted names are not accepted")]
    Quoted,
    #[error("the domain must be a name with a dot, like example.com, not an address or a single word")]
    UnsupportedDomain,
}

impl Email {
    /// Normalises and checks an address. NFKC folds compatibility forms (fullwidth letters,
    /// ligatures) into the plain letters people mean, so `ａｄａ@example.com` is `ada@example.com`
    /// and cannot become a second account beside it; what normalisation cannot fold — invisible
    /// characters, quoted names, IP literals, dotless domains — is refused.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let folded: String = if raw.is_ascii() {
            // NFKC leaves ASCII as it is: the same result without two passes through the
            // normaliser (stored addresses are read back through here on every request).
            raw.trim().to_ascii_lowercase()
        } else {
            raw.nfkc().collect::<String>().trim().to_lowercase().nfkc().collect()
        };
        if folded.is_empty() {
            return Err(EmailError::Empty);
        }
        if folded.chars().count() > EMAIL_MAX {
            return Err(EmailError::TooLong);
        }
        if folded.chars().any(is_hidden) {
            return Err(EmailError::Hidden);
        }
        let Some((local, domain)) = folded.rsplit_once('@') else { return Err(EmailError::Invalid) };
        if local.contains('"') {
            return Err(EmailError::Quoted);
        }
        if domain.starts_with('[') {
            return Err(EmailError::UnsupportedDomain);
        }
        // The library accepts display-name and comment forms that no one types into a login form.
        if folded.contains(['<', '>', '(', ')', ' '])
            || domain.split('.').any(str::is_empty)
            || !email_address::EmailAddress::is_valid(&folded)
        {
            return Err(EmailError::Invalid);
        }
        let top_level = domain.rsplit('.').next().unwrap_or_default();
        if !domain.contains('.') || top_level.chars().all(|c| c.is_ascii_digit()) {
            return Err(EmailError::UnsupportedDomain);
        }
        Ok(Self(folded))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password of acceptable length; `Debug` prints nothing of it.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {PASSWORD_MIN} characters")]
    TooShort,
    #[error("must be at most {PASSWORD_MAX} characters")]
    TooLong,
}

impl Password {
    /// Checks the length a new password must have (sign-up).
    pub fn parse(raw: String) -> Result<Self, PasswordError> {
        match raw.chars().count() {
            n if n < PASSWORD_MIN => Err(PasswordError::TooShort),
            n if n > PASSWORD_MAX => Err(PasswordError::TooLong),
            _ => Ok(Self(raw.into())),
        }
    }

    /// Wraps a password offered at login without judging it: a wrong password must cost the same
    /// work as a right one, so only the hash comparison may reject it.
    #[must_use]
    pub fn offered(raw: String) -> Self {
        Self(raw.into())
    }

    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(Email::parse("  Ada@Example.COM \n").unwrap().as_str(), "ada@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        let cases = [
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            ("ada", EmailError::Invalid),
            ("ada@", EmailError::Invalid),
            ("@example.com", EmailError::Invalid),
            ("ada @example.com", EmailError::Invalid),
            ("Ada <ada@example.com>", EmailError::Invalid),
        ];
        for (raw, expected) in cases {
            assert_eq!(Email::parse(raw), Err(expected), "{raw:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }

    #[test]
    fn look_alike_forms_fold_into_the_address_people_mean() {
        for raw in [
            "ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ",
            "ADA@EXAMPLE.COM",
            "ada＠example.com",
            " ada@example.com\u{3000}",
        ] {
            assert_eq!(Email::parse(raw).map(|e| e.0), Ok("ada@example.com".to_owned()), "{raw:?}");
        }
        // The "fi" ligature is two letters to a reader, and so it becomes.
        assert_eq!(Email::parse("\u{FB01}@example.com").unwrap().as_str(), "fi@example.com");
    }

    #[test]
    fn addresses_that_could_pass_for_another_are_refused() {
        let cases = [
            ("ada\u{200B}@example.com", EmailError::Hidden),
            ("ada@exam\u{00AD}ple.com", EmailError::Hidden),
            ("\u{202E}ada@example.com", EmailError::Hidden),
            ("ada\u{FE0F}@example.com", EmailError::Hidden),
            ("ada\u{0007}@example.com", EmailError::Hidden),
            ("\"ada\"@example.com", EmailError::Quoted),
            ("\"a@b\"@example.com", EmailError::Quoted),
            ("ada@[127.0.0.1]", EmailError::UnsupportedDomain),
            ("ada@[IPv6:::1]", EmailError::UnsupportedDomain),
            ("ada@localhost", EmailError::UnsupportedDomain),
            ("ada@10.0.0.1", EmailError::UnsupportedDomain),
            ("ada@example..com", EmailError::Invalid),
            ("ada@.example.com", EmailError::Invalid),
            ("ada@example.com.", EmailError::Invalid),
        ];
        for (raw, expected) in cases {
            assert_eq!(Email::parse(raw), Err(expected), "{raw:?}");
        }
        assert!(Email::parse("josé@exämple.de").is_ok(), "international addresses stay welcome");
    }

    #[test]
    fn password_length_counts_characters_not_bytes() {
        // Seven two-byte characters: 14 bytes but only 7 characters.
        assert_eq!(Password::parse("ééééééé".into()).unwrap_err(), PasswordError::TooShort);
        assert!(Password::parse("éééééééé".into()).is_ok());
        assert!(Password::parse("🦀".repeat(128)).is_ok());
        assert_eq!(Password::parse("🦀".repeat(129)).unwrap_err(), PasswordError::TooLong);
    }

    #[test]
    fn passwords_are_kept_whole() {
        let raw = format!("{} tail", "x".repeat(120));
        assert_eq!(Password::parse(raw.clone()).unwrap().expose(), raw);
    }

    #[test]
    fn debug_output_hides_the_password() {
        let printed = format!("{:?}", Password::parse("correct horse".into()).unwrap());
        assert!(!printed.contains("correct"), "{printed}");
    }
}
