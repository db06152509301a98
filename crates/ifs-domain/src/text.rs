//! Which characters a reader can see. Behind three rules: a message must show something, a title
//! must not carry characters that hide or reorder text, and an email must not hide a second
//! address behind invisible characters.

use unicode_general_category::{GeneralCategory, get_general_category};

/// Characters that draw nothing and are not spaces: controls, format characters (zero-width
/// spaces and joiners, bidi marks and overrides, the BOM, tags) and Unicode's other
/// default-ignorable characters (variation selectors, Hangul fillers, the combining grapheme
/// joiner, the Mongolian free variation selectors).
#[must_use]
pub fn is_hidden(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control | GeneralCategory::Format | GeneralCategory::Surrogate
    ) || is_default_ignorable(c)
}

/// Unicode's `Default_Ignorable_Code_Point` outside the format category (DerivedCoreProperties).
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Characters that show as empty space although they are not Unicode white space.
fn is_blank_glyph(c: char) -> bool {
    // The braille blank is a symbol whose glyph is empty; it is the usual way to post "nothing".
    c == '\u{2800}'
}

/// Whether `text` has no character a reader could see: empty, white space, hidden characters.
#[must_use]
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || is_hidden(c) || is_blank_glyph(c))
}

/// `text` without controls, format characters and bidi controls. The zero-width joiner and
/// non-joiner stay: emoji sequences and several scripts (Persian, the Indic ones) need them, and
/// they cannot reorder or hide text.
#[must_use]
pub fn without_hidden(text: &str) -> String {
    text.chars().filter(|&c| matches!(c, '\u{200C}' | '\u{200D}') || !is_hidden(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_no_visible_character() {
        for blank in [
            "",
            " \n\t",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\u{202E}",
            "\u{3164}",
            "\u{2800} ",
            "\u{FE0F}",
            "\u{E0041}",
            "\u{0}",
        ] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for shown in ["a", " x ", "\u{200B}é", "🦀", "e\u{301}", "日本", "\u{2764}\u{FE0F}"] {
            assert!(!is_blank(shown), "{shown:?}");
        }
    }

    #[test]
    fn hidden_characters_go_and_joiners_stay() {
        assert_eq!(without_hidden("ab\u{202E}cd\u{200B}e\u{0007}"), "abcde");
        assert_eq!(without_hidden("👨\u{200D}👩"), "👨\u{200D}👩");
        assert_eq!(without_hidden("می\u{200C}خواهم"), "می\u{200C}خواهم");
    }

    #[test]
    fn every_bidi_control_is_hidden() {
        let bidi =
            ['\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}'];
        for c in bidi.into_iter().chain('\u{2066}'..='\u{2069}') {
            assert!(is_hidden(c), "{c:?}");
        }
    }
}
