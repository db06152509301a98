//! What the safety screening of a turn decided, as a reply keeps it: the level, and the country
//! whose crisis resources went with it. The screening itself lives in `ifs-safety`.

use serde::{Deserialize, Serialize};

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

    fn serde_json_name(level: SafetyLevel) -> String {
        serde_json::to_value(level).unwrap().as_str().unwrap().to_owned()
    }
}
