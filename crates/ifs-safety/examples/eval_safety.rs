//! `make eval-safety`: screens every message of `eval/safety/*.jsonl` with the built-in list and
//! prints recall, precision and hard-negative false positives per language, with the confusion
//! matrices and every disagreement. Exit 1 when a language misses the goals of docs/safety.md.

use std::path::PathBuf;
use std::process::ExitCode;

use ifs_safety::PhraseList;
use ifs_safety::eval::{load, report, score};

fn main() -> ExitCode {
    let directory = std::env::args().nth(1).map_or_else(|| PathBuf::from("eval/safety"), PathBuf::from);
    let cases = match load(&directory) {
        Ok(cases) => cases,
        Err(error) => {
            eprintln!("eval-safety: {error:#}");
            return ExitCode::from(2);
        }
    };
    let list = PhraseList::built_in();
    let scores = score(list, &cases);
    print!("{}", report(list, &scores));
    let short: Vec<_> = scores
        .iter()
        .filter(|(_, s)| s.crisis_recall() < 0.95 || s.hard_negative_false_positives() > 0.10)
        .map(|(language, _)| language.as_str())
        .collect();
    if short.is_empty() {
        println!(
            "\nEvery language meets the goals: crisis recall >= 0.95, hard-negative false positives <= 0.10."
        );
        ExitCode::SUCCESS
    } else {
        println!("\nBelow the goals in: {}", short.join(", "));
        ExitCode::FAILURE
    }
}
