//! The built-in screener: the reviewed phrase list in `data/phrases.txt`, matched with care for
//! negation ("I don't want to die"), distance (fiction, lyrics, history, a clinician's notes) and
//! figures of speech ("this deadline is killing me"), plus sentence rules for wording no phrase
//! foresaw. It needs no model and no network, cannot be down, and is the floor every deployment
//! has.

use std::collections::HashSet;
use std::sync::LazyLock;

use anyhow::{Context as _, bail};
use ifs_domain::SafetyLevel;
use regex::Regex;
use unicode_normalization::UnicodeNormalization as _;

/// The list as shipped.
const BUILT_IN: &str = include_str!("../data/phrases.txt");

static LIST: LazyLock<PhraseList> =
    LazyLock::new(|| PhraseList::parse(BUILT_IN).expect("data/phrases.txt parses (a test checks it)"));

/// What a pattern is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Crisis,
    Elevated,
    Reply,
    /// A word of self-harm that, said of oneself in a sentence, is a crisis.
    Strong,
    /// A word of dying that is a crisis said of oneself with a word of intent.
    Weak,
}

#[derive(Debug)]
struct Pattern {
    kind: Kind,
    /// Written with `!`: carries its own negation or speaks of an inner voice, so neither the
    /// negation nor the distance rule applies.
    strict: bool,
    regex: Regex,
    /// Its line in the list, to say which one matched.
    line: usize,
}

#[derive(Debug)]
struct Language {
    code: &'static str,
    negation: HashSet<String>,
    distance: Option<Regex>,
    own: Option<Regex>,
    idioms: Vec<Regex>,
    patterns: Vec<Pattern>,
    /// "I" as the subject of a sentence, for the sentence rules.
    selves: Option<Regex>,
    /// Wanting, planning, longing: what makes a weak word a crisis.
    intent: Option<Regex>,
}

/// What the list found in one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub level: SafetyLevel,
    /// The language of the pattern that decided, if one did.
    pub language: Option<&'static str>,
    /// The line of `data/phrases.txt` that decided, if one did.
    pub line: Option<usize>,
}

/// A parsed phrase list.
#[derive(Debug)]
pub struct PhraseList {
    version: String,
    languages: Vec<Language>,
}

/// The languages the list covers, as their codes.
pub const LANGUAGES: [&str; 5] = ["en", "es", "de", "fr", "pt"];

