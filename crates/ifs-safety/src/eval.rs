//! The evaluation of the built-in list against `eval/safety/*.jsonl`: recall on crisis, precision,
//! and false positives on hard negatives, per language (`make eval-safety`, docs/safety.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use ifs_domain::SafetyLevel;
use serde::Deserialize;

use crate::PhraseList;

/// One message of the evaluation set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub text: String,
    pub language: String,
    pub expected: SafetyLevel,
    /// Why it is labelled so; a hard negative's starts with "hard negative".
    pub why: String,
}

impl Case {
    /// Whether this is a hard negative: wording a careless screener would flag.
    #[must_use]
    pub fn hard_negative(&self) -> bool {
        self.expected == SafetyLevel::None && self.why.starts_with("hard negative")
    }
}

/// Reads every `*.jsonl` file of `directory`.
///
/// # Errors
/// A file that cannot be read, or a line that is not a case.
pub fn load(directory: &Path) -> anyhow::Result<Vec<Case>> {
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            cases.push(
                serde_json::from_str(line).with_context(|| format!("{}:{}", file.display(), index + 1))?,
            );
        }
    }
    Ok(cases)
}

/// The results of one language.
#[derive(Debug, Default, Clone)]
pub struct Scores {
    /// `confusion[expected][predicted]`, levels in order none, elevated, crisis.
    pub confusion: [[usize; 3]; 3],
    pub hard_negatives: usize,
    pub hard_negatives_flagged: usize,
    /// The cases it got wrong, with the line of the list that decided.
    pub misses: Vec<(Case, SafetyLevel, Option<usize>)>,
}

impl Scores {
    /// Crisis messages screened as crisis, of all crisis messages.
    #[must_use]
    pub fn crisis_recall(&self) -> f64 {
        ratio(self.confusion[2][2], self.confusion[2].iter().sum())
    }

    /// Crisis verdicts that were crisis messages, of all crisis verdicts.
    #[must_use]
    pub fn crisis_precision(&self) -> f64 {
        ratio(self.confusion[2][2], (0..3).map(|e| self.confusion[e][2]).sum())
    }

    /// Elevated messages screened as elevated or crisis (resources shown), of all of them.
    #[must_use]
    pub fn elevated_recall(&self) -> f64 {
        ratio(self.confusion[1][1] + self.confusion[1][2], self.confusion[1].iter().sum())
    }

    /// Hard negatives screened as anything but none, of all hard negatives.
    #[must_use]
    pub fn hard_negative_false_positives(&self) -> f64 {
        ratio(self.hard_negatives_flagged, self.hard_negatives)
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 { 1.0 } else { part as f64 / whole as f64 }
}

fn index(level: SafetyLevel) -> usize {
    match level {
        SafetyLevel::None => 0,
        SafetyLevel::Elevated => 1,
        SafetyLevel::Crisis => 2,
    }
}

/// Screens every case with `list`, by language.
#[must_use]
pub fn score(list: &PhraseList, cases: &[Case]) -> BTreeMap<String, Scores> {
    let mut by_language: BTreeMap<String, Scores> = BTreeMap::new();
    for case in cases {
        let found = list.screen_message(&case.text);
        let scores = by_language.entry(case.language.clone()).or_default();
        scores.confusion[index(case.expected)][index(found.level)] += 1;
        if case.hard_negative() {
            scores.hard_negatives += 1;
            if found.level != SafetyLevel::None {
                scores.hard_negatives_flagged += 1;
            }
        }
        if found.level != case.expected {
            scores.misses.push((case.clone(), found.level, found.line));
        }
    }
    by_language
}

/// The report `make eval-safety` prints: a table per language, then what was missed.
#[must_use]
pub fn report(list: &PhraseList, scores: &BTreeMap<String, Scores>) -> String {
    let mut out = format!("Built-in screener, phrase list {}\n\n", list.version());
    let _ = writeln!(
        out,
        "| language | cases | crisis recall | crisis precision | elevated-or-crisis recall (elevated) | hard-negative false positives |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (language, s) in scores {
        let cases: usize = s.confusion.iter().flatten().sum();
        let _ = writeln!(
            out,
            "| {language} | {cases} | {:.2} ({}/{}) | {:.2} | {:.2} | {:.2} ({}/{}) |",
            s.crisis_recall(),
            s.confusion[2][2],
            s.confusion[2].iter().sum::<usize>(),
            s.crisis_precision(),
            s.elevated_recall(),
            s.hard_negative_false_positives(),
            s.hard_negatives_flagged,
            s.hard_negatives,
        );
    }
    for (language, s) in scores {
        let _ = writeln!(out, "\n{language}: confusion (rows expected, columns screened)\n");
        let _ = writeln!(out, "| expected \\ screened | none | elevated | crisis |\n|---|---|---|---|");
        for level in SafetyLevel::ALL {
            let row = s.confusion[index(level)];
            let _ = writeln!(out, "| {level} | {} | {} | {} |", row[0], row[1], row[2]);
        }
    }
    let misses: Vec<_> = scores.values().flat_map(|s| &s.misses).collect();
    if !misses.is_empty() {
        let _ = writeln!(out, "\nDisagreements ({}):", misses.len());
        for (case, got, line) in misses {
            let by = line.map_or_else(String::new, |l| format!(" (phrases.txt line {l})"));
            let _ = writeln!(
                out,
                "  [{}] expected {}, screened {got}{by}: {}",
                case.language, case.expected, case.text
            );
        }
    }
    out
}
