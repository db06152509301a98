//! Crisis screening of ifs-guide. Every turn is screened before the agent is asked, behind the
//! [`Screener`] port: the built-in phrase list ([`phrases`]), which needs no model, and
//! optionally a classifier reached over HTTP ([`classifier`]), combined so that the classifier
//! can only raise a level, never lower it. [`resources`] holds the crisis lines by country and
//! the fixed crisis reply. docs/safety.md says what this is and is not.

use std::fmt::Debug;

use async_trait::async_trait;
use ifs_domain::SafetyLevel;

pub mod classifier;
pub mod eval;
pub mod phrases;
pub mod resources;

pub use classifier::Classifier;
pub use phrases::PhraseList;
pub use resources::{Directory, Line, Resources};

/// What screening a message decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screening {
    pub level: SafetyLevel,
    /// The language the deciding phrase was in, if a phrase decided.
    pub language: Option<&'static str>,
    /// Which screeners decided, with their versions: what the safety counters are kept by.
    pub screener: String,
}

/// Screens what a person writes and what the agent answers. Screening never fails: a screener
/// that cannot reach a part of itself answers with what it has and says so in
/// [`Screening::screener`].
#[async_trait]
pub trait Screener: Send + Sync + Debug + 'static {
    /// Screens a person's message before the agent sees it.
    async fn screen_message(&self, text: &str) -> Screening;
    /// Whether `reply` (to `message`) encourages or instructs self-harm and must not be given.
    async fn reply_is_unsafe(&self, message: &str, reply: &str) -> bool;
}

/// The built-in phrase list alone.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn(pub &'static PhraseList);

impl Default for BuiltIn {
    fn default() -> Self {
        Self(PhraseList::built_in())
    }
}

impl BuiltIn {
    /// Its name in counters: `builtin-<list version>`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("builtin-{}", self.0.version())
    }
}

#[async_trait]
impl Screener for BuiltIn {
    async fn screen_message(&self, text: &str) -> Screening {
        let found = self.0.screen_message(text);
        Screening { level: found.level, language: found.language, screener: self.name() }
    }

    async fn reply_is_unsafe(&self, _message: &str, reply: &str) -> bool {
        self.0.reply_is_unsafe(reply).is_some()
    }
}

/// The built-in list, then the classifier if there is one; the higher level wins. A classifier
/// that times out, fails or answers junk leaves the built-in list's verdict standing (fail open,
/// docs/safety.md says why), and the counters say so (`builtin-…+classifier-unavailable`).
#[derive(Debug)]
pub struct Combined {
    pub built_in: BuiltIn,
    pub classifier: Option<Classifier>,
}

#[async_trait]
impl Screener for Combined {
    async fn screen_message(&self, text: &str) -> Screening {
        let mut screening = self.built_in.screen_message(text).await;
        let Some(classifier) = &self.classifier else { return screening };
        match classifier.classify(&[("user", text)]).await {
            Ok(level) => {
                screening.screener.push_str("+classifier");
                if level > screening.level {
                    screening.level = level;
                    screening.language = None;
                }
            }
            Err(error) => {
                tracing::warn!(event = "safety_classifier_unavailable", error = %error, "the safety classifier did not answer; the built-in list decided");
                screening.screener.push_str("+classifier-unavailable");
            }
        }
        screening
    }

    async fn reply_is_unsafe(&self, message: &str, reply: &str) -> bool {
        if self.built_in.reply_is_unsafe(message, reply).await {
            return true;
        }
        let Some(classifier) = &self.classifier else { return false };
        match classifier.classify(&[("user", message), ("assistant", reply)]).await {
            Ok(level) => level == SafetyLevel::Crisis,
            Err(error) => {
                tracing::warn!(event = "safety_classifier_unavailable", error = %error, "the safety classifier did not answer on a reply; the built-in list decided");
                false
            }
        }
    }
}
