//! Pagination: bounded page sizes and opaque cursors. A cursor names the last item a client saw,
//! so a page costs O(page) in any store; its text form is base64url so clients treat it as opaque.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{DialogueId, Timestamp};

/// A page size within `1..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(usize);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer from 1 to {max}")]
pub struct LimitError {
    pub max: usize,
}

impl Limit {
    /// Parses an optional query value, falling back to `default` when absent.
    pub fn parse(raw: Option<&str>, default: usize, max: usize) -> Result<Self, LimitError> {
        let Some(raw) = raw else { return Ok(Self(default.clamp(1, max))) };
        match raw.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Self(n)),
            _ => Err(LimitError { max }),
        }
    }

    #[must_use]
    pub const fn new_clamped(n: usize, max: usize) -> Self {
        Self(if n == 0 {
            1
        } else if n > max {
            max
        } else {
            n
        })
    }

    #[must_use]
    pub const fn get(self) -> usize {
        self.0
    }
}

/// A cursor that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a cursor this API issued")]
pub struct CursorError;

fn decode(text: &str, tag: &str) -> Result<String, CursorError> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| CursorError)?;
    let plain = String::from_utf8(bytes).map_err(|_| CursorError)?;
    plain.strip_prefix(tag).map(str::to_owned).ok_or(CursorError)
}

/// Where the next page of a dialogue's messages starts: after `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCursor {
    pub after_seq: u64,
}

impl MessageCursor {
    const TAG: &'static str = "m1:";

    #[must_use]
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}", Self::TAG, self.after_seq))
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        let after_seq = decode(text, Self::TAG)?.parse().map_err(|_| CursorError)?;
        Ok(Self { after_seq })
    }
}

/// Where the next page of a user's dialogues starts, in newest-activity-first order: after the
/// dialogue last updated at `updated_at` with id `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialogueCursor {
    pub updated_at_ms: i64,
    pub id: DialogueId,
}

impl DialogueCursor {
    const TAG: &'static str = "d1:";

    #[must_use]
    pub fn after(updated_at: Timestamp, id: DialogueId) -> Self {
        Self { updated_at_ms: updated_at.timestamp_millis(), id }
    }

    #[must_use]
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}{}:{}", Self::TAG, self.updated_at_ms, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        let body = decode(text, Self::TAG)?;
        let (millis, id) = body.split_once(':').ok_or(CursorError)?;
        Ok(Self {
            updated_at_ms: millis.parse().map_err(|_| CursorError)?,
            id: DialogueId::parse(id).map_err(|_| CursorError)?,
        })
    }
}

/// The most bytes of message text one page gathers: past it the page ends early, with a cursor
/// to the rest. A page of 200 messages of 16,000 emoji each is 12.8 MB; built whole for a client
/// that never reads it, a few hundred such requests held gigabytes (docs/decisions.md).
pub const PAGE_BYTES: usize = 256 * 1024;

/// What a page has gathered so far, against its limit and [`PAGE_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFill {
    limit: usize,
    budget: usize,
    items: usize,
    bytes: usize,
}

impl PageFill {
    /// About what one message takes in an answer besides its text: ids, instants, names, usage.
    pub const ITEM_OVERHEAD: usize = 400;

    /// A page of at most `limit` items and [`PAGE_BYTES`].
    #[must_use]
    pub const fn new(limit: Limit) -> Self {
        Self { limit: limit.get(), budget: PAGE_BYTES, items: 0, bytes: 0 }
    }

    /// A run of at most `count` items, however large (the memory sent to the agent, which the
    /// agent itself trims to its context).
    #[must_use]
    pub const fn counting(count: usize) -> Self {
        Self { limit: count, budget: usize::MAX, items: 0, bytes: 0 }
    }

    /// Takes an item whose text is `text_bytes` long if the page has room for it. The first item
    /// always fits, so that every page moves a reader forward.
    pub const fn admit(&mut self, text_bytes: usize) -> bool {
        let bytes = self.bytes.saturating_add(text_bytes).saturating_add(Self::ITEM_OVERHEAD);
        if self.items >= self.limit || (self.items > 0 && bytes > self.budget) {
            return false;
        }
        self.items += 1;
        self.bytes = bytes;
        true
    }

    /// How many more items the page could take, were they small.
    #[must_use]
    pub const fn room(&self) -> usize {
        self.limit.saturating_sub(self.items)
    }
}

/// One page of results and where the next one starts, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_stay_in_range() {
        assert_eq!(Limit::parse(None, 20, 100), Ok(Limit(20)));
        assert_eq!(Limit::parse(Some("100"), 20, 100), Ok(Limit(100)));
        assert_eq!(Limit::parse(Some(" 1 "), 20, 100), Ok(Limit(1)));
        for bad in ["0", "101", "-1", "ten", "", "1.5"] {
            assert_eq!(Limit::parse(Some(bad), 20, 100), Err(LimitError { max: 100 }), "{bad:?}");
        }
    }

    #[test]
    fn a_page_ends_at_its_limit_or_its_bytes_but_always_takes_one_item() {
        let mut fill = PageFill::new(Limit(3));
        assert!((0..3).all(|_| fill.admit(10)));
        assert!(!fill.admit(0), "the limit");
        let mut fill = PageFill::new(Limit(200));
        assert!(fill.admit(10 * PAGE_BYTES), "one item, however large");
        assert!(!fill.admit(0), "the byte budget is spent");
        let mut fill = PageFill::new(Limit(200));
        let each = PAGE_BYTES / 4 - PageFill::ITEM_OVERHEAD;
        assert!((0..4).all(|_| fill.admit(each)));
        assert!(!fill.admit(1));
        assert_eq!(fill.room(), 196);
        let mut fill = PageFill::counting(2);
        assert!(fill.admit(usize::MAX) && fill.admit(usize::MAX) && !fill.admit(0));
    }

    #[test]
    fn cursors_round_trip() {
        let m = MessageCursor { after_seq: 42 };
        assert_eq!(MessageCursor::decode(&m.encode()), Ok(m));
        let d = DialogueCursor { updated_at_ms: 1_700_000_000_123, id: DialogueId::generate() };
        assert_eq!(DialogueCursor::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn foreign_or_garbled_cursors_are_refused() {
        let message_cursor = MessageCursor { after_seq: 3 }.encode();
        assert_eq!(DialogueCursor::decode(&message_cursor), Err(CursorError));
        // "", not base64, "m1:" with no number, "m1:x", "d1:12:nope"
        for bad in ["", "!!!", "bTE6", "bTE6eA", "ZDE6MTI6bm9wZQ"] {
            assert_eq!(MessageCursor::decode(bad), Err(CursorError), "{bad:?}");
            assert_eq!(DialogueCursor::decode(bad), Err(CursorError), "{bad:?}");
        }
    }
}