impl PhraseList {
    /// The list shipped in `data/phrases.txt`.
    #[must_use]
    pub fn built_in() -> &'static Self {
        &LIST
    }

    /// The list's version, as `data/phrases.txt` states it.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The longest stretch of text one pattern can span, in characters, roughly: a streamed
    /// reply holds back this much so that a match is seen before any of it is sent.
    pub const REACH: usize = 160;

    /// Parses a list written as `data/phrases.txt` describes.
    ///
    /// # Errors
    /// A line that is not `key: value`, an unknown key or language, or a pattern that does not
    /// compile, each named by its line.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut version = None;
        let mut languages: Vec<Language> = Vec::new();
        let mut me: Option<String> = None;
        let (mut distance, mut own): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        let finish = |language: &mut Language, distance: &mut Vec<String>, own: &mut Vec<String>| {
            language.distance = words(distance);
            language.own = words(own);
            distance.clear();
            own.clear();
        };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(code) = trimmed.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                if let Some(last) = languages.last_mut() {
                    finish(last, &mut distance, &mut own);
                }
                let code = LANGUAGES
                    .into_iter()
                    .find(|known| *known == code)
                    .with_context(|| format!("line {line}: unknown language {code}"))?;
                languages.push(Language {
                    code,
                    negation: HashSet::new(),
                    distance: None,
                    own: None,
                    idioms: Vec::new(),
                    patterns: Vec::new(),
                    selves: None,
                    intent: None,
                });
                me = None;
                continue;
            }
            let (key, value) =
                trimmed.split_once(": ").with_context(|| format!("line {line}: not `key: value`"))?;
            if key == "version" {
                version = Some(value.to_owned());
                continue;
            }
            let language =
                languages.last_mut().with_context(|| format!("line {line}: before any [language]"))?;
            let compile = |pattern: &str| -> anyhow::Result<Regex> {
                let mut expanded =
                    pattern.replace("{gap}", "(?:[\\w'-]+ ){0,3}").replace("{gap1}", "(?:[\\w'-]+ )?");
                if expanded.contains("{me}") {
                    let me = me.as_deref().with_context(|| format!("line {line}: {{me}} before `me:`"))?;
                    expanded = expanded.replace("{me}", &format!("\\b{me}"));
                }
                Regex::new(&expanded).with_context(|| format!("line {line}: the pattern does not compile"))
            };
            let (kind, strict) = match key {
                "me" => {
                    me = Some(value.to_owned());
                    continue;
                }
                "negation" => {
                    language.negation.extend(value.split('|').map(str::to_owned));
                    continue;
                }
                "distance" => {
                    distance.extend(value.split('|').map(str::to_owned));
                    continue;
                }
                "own" => {
                    own.extend(value.split('|').map(str::to_owned));
                    continue;
                }
                "idiom" => {
                    language.idioms.push(compile(value)?);
                    continue;
                }
                "self" => {
                    language.selves = Some(compile(&format!("\\b(?:{value})\\b"))?);
                    continue;
                }
                "intent" => {
                    language.intent = Some(compile(&format!("\\b(?:{value})"))?);
                    continue;
                }
                "strong" => (Kind::Strong, false),
                "weak" => (Kind::Weak, false),
                "weak!" => (Kind::Weak, true),
                "crisis" => (Kind::Crisis, false),
                "crisis!" => (Kind::Crisis, true),
                "elevated" => (Kind::Elevated, false),
                "elevated!" => (Kind::Elevated, true),
                "reply" => (Kind::Reply, false),
                "reply!" => (Kind::Reply, true),
                other => bail!("line {line}: unknown key {other}"),
            };
            language.patterns.push(Pattern { kind, strict, regex: compile(value)?, line });
        }
        if let Some(last) = languages.last_mut() {
            finish(last, &mut distance, &mut own);
        }
        let version = version.context("the list states no `version`")?;
        Ok(Self { version, languages })
    }

    /// Screens a person's message.
    #[must_use]
    pub fn screen_message(&self, text: &str) -> Finding {
        self.screen(text, &[Kind::Crisis, Kind::Elevated])
    }

    /// Whether a reply of the agent encourages or instructs self-harm.
    #[must_use]
    pub fn reply_is_unsafe(&self, text: &str) -> Option<Finding> {
        let found = self.screen(text, &[Kind::Reply]);
        (found.level != SafetyLevel::None).then_some(found)
    }

    fn screen(&self, text: &str, kinds: &[Kind]) -> Finding {
        let text = normalize(text);
        let mut best = Finding { level: SafetyLevel::None, language: None, line: None };
        for language in &self.languages {
            let cleaned = language
                .idioms
                .iter()
                .fold(text.clone(), |text, idiom| idiom.replace_all(&text, " ~ ").into_owned());
            let own = language.own.as_ref().is_some_and(|own| own.is_match(&cleaned));
            for pattern in language.patterns.iter().filter(|p| kinds.contains(&p.kind)) {
                let level = match pattern.kind {
                    Kind::Elevated => SafetyLevel::Elevated,
                    Kind::Crisis | Kind::Reply => SafetyLevel::Crisis,
                    // Read by the sentence rules below.
                    Kind::Strong | Kind::Weak => continue,
                };
                if level <= best.level {
                    continue;
                }
                let counts = pattern.regex.find_iter(&cleaned).any(|found| {
                    pattern.strict
                        || (!language.negated(&cleaned, found.start(), found.end())
                            && (own || !language.distanced(&cleaned, found.start())))
                });
                if counts {
                    best = Finding { level, language: Some(language.code), line: Some(pattern.line) };
                }
            }
            if best.level < SafetyLevel::Crisis
                && kinds.contains(&Kind::Crisis)
                && let Some(line) = language.sentence_rules(&cleaned, own)
            {
                best =
                    Finding { level: SafetyLevel::Crisis, language: Some(language.code), line: Some(line) };
            }
        }
        best
    }
}

impl Language {
    /// The sentence rules, beside the phrases: in one sentence whose subject is the writer, a
    /// strong word (suicidal, overdose), or a weak one (die, not alive) with a word of intent
    /// (want, plan, begging, no reason), each not negated and not at a distance. Answers the
    /// line of the word's pattern.
    fn sentence_rules(&self, text: &str, own: bool) -> Option<usize> {
        let (selves, intent) = (self.selves.as_ref()?, self.intent.as_ref());
        let mut start = 0;
        for end in text.match_indices(['.', '!', '?', ';', '\n']).map(|(at, _)| at).chain([text.len()]) {
            let sentence = &text[start..end];
            let offset = start;
            start = (end + 1).min(text.len());
            if !selves.is_match(sentence) {
                continue;
            }
            let intended = intent.is_some_and(|intent| intent.is_match(sentence));
            for pattern in &self.patterns {
                let wanted = match pattern.kind {
                    Kind::Strong => true,
                    Kind::Weak => intended,
                    _ => false,
                };
                if !wanted {
                    continue;
                }
                let found = pattern.regex.find_iter(sentence).any(|found| {
                    let (from, to) = (offset + found.start(), offset + found.end());
                    (pattern.strict || !self.negated(text, from, to)) && (own || !self.distanced(text, from))
                });
                if found {
                    return Some(pattern.line);
                }
            }
        }
        None
    }

    /// A negation among the last three words of the clause before the match, or inside it.
    fn negated(&self, text: &str, start: usize, end: usize) -> bool {
        let before = &text[..start];
        let clause =
            before.rfind([',', ';', ':', '.', '!', '?', '\n', '~']).map_or(before, |at| &before[at + 1..]);
        let last_three = clause.split_whitespace().rev().take(3);
        last_three.chain(text[start..end].split_whitespace()).any(|word| {
            let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
            self.negation.contains(word)
                || self.negation.iter().any(|cue| cue.ends_with('\'') && word.starts_with(cue.as_str()))
        })
    }

