//! Crisis lines by country (`data/resources.toml`), which country a person is in, and the fixed
//! crisis reply in their language.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

const BUILT_IN: &str = include_str!("../data/resources.toml");

static DIRECTORY: LazyLock<Directory> =
    LazyLock::new(|| Directory::parse(BUILT_IN).expect("data/resources.toml parses (a test checks it)"));

/// One crisis line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub name: String,
    /// To call, as the service writes it; a client dials its digits (`tel:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// To text, where the service takes text messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<String>,
}

/// The crisis resources of one country (or the international fallback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// ISO 3166-1 alpha-2; absent for the international fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub name: String,
    /// The emergency number to call in immediate danger.
    pub emergency: String,
    pub lines: Vec<Line>,
    /// Where these numbers were taken from.
    pub source: String,
    /// When they were last checked against `source` (YYYY-MM-DD).
    pub checked: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    emergency: String,
    crisis: String,
    #[serde(default)]
    elevated: Option<String>,
}

/// Every country's resources and the crisis reply in every language.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    fallback: Resources,
    country: BTreeMap<String, Resources>,
    message: BTreeMap<String, Message>,
}

impl Directory {
    /// The directory shipped in `data/resources.toml`.
    #[must_use]
    pub fn built_in() -> &'static Self {
        &DIRECTORY
    }

    /// Parses a directory written as `data/resources.toml` is.
    ///
    /// # Errors
    /// What is not TOML of that shape, or a language without its crisis reply.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut directory: Self = toml::from_str(text).context("reading the crisis resources")?;
        for (code, resources) in &mut directory.country {
            resources.country = Some(code.clone());
        }
        anyhow::ensure!(directory.message.contains_key("en"), "the crisis reply in English is missing");
        Ok(directory)
    }

    /// Whether the directory has resources of its own for `country` (ISO alpha-2, any case).
    #[must_use]
    pub fn knows(&self, country: &str) -> bool {
        self.country.contains_key(&country.to_ascii_uppercase())
    }

    /// The resources of `country`, or the international fallback.
    #[must_use]
    pub fn for_country(&self, country: Option<&str>) -> &Resources {
        country.and_then(|code| self.country.get(&code.to_ascii_uppercase())).unwrap_or(&self.fallback)
    }

    /// Every country's resources, then the fallback.
    pub fn all(&self) -> impl Iterator<Item = &Resources> {
        self.country.values().chain([&self.fallback])
    }

    /// The first country of an `Accept-Language` header, by preference, that the directory has
    /// resources for: `en-GB` names the United Kingdom; a language alone (`de`) names no country.
    #[must_use]
    pub fn country_from_accept_language(&self, header: &str) -> Option<String> {
        ranges(header).into_iter().find_map(|range| {
            let region = range.split(['-', '_']).nth(1)?;
            (region.len() == 2 && self.knows(region)).then(|| region.to_ascii_uppercase())
        })
    }

    /// The language to answer in: `preferred` if the directory has the crisis reply in it,
    /// else the first of `Accept-Language` it has, else English.
    #[must_use]
    pub fn language<'a>(&'a self, preferred: Option<&str>, accept_language: Option<&str>) -> &'a str {
        let known = |code: &str| self.message.get_key_value(code).map(|(code, _)| code.as_str());
        preferred
            .and_then(known)
            .or_else(|| {
                ranges(accept_language.unwrap_or_default()).into_iter().find_map(|range| {
                    let primary = range.split(['-', '_']).next()?.to_ascii_lowercase();
                    known(&primary)
                })
            })
            .unwrap_or("en")
    }

    /// The fixed crisis reply in `language` with `resources` written into it.
    #[must_use]
    pub fn crisis_reply(&self, language: &str, resources: &Resources) -> String {
        let message = self
            .message
            .get(language)
            .or_else(|| self.message.get("en"))
            .unwrap_or_else(|| unreachable!("parse checks the English reply is there"));
        let emergency = if resources.country.is_some() { &resources.emergency } else { &message.emergency };
        let lines: Vec<String> = resources.lines.iter().map(line_text).collect();
        message.crisis.trim().replace("{emergency}", emergency).replace("{lines}", &lines.join("\n"))
    }

    /// What the agent is told, besides its system prompt, on an elevated turn.
    #[must_use]
    pub fn elevated_instruction(&self) -> &str {
        self.message.get("en").and_then(|m| m.elevated.as_deref()).unwrap_or_default()
    }
}

