//! Credentials as parsed values: an `Email` is trimmed, lowercased and valid; a `Password` has an
//! acceptable length and never shows itself in logs.

use secrecy::{ExposeSecret, SecretString};

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
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let normalised = raw.trim().to_lowercase();
        if normalised.is_empty() {
            return Err(EmailError::Empty);
        }
        if normalised.chars().count() > EMAIL_MAX {
            return Err(EmailError::TooLong);
        }
        // The library accepts display-name and comment forms that no one types into a login form.
        if normalised.contains(['<', '>', '(', ')', ' '])
            || !email_address::EmailAddress::is_valid(&normalised)
        {
            return Err(EmailError::Invalid);
        }
        Ok(Self(normalised))
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
