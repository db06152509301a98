//! JSON shapes shared by several endpoints, and how their instants are written.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ifs_domain::{Message, MessageId, Role, Timestamp, Usage};
use serde::{Serialize, Serializer};

use crate::ApiError;

/// A JSON answer written into a buffer of `capacity` bytes to start with. Pages of messages and
/// dialogues run to kilobytes, and growing axum's 128-byte start to that size took five
/// reallocations and copies, 4.5% of a `/messages` request (docs/benchmarks.md).
#[derive(Debug)]
pub struct SizedJson<T> {
    pub body: T,
    pub capacity: usize,
}

impl<T: Serialize> IntoResponse for SizedJson<T> {
    fn into_response(self) -> Response {
        let mut buffer = Vec::with_capacity(self.capacity);
        match serde_json::to_writer(&mut buffer, &self.body) {
            Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], buffer)
                .into_response(),
            Err(error) => ApiError::internal(error).into_response(),
        }
    }
}

/// Writes an instant exactly as chrono's `Serialize` does — RFC 3339 in UTC with a `Z`, and 0, 3,
/// 6 or 9 fraction digits, as few as it needs — without chrono's `Display`, which goes through
/// `fmt` a piece at a time: instants were the largest part of encoding a page of messages
/// (docs/benchmarks.md). Years outside 0–9999 and leap seconds are left to chrono.
///
/// # Errors
/// Those of the serializer.
pub fn rfc3339<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = [0; 30];
    match write_rfc3339(at, &mut text).and_then(|len| std::str::from_utf8(&text[..len]).ok()) {
        Some(text) => serializer.serialize_str(text),
        None => at.serialize(serializer),
    }
}

/// `at` as chrono writes it into `out`, answering the length; nothing for what [`rfc3339`]
/// leaves to chrono.
fn write_rfc3339(at: &Timestamp, out: &mut [u8; 30]) -> Option<usize> {
    use chrono::{Datelike as _, Timelike as _};
    fn digits(out: &mut [u8], mut value: u32) {
        for byte in out.iter_mut().rev() {
            *byte = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    }
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    digits(&mut out[0..4], year);
    digits(&mut out[5..7], at.month());
    digits(&mut out[8..10], at.day());
    digits(&mut out[11..13], at.hour());
    digits(&mut out[14..16], at.minute());
    digits(&mut out[17..19], at.second());
    (out[4], out[7], out[10], out[13], out[16]) = (b'-', b'-', b'T', b':', b':');
    let (fraction, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut len = 19;
    if width > 0 {
        out[19] = b'.';
        digits(&mut out[20..20 + width], fraction);
        len = 20 + width;
    }
    out[len] = b'Z';
    Some(len + 1)
}

/// A message as clients see it: its place in the list (`seq`, `prev_id`, `next_id`) and, for
/// replies, how the agent produced it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    #[schema(value_type = String, format = Uuid)]
    pub id: MessageId,
    /// Position in the dialogue, from 1.
    #[schema(minimum = 1)]
    pub seq: u64,
    pub role: Role,
    pub content: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Timestamp,
    /// The message before this one; null on the first.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub prev_id: Option<MessageId>,
    /// The message after this one; null on the last.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next_id: Option<MessageId>,
    /// On a reply: `stop`, `length` (max_tokens reached), `cancelled` (the client left a
    /// streamed turn) or `error` (the agent failed midway; the text so far is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// On a reply: how many of the oldest messages of the memory the agent left out to fit its
    /// context; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_messages: Option<u32>,
    /// On a regenerated reply: which version this is, the latest; absent on a first version.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2)]
    pub version: Option<u32>,
    /// On a regenerated reply: how many versions it has (`GET
    /// /api/v1/messages/{message_id}/versions` lists them); absent when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2)]
    pub versions: Option<u32>,
    /// On a reply given with crisis resources: `finish_reason` "safety" is the fixed crisis reply
    /// (the agent was not asked, or its reply was replaced); an elevated reply is the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyView>,
}

/// What the safety screening of a turn decided, with the crisis lines given.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SafetyView {
    pub level: ifs_domain::SafetyLevel,
    /// The crisis lines of the person's country (from their `Accept-Language`), or the
    /// international fallback.
    pub resources: ifs_safety::Resources,
}

impl MessageView {
    /// About what one message takes as JSON besides its text: ids, instants, names, usage.
    pub const JSON_OVERHEAD: usize = 400;
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        let meta = message.meta.unwrap_or_default();
        Self {
            id: message.id,
            seq: message.seq,
            role: message.role,
            content: message.content,
            created_at: message.created_at,
            prev_id: message.prev_id,
            next_id: message.next_id,
            finish_reason: meta.finish_reason,
            usage: meta.usage,
            truncated_messages: meta.truncated_messages,
            // The current version is always the latest: regenerating adds one at the end.
            version: meta.version.filter(|v| *v > 1),
            versions: meta.version.filter(|v| *v > 1),
            safety: meta.safety.map(|note| SafetyView {
                level: note.level,
                resources: ifs_safety::Directory::built_in().for_country(note.country.as_deref()).clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "rfc3339")] Timestamp);

    fn both(at: Timestamp) -> (String, String) {
        (serde_json::to_string(&Ours(at)).unwrap(), serde_json::to_string(&at).unwrap())
    }

    proptest! {
        #[test]
        fn instants_are_written_exactly_as_chrono_writes_them(
            secs in chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp()..=chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp(),
            nanos in prop_oneof![Just(0_u32), (0_u32..1000).prop_map(|ms| ms * 1_000_000),
                                 (0_u32..1_000_000).prop_map(|us| us * 1_000), 0_u32..2_000_000_000],
        ) {
            if let Some(at) = chrono::DateTime::from_timestamp(secs, nanos) {
                let (ours, chrono) = both(at);
                prop_assert_eq!(ours, chrono);
            }
        }

        #[test]
        fn instants_of_this_era_are_written_exactly_as_chrono_writes_them(
            secs in 0_i64..253_402_300_800, nanos in 0_u32..1_000_000_000,
        ) {
            let (ours, chrono) = both(chrono::DateTime::from_timestamp(secs, nanos).unwrap());
            prop_assert_eq!(ours, chrono);
        }
    }

    #[test]
    fn the_edges_of_the_fast_path_are_written_as_chrono_writes_them() {
        for (secs, nanos) in [(0, 0), (253_402_300_799, 999_999_999), (1_795_000_019, 1_500_000_000), (-1, 5)]
        {
            let at = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let (ours, chrono) = both(at);
            assert_eq!(ours, chrono, "{secs} {nanos}");
        }
        assert_eq!(
            both(chrono::DateTime::from_timestamp(1_795_000_000, 120_000_000).unwrap()).0,
            r#""2026-11-18T11:06:40.120Z""#
        );
    }
}
