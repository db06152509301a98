//! The evaluation sets as a regression guard: the development set (`eval/safety/*.jsonl`, which
//! the list was written against) must keep meeting the goals of docs/safety.md in every
//! language, and the held-out sets (`eval/safety/heldout-*`) must not fall below the floors
//! docs/safety.md records for them.

use std::path::Path;

use ifs_safety::PhraseList;
use ifs_safety::eval::{load, report, score};

fn set(directory: &str) -> anyhow::Result<std::collections::BTreeMap<String, ifs_safety::eval::Scores>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(directory);
    let cases = load(&path)?;
    Ok(score(PhraseList::built_in(), &cases))
}

#[test]
fn the_development_set_meets_the_goals_in_every_language() {
    let scores = set("eval/safety").unwrap();
    let mut expected = ifs_safety::phrases::LANGUAGES;
    expected.sort_unstable();
    assert!(scores.keys().map(String::as_str).eq(expected), "every language of the list is evaluated");
    let cases: usize = scores.values().map(|s| s.confusion.iter().flatten().sum::<usize>()).sum();
    assert!(cases >= 300, "the set has {cases} messages");
    for (language, s) in &scores {
        assert!(s.hard_negatives >= 20, "{language} has {} hard negatives", s.hard_negatives);
        assert!(
            s.crisis_recall() >= 0.95 && s.hard_negative_false_positives() <= 0.10,
            "{language} misses the goals:\n{}",
            report(PhraseList::built_in(), &scores)
        );
    }
}

#[test]
fn the_held_out_sets_stay_at_least_where_docs_safety_md_records_them() {
    // Floors recorded in docs/safety.md for list 2026-12-02.2: raising them is the point of the
    // next list; lowering one needs a reason written there. heldout-2 was measured once, never
    // tuned on; heldout-1 shaped the sentence rules, so it no longer measures generalisation.
    for (name, recall, false_positives) in
        [("eval/safety/heldout-1", 0.60, 0.10), ("eval/safety/heldout-2", 0.25, 0.20)]
    {
        let scores = set(name).unwrap();
        assert_eq!(scores.len(), 5, "{name}: every language");
        for (language, s) in &scores {
            let report = report(PhraseList::built_in(), &scores);
            assert!(s.crisis_recall() >= recall, "{name} {language}:\n{report}");
            assert!(s.hard_negative_false_positives() <= false_positives, "{name} {language}:\n{report}");
        }
    }
}