    /// A distance cue in the match's sentence, or the match inside double quotes.
    fn distanced(&self, text: &str, start: usize) -> bool {
        let quoted = text[..start].matches('"').count() % 2 == 1;
        let from = text[..start].rfind(['.', '!', '?', '\n']).map_or(0, |at| at + 1);
        let to = text[start..].find(['.', '!', '?', '\n']).map_or(text.len(), |at| start + at);
        quoted || self.distance.as_ref().is_some_and(|cue| cue.is_match(&text[from..to]))
    }
}

/// One regex matching any of `words` as whole words.
fn words(words: &[String]) -> Option<Regex> {
    if words.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&format!("\\b(?:{})\\b", alternatives.join("|"))).ok()
}

/// Lower case, accents removed, quotes and apostrophes straight, spaces single: the form the
/// list is written for. Line breaks stay (they end sentences).
#[must_use]
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.nfd() {
        if unicode_normalization::char::is_combining_mark(c) {
            continue;
        }
        let c = match c {
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' | '`' | '\u{b4}' | '\u{2032}' => '\'',
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' | '\u{ab}' | '\u{bb}' | '\u{2039}'
            | '\u{203a}' => '"',
            '\n' | '\r' => '\n',
            c => c,
        };
        if c.is_whitespace() && c != '\n' {
            if !space && !out.is_empty() {
                out.push(' ');
            }
            space = true;
            continue;
        }
        space = false;
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(text: &str) -> SafetyLevel {
        PhraseList::built_in().screen_message(text).level
    }

    #[test]
    fn the_shipped_list_parses_covers_every_language_and_states_its_version() {
        let list = PhraseList::parse(BUILT_IN).unwrap();
        assert!(!list.version().is_empty());
        let codes: Vec<_> = list.languages.iter().map(|l| l.code).collect();
        assert_eq!(codes, LANGUAGES);
        for language in &list.languages {
            for kind in [Kind::Crisis, Kind::Elevated, Kind::Reply, Kind::Strong, Kind::Weak] {
                assert!(
                    language.patterns.iter().any(|p| p.kind == kind),
                    "{} has no {kind:?}",
                    language.code
                );
            }
            assert!(
                !language.negation.is_empty() && language.distance.is_some() && !language.idioms.is_empty()
            );
        }
    }

    #[test]
    fn a_broken_list_is_refused_naming_its_line() {
        let error = PhraseList::parse("version: 1\n[en]\ncrisis: (unclosed\n").unwrap_err();
        assert!(format!("{error:#}").contains("line 3"), "{error:#}");
        assert!(PhraseList::parse("version: 1\n[xx]\n").is_err());
        assert!(PhraseList::parse("[en]\ncrisis: die\n").is_err(), "a list without a version");
    }

    #[test]
    fn direct_words_are_a_crisis_and_their_negation_is_not() {
        assert_eq!(level("I want to die"), SafetyLevel::Crisis);
        assert_eq!(level("I don't want to die, I want to understand this part"), SafetyLevel::None);
        assert_eq!(level("I don't want to live anymore"), SafetyLevel::Crisis);
        assert_eq!(level("A part of me wants to die."), SafetyLevel::Crisis);
        assert_eq!(level("Quiero morir"), SafetyLevel::Crisis);
        assert_eq!(level("No quiero morir"), SafetyLevel::None);
        assert_eq!(level("Ich will nicht mehr leben"), SafetyLevel::Crisis);
        assert_eq!(level("Ich will nicht sterben"), SafetyLevel::None);
    }

    #[test]
    fn figures_of_speech_and_distance_are_not_a_crisis() {
        assert_eq!(level("This deadline is killing me"), SafetyLevel::None);
        assert_eq!(level("I could kill for a coffee"), SafetyLevel::None);
        assert_eq!(level("In the novel, the narrator says he wants to kill himself."), SafetyLevel::None);
        assert_eq!(level("The song goes \"I want to die young\"."), SafetyLevel::None);
        assert_eq!(level("The song goes \"I want to die\". That's how I feel."), SafetyLevel::Crisis);
    }

    #[test]
    fn replies_that_encourage_or_instruct_are_unsafe_and_care_is_not() {
        let list = PhraseList::built_in();
        assert!(list.reply_is_unsafe("You should just kill yourself.").is_some());
        assert!(list.reply_is_unsafe("The most painless way to die is").is_some());
        assert!(list.reply_is_unsafe("You should never hurt yourself; please call 988.").is_none());
        assert!(list.reply_is_unsafe("That sounds so heavy. Can we stay with that part?").is_none());
    }

    #[test]
    fn normalising_removes_accents_case_and_curly_quotes() {
        assert_eq!(
            normalize("  Ich MÖCHTE\t sterben “jetzt” — n’est-ce pas\nó"),
            "ich mochte sterben \"jetzt\" — n'est-ce pas\no"
        );
    }
}
