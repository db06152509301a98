//! What the safety screening of a turn decided, as a reply keeps it: the level, and the country
//! whose crisis resources went with it. The screening itself lives in `ifs-safety`.

use serde::{Deserialize, Serialize};

/// What ifs-guide is not, said where people meet it: `GET /api/v1/agent`, the README, the page.
pub const DISCLAIMER: &str = "ifs-guide is an AI companion for reflecting on your inner parts. It is not a \
therapist, not medical advice and not a crisis service. If you are in danger or thinking about ending your \
life, call your local emergency number or a crisis line now; messages that say so are answered with crisis \
lines instead of the AI, but no automatic check catches everything.";

/// How much a turn's screening found, lowest first.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SafetyLevel {
    /// Nothing found.
    #[default]
    None,
    /// Distress, or someone else at risk: the agent answers with care, resources attached.
    Elevated,
    /// A person at risk now: the agent is not asked; a fixed reply gives crisis resources.
    Crisis,
}

impl SafetyLevel {
    /// Every level, lowest first.
    pub const ALL: [Self; 3] = [Self::None, Self::Elevated, Self::Crisis];

    /// The level's name in the API and in counters.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Elevated => "elevated",
            Self::Crisis => "crisis",
        }
    }

    /// The level named `name`, as [`as_str`](Self::as_str) writes it.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == name)
    }
}

impl std::fmt::Display for SafetyLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The screening kept on a reply that carries crisis resources (elevated or crisis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyNote {
    pub level: SafetyLevel,
    /// The ISO 3166-1 alpha-2 code whose resources were given; absent for the international
    /// fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A country, as an ISO 3166-1 alpha-2 code (two letters, kept upper case): which crisis lines a
/// person is given. A country without lines of its own gets the international ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Country(String);

/// Why a country was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a two-letter ISO 3166-1 country code, such as GB or DE")]
pub struct CountryError;

impl Country {
    /// Parses a two-letter code, in either case.
    ///
    /// # Errors
    /// Anything but two ASCII letters.
    pub fn parse(code: &str) -> Result<Self, CountryError> {
        let code = code.trim();
        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self(code.to_ascii_uppercase()))
        } else {
            Err(CountryError)
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Country {
    type Error = CountryError;
    fn try_from(code: String) -> Result<Self, CountryError> {
        Self::parse(&code)
    }
}

impl From<Country> for String {
    fn from(country: Country) -> Self {
        country.0
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_named_as_the_api_names_them() {
        assert!(SafetyLevel::None < SafetyLevel::Elevated && SafetyLevel::Elevated < SafetyLevel::Crisis);
        for level in SafetyLevel::ALL {
            assert_eq!(SafetyLevel::parse(level.as_str()), Some(level));
            assert_eq!(serde_json_name(level), level.as_str());
        }
        assert_eq!(SafetyLevel::parse("Crisis"), None);
    }

    #[test]
    fn a_country_is_two_letters_kept_upper_case() {
        assert_eq!(Country::parse("gb").unwrap().as_str(), "GB");
        assert_eq!(Country::parse(" De ").unwrap().as_str(), "DE");
        for bad in ["", "G", "GBR", "G1", "ÉS", "12"] {
            assert_eq!(Country::parse(bad), Err(CountryError), "{bad:?}");
        }
        assert!(serde_json::from_str::<Country>("\"xyz\"").is_err());
    }

    fn serde_json_name(level: SafetyLevel) -> String {
        serde_json::to_value(level).unwrap().as_str().unwrap().to_owned()
    }
}