/// One line of the crisis reply for `line`: "- name: 988 (call or text) · url".
fn line_text(line: &Line) -> String {
    let mut text = format!("- {}", line.name);
    match (&line.phone, &line.sms) {
        (Some(phone), Some(sms)) if phone == sms => text.push_str(&format!(": {phone} (call or text)")),
        (Some(phone), Some(sms)) => text.push_str(&format!(": {phone}, text {sms}")),
        (Some(phone), None) => text.push_str(&format!(": {phone}")),
        (None, Some(sms)) => text.push_str(&format!(": text {sms}")),
        (None, None) => {}
    }
    if let Some(hours) = &line.hours {
        text.push_str(&format!(" ({hours})"));
    }
    text.push_str(&format!(" — {}", line.url));
    text
}

/// The language ranges of an `Accept-Language` header, most preferred first (`q=0` left out).
fn ranges(header: &str) -> Vec<String> {
    let mut ranges: Vec<(u16, usize, String)> = header
        .split(',')
        .enumerate()
        .filter_map(|(order, part)| {
            let mut pieces = part.split(';');
            let range = pieces.next()?.trim();
            if range.is_empty() || range == "*" || range.len() > 35 {
                return None;
            }
            let quality = pieces.find_map(|p| p.trim().strip_prefix("q=")).map_or(Some(1000), |q| {
                q.trim().parse::<f32>().ok().map(|q| (q.clamp(0.0, 1.0) * 1000.0) as u16)
            })?;
            (quality > 0).then(|| (quality, order, range.to_owned()))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges.into_iter().map(|(_, _, range)| range).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_directory_has_every_required_country_each_with_a_source_and_a_checked_date() {
        let directory = Directory::built_in();
        for (code, phone) in [
            ("US", "988"),
            ("CA", "988"),
            ("GB", "116 123"),
            ("IE", "116 123"),
            ("AU", "13 11 14"),
            ("DE", "0800 111 0 111"),
            ("FR", "3114"),
            ("ES", "024"),
            ("BR", "188"),
        ] {
            let resources = directory.for_country(Some(code));
            assert_eq!(resources.country.as_deref(), Some(code));
            assert!(resources.lines.iter().any(|l| l.phone.as_deref() == Some(phone)), "{code}");
        }
        for resources in directory.all() {
            assert!(resources.source.starts_with("https://"), "{}", resources.name);
            assert!(resources.lines.iter().all(|l| l.url.starts_with("https://")), "{}", resources.name);
            let checked = chrono_like(&resources.checked);
            assert!(checked.is_some(), "{}: checked {:?}", resources.name, resources.checked);
        }
        assert!(directory.for_country(None).lines[0].url.contains("findahelpline.com"));
        assert_eq!(directory.for_country(Some("zz")).country, None);
    }

    fn chrono_like(date: &str) -> Option<()> {
        let mut parts = date.split('-').map(|p| p.parse::<u32>().ok());
        let (year, month, day) = (parts.next()??, parts.next()??, parts.next()??);
        ((2025..=2100).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)).then_some(())
    }

    #[test]
    fn the_country_comes_from_the_most_preferred_region_the_directory_knows() {
        let directory = Directory::built_in();
        assert_eq!(directory.country_from_accept_language("en-GB,en;q=0.9"), Some("GB".into()));
        assert_eq!(directory.country_from_accept_language("de"), None);
        assert_eq!(directory.country_from_accept_language("fr;q=0.9, pt-BR"), Some("BR".into()));
        assert_eq!(directory.country_from_accept_language("en-US;q=0, es-ES;q=0.5"), Some("ES".into()));
        assert_eq!(directory.country_from_accept_language("xx-ZZ, ,;;q=oops, *"), None);
    }

    #[test]
    fn the_crisis_reply_is_in_the_persons_language_with_their_lines_and_emergency_number() {
        let directory = Directory::built_in();
        let reply = directory.crisis_reply("de", directory.for_country(Some("DE")));
        assert!(
            reply.contains("0800 111 0 111") && reply.contains("112") && reply.contains("Danke"),
            "{reply}"
        );
        let fallback = directory.crisis_reply("xx", directory.for_country(None));
        assert!(fallback.contains("findahelpline.com") && fallback.contains("local emergency number"));
        assert!(!fallback.contains('{'), "every placeholder is filled: {fallback}");
        assert_eq!(directory.language(Some("pt"), None), "pt");
        assert_eq!(directory.language(None, Some("da, fr-CA;q=0.8")), "fr");
        assert_eq!(directory.language(Some("zz"), None), "en");
    }
}
