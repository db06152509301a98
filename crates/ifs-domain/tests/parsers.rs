//! Property tests for every parser of outside input in the domain: ids, emails, passwords,
//! message text and titles, page sizes and cursors. Whatever the text, none panics; what is
//! accepted reads back as itself, and what is refused is refused for the right reason.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ifs_domain::dialogue::{MESSAGE_MAX, TITLE_MAX, title_for};
use ifs_domain::text::{is_hidden, without_hidden};
use ifs_domain::{
    DialogueCursor, DialogueId, Email, EmailError, Limit, MessageCursor, MessageId, MessageText,
    MessageTextError, Password, PasswordError, UserId,
};
use proptest::prelude::*;

/// Text as clients send it: any characters, with the awkward ones (controls, bidi, zero-width,
/// combining marks, fullwidth letters, the ones email and cursors care about) far more often
/// than uniform sampling would give them.
fn text() -> impl Strategy<Value = String> {
    let awkward = prop::sample::select(vec![
        '\u{0}', '\u{7}', '\n', '\t', ' ', '\u{200B}', '\u{200D}', '\u{202E}', '\u{2066}', '\u{FEFF}',
        '\u{301}', '\u{3164}', '\u{2800}', 'ａ', 'ﬁ', 'İ', 'ß', '@', '.', '"', '[', ':', '-', '=', '😀',
    ]);
    prop::collection::vec(
        prop_oneof![3 => any::<char>(), 2 => awkward, 3 => prop::char::range('a', 'z')],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn hidden_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec!['\u{0}', '\u{7}', '\u{200B}', '\u{202E}', '\u{2060}', '\u{FEFF}', '\u{E0041}'])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ids_parse_only_uuids_and_read_back_as_themselves(raw in text(), bytes in any::<[u8; 16]>()) {
        if let Ok(id) = MessageId::parse(&raw) {
            prop_assert_eq!(MessageId::parse(&id.to_string()), Ok(id));
        }
        let id = UserId::from_bytes(bytes);
        let shown = id.to_string();
        prop_assert_eq!(UserId::parse(&shown), Ok(id));
        prop_assert_eq!(UserId::parse(&shown.to_uppercase()), Ok(id));
        prop_assert_eq!(UserId::parse(&format!(" {shown}\n")), Ok(id));
        // One character too few or too many is never an id.
        prop_assert!(UserId::parse(&shown[1..]).is_err());
        let longer = format!("{shown}0");
        prop_assert!(UserId::parse(&longer).is_err());
    }

    #[test]
    fn an_accepted_email_is_normal_visible_and_stable(raw in text()) {
        if let Ok(email) = Email::parse(&raw) {
            let shown = email.as_str();
            prop_assert_eq!(Email::parse(shown), Ok(email.clone()), "parsing is idempotent");
            prop_assert!(!shown.chars().any(is_hidden), "{:?}", shown);
            prop_assert!(shown.chars().count() <= 254);
            prop_assert_eq!(shown.trim(), shown);
            prop_assert_eq!(shown.to_lowercase(), shown);
            let (_, domain) = shown.rsplit_once('@').expect("an address has an @");
            prop_assert!(domain.contains('.') && !domain.starts_with('['), "{:?}", shown);
        }
    }

    /// ASCII skips the normaliser; an ideographic space at the end (NFKC folds it into a space,
    /// then it is trimmed) sends the same address through it: both must agree.
    #[test]
    fn ascii_addresses_parse_as_the_full_normaliser_would(raw in "[ -~]{0,40}", local in "[A-Za-z0-9._+-]{1,12}") {
        for candidate in [raw, format!(" {local}@Example.COM ")] {
            let slow = format!("{candidate}\u{3000}");
            prop_assert_eq!(Email::parse(&candidate), Email::parse(&slow), "{:?}", candidate);
        }
    }

    #[test]
    fn an_email_with_a_hidden_character_is_refused_as_hidden(
        local in "[a-z][a-z0-9]{0,10}",
        domain in "[a-z]{1,10}\\.[a-z]{2,5}",
        hidden in hidden_char(),
        at in 0_usize..30,
    ) {
        let mut chars: Vec<char> = format!("{local}@{domain}").chars().collect();
        // Inside the address: at either end it could be trimmed as white space.
        let at = 1 + at % (chars.len() - 1);
        chars.insert(at, hidden);
        let raw: String = chars.into_iter().collect();
        prop_assert_eq!(Email::parse(&raw), Err(EmailError::Hidden), "{:?}", raw);
        let plain = format!("{local}@{domain}");
        prop_assert!(Email::parse(&plain).is_ok());
    }

    #[test]
    fn a_too_long_email_is_refused_as_too_long(local in "[a-z]{250,300}") {
        prop_assert_eq!(Email::parse(&format!("{local}@example.com")), Err(EmailError::TooLong));
    }

    #[test]
    fn passwords_are_judged_by_their_length_in_characters(raw in text(), repeat in 0_usize..6) {
        let raw = raw.repeat(repeat);
        let count = raw.chars().count();
        match Password::parse(raw.clone()) {
            Ok(password) => {
                prop_assert!((8..=128).contains(&count));
                prop_assert_eq!(password.expose(), raw.as_str());
                prop_assert!(!format!("{password:?}").contains(&raw), "Debug must not show it");
            }
            Err(PasswordError::TooShort) => prop_assert!(count < 8),
            Err(PasswordError::TooLong) => prop_assert!(count > 128),
        }
    }

    #[test]
    fn message_text_needs_something_visible_and_at_most_the_limit(raw in text(), repeat in 1_usize..3) {
        let raw = raw.repeat(repeat);
        let visible = raw.chars().any(|c| !c.is_whitespace() && !is_hidden(c) && c != '\u{2800}');
        match MessageText::parse(raw.clone()) {
            Ok(text) => {
                prop_assert!(visible);
                prop_assert_eq!(text.as_str(), raw.as_str(), "accepted text is kept exactly");
            }
            Err(MessageTextError::Empty) => prop_assert!(!visible, "{:?}", raw),
            Err(MessageTextError::TooLong) => prop_assert!(raw.chars().count() > MESSAGE_MAX),
        }
    }

    #[test]
    fn message_text_over_the_limit_is_too_long(c in prop::char::range('a', 'z'), extra in 1_usize..100) {
        let raw = c.to_string().repeat(MESSAGE_MAX + extra);
        prop_assert_eq!(MessageText::parse(raw), Err(MessageTextError::TooLong));
        prop_assert!(MessageText::parse(c.to_string().repeat(MESSAGE_MAX)).is_ok());
    }

    #[test]
    fn a_title_is_the_folded_text_or_its_start_with_an_ellipsis(raw in text(), repeat in 1_usize..8) {
        let raw = raw.repeat(repeat);
        let title = title_for(&raw);
        prop_assert!(title.chars().count() <= TITLE_MAX, "{:?}", title);
        prop_assert!(
            !title.chars().any(|c| is_hidden(c) && !matches!(c, '\u{200C}' | '\u{200D}')),
            "{:?}", title
        );
        let folded = without_hidden(&raw).split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.chars().count() <= TITLE_MAX {
            prop_assert_eq!(&title, &folded);
        } else {
            let kept = title.strip_suffix('…').expect("a cut title ends in an ellipsis");
            prop_assert!(folded.starts_with(kept) && !kept.ends_with(' '), "{:?} from {:?}", title, folded);
        }
    }

    #[test]
    fn page_sizes_are_within_bounds_or_refused(raw in text(), n in any::<u64>(), max in 1_usize..500) {
        for candidate in [raw.clone(), n.to_string(), format!(" {} ", n % 600)] {
            let expected = candidate.trim().parse::<usize>().ok().filter(|n| (1..=max).contains(n));
            match Limit::parse(Some(&candidate), 20, max) {
                Ok(limit) => prop_assert_eq!(Some(limit.get()), expected),
                Err(error) => prop_assert!(expected.is_none() && error.max == max),
            }
        }
        prop_assert_eq!(Limit::parse(None, 20, max).map(Limit::get), Ok(20.min(max)));
    }

    #[test]
    fn cursors_read_back_and_refuse_anything_else(
        raw in text(),
        seq in any::<u64>(),
        millis in any::<i64>(),
        bytes in any::<[u8; 16]>(),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        // Garbage, and valid base64 of garbage behind the right tag, never panics; whatever
        // decodes reads back as itself.
        for candidate in [
            raw.clone(),
            URL_SAFE_NO_PAD.encode(format!("d1:{raw}")),
            URL_SAFE_NO_PAD.encode(format!("m1:{raw}")),
        ] {
            if let Ok(cursor) = MessageCursor::decode(&candidate) {
                prop_assert_eq!(MessageCursor::decode(&cursor.encode()), Ok(cursor));
            }
            if let Ok(cursor) = DialogueCursor::decode(&candidate) {
                prop_assert_eq!(DialogueCursor::decode(&cursor.encode()), Ok(cursor));
            }
        }

        let message = MessageCursor { after_seq: seq };
        prop_assert_eq!(MessageCursor::decode(&message.encode()), Ok(message));
        let dialogue = DialogueCursor { updated_at_ms: millis, id: DialogueId::from_bytes(bytes) };
        prop_assert_eq!(DialogueCursor::decode(&dialogue.encode()), Ok(dialogue));
        // One kind is never taken for the other.
        prop_assert!(MessageCursor::decode(&dialogue.encode()).is_err());
        prop_assert!(DialogueCursor::decode(&message.encode()).is_err());

        // Changed in one byte, a message cursor is refused or names another position (its digits
        // have one spelling each, so no change can mean the same seq).
        let mut changed = message.encode().into_bytes();
        let at = position.index(changed.len());
        let original = changed[at];
        changed[at] = replacement;
        if let (true, Ok(changed)) = (replacement != original, String::from_utf8(changed))
            && let Ok(decoded) = MessageCursor::decode(&changed)
        {
            prop_assert!(decoded != message || changed.trim() == message.encode(), "{:?}", changed);
        }
    }
}
