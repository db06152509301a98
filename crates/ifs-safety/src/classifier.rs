//! A safety classifier reached over HTTP: an OpenAI-compatible chat endpoint serving a guard
//! model such as Llama Guard 3 under llama-server (`SAFETY_URL`). It answers `safe`, or `unsafe`
//! and the categories on the next line; category S11 (suicide and self-harm) is a crisis. Llama
//! Guard's S11 judges content that enables or encourages self-harm, not a person disclosing risk,
//! which is why it only adds to the built-in list and never overrules it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ifs_domain::SafetyLevel;
use serde::Deserialize;

/// The category of Llama Guard 3's taxonomy for suicide and self-harm.
const SELF_HARM: &str = "S11";

/// The classifier's endpoint and how long a screening may wait for it.
#[derive(Debug, Clone)]
pub struct Classifier {
    client: reqwest::Client,
    url: reqwest::Url,
    model: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Answer {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Reply,
}

#[derive(Deserialize)]
struct Reply {
    content: Option<String>,
}

impl Classifier {
    /// A classifier at `url` (the chat-completions URL itself), asked for `model`, waited for at
    /// most `timeout` per screening.
    ///
    /// # Errors
    /// A URL that is not http(s).
    pub fn new(url: &str, model: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url: reqwest::Url = url.parse().with_context(|| format!("SAFETY_URL {url:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("SAFETY_URL must be http or https, not {}", url.scheme());
        }
        let client =
            reqwest::Client::builder().timeout(timeout).build().context("building the HTTP client")?;
        Ok(Self { client, url, model: model.to_owned(), timeout })
    }

    /// The level the classifier gives the last of `turns` (role, text): crisis for S11, none
    /// otherwise.
    ///
    /// # Errors
    /// No answer within the timeout, an error status, or an answer that is neither `safe` nor
    /// `unsafe`.
    pub async fn classify(&self, turns: &[(&str, &str)]) -> anyhow::Result<SafetyLevel> {
        let messages: Vec<_> = turns
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        let body = serde_json::json!({
            "model": self.model, "messages": messages, "max_tokens": 16, "temperature": 0,
        });
        let ask = async {
            let response = self.client.post(self.url.clone()).json(&body).send().await?.error_for_status()?;
            response.json::<Answer>().await
        };
        let answer = tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))?
            .context("asking the safety classifier")?;
        let content = answer.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
        verdict(&content)
    }
}

/// Reads Llama Guard's answer.
fn verdict(content: &str) -> anyhow::Result<SafetyLevel> {
    let mut lines = content.trim().lines();
    match lines.next().map(|first| first.trim().to_ascii_lowercase()).as_deref() {
        Some("safe") => Ok(SafetyLevel::None),
        Some("unsafe") => {
            let categories = lines.next().unwrap_or_default();
            Ok(if categories.split(',').any(|c| c.trim().eq_ignore_ascii_case(SELF_HARM)) {
                SafetyLevel::Crisis
            } else {
                SafetyLevel::None
            })
        }
        _ => bail!("the safety classifier answered neither safe nor unsafe"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_guard_answers_are_read_and_anything_else_is_an_error() {
        assert_eq!(verdict("safe").unwrap(), SafetyLevel::None);
        assert_eq!(verdict("\n\nunsafe\nS11").unwrap(), SafetyLevel::Crisis);
        assert_eq!(verdict("unsafe\nS1,S11").unwrap(), SafetyLevel::Crisis);
        assert_eq!(verdict("unsafe\nS2").unwrap(), SafetyLevel::None);
        assert!(verdict("I think this is fine").is_err());
        assert!(verdict("").is_err());
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Classifier::new("ftp://x/", "m", Duration::from_secs(1)).is_err());
        assert!(Classifier::new("not a url", "m", Duration::from_secs(1)).is_err());
        assert!(
            Classifier::new("http://127.0.0.1:1/v1/chat/completions", "m", Duration::from_secs(1)).is_ok()
        );
    }
}
