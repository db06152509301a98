//! The binary layouts of the records read on hot paths: sessions (every authenticated request)
//! and messages (every page, every turn's memory). Parsing ids and RFC 3339 instants out of JSON
//! was most of the cost of those reads (profiles in docs/benchmarks.md).
//!
//! Each record starts with a version byte that JSON never starts with (`{`), so records written
//! as JSON by earlier versions still read. Integers are big-endian; an instant is seconds (i64)
//! then nanoseconds (u32); an id is its 16 bytes; a string is its length (u32) then its UTF-8;
//! an optional field is a presence byte (0 or 1) then the field. A record must be read to its
//! last byte: anything shorter, longer or out of range is an error, never a guess.

use anyhow::{Context as _, bail};
use ifs_domain::{
    DialogueId, DialogueSummary, ForkOrigin, Message, MessageId, ReplyMeta, Role, SafetyLevel, SafetyNote,
    SessionId, Timestamp, Usage, UserId,
};

use super::StoredMessage;
use crate::Session;

const SESSION_V1: u8 = 1;
const MESSAGE_V1: u8 = 1;
/// V1 and, at the end of a head's summary, where the dialogue was forked from (optional: the
/// dialogue id, then the message id).
const MESSAGE_V2: u8 = 2;
/// V2 and, at the end of a reply's meta, its version (optional).
const MESSAGE_V3: u8 = 3;
/// V3 and, at the end of a reply's meta, its safety note (optional: level 0–2, then the country,
/// optional).
const MESSAGE_V4: u8 = 4;

/// A session's 57 bytes: version, session id, user id, created, expires.
pub(super) const SESSION_LEN: usize = 1 + 16 + 16 + 12 + 12;

pub(super) fn encode_session(session: &Session) -> Vec<u8> {
    let mut out = Writer(Vec::with_capacity(SESSION_LEN));
    out.u8(SESSION_V1);
    out.id(session.id.as_bytes());
    out.id(session.user_id.as_bytes());
    out.instant(session.created_at);
    out.instant(session.expires_at);
    out.0
}

pub(super) fn decode_session(bytes: &[u8]) -> anyhow::Result<Session> {
    decode(bytes, SESSION_V1, "session", |input| {
        Ok(Session {
            id: SessionId::from_bytes(input.id()?),
            user_id: UserId::from_bytes(input.id()?),
            created_at: input.instant()?,
            expires_at: input.instant()?,
        })
    })
}

/// A message: version; id, dialogue id, seq, role (0 user, 1 assistant), created, prev, next,
/// content; the reply's meta (optional: model, finish reason, usage's three optional counts,
/// truncated count, each optional); the dialogue's summary on a head (optional: owner, title,
/// created, updated, message count, tail id — its dialogue id is the message's — and, from V2,
/// the fork's origin); from V3 the meta ends with the reply's version, from V4 then its safety note.
pub(super) fn encode_message(stored: &StoredMessage) -> Vec<u8> {
    let StoredMessage { message, summary } = stored;
    let mut out = Writer(Vec::with_capacity(128 + message.content.len()));
    out.u8(MESSAGE_V4);
    out.id(message.id.as_bytes());
    out.id(message.dialogue_id.as_bytes());
    out.u64(message.seq);
    out.u8(match message.role {
        Role::User => 0,
        Role::Assistant => 1,
    });
    out.instant(message.created_at);
    out.option(message.prev_id.as_ref(), |out, id| out.id(id.as_bytes()));
    out.option(message.next_id.as_ref(), |out, id| out.id(id.as_bytes()));
    out.str(&message.content);
    out.option(message.meta.as_ref(), |out, meta| {
        out.option(meta.model.as_deref(), Writer::str);
        out.option(meta.finish_reason.as_deref(), Writer::str);
        out.option(meta.usage.as_ref(), |out, usage| {
            for count in [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens] {
                out.option(count, Writer::u32);
            }
        });
        out.option(meta.truncated_messages, Writer::u32);
        out.option(meta.version, Writer::u32);
        out.option(meta.safety.as_ref(), |out, note| {
            out.u8(match note.level {
                SafetyLevel::None => 0,
                SafetyLevel::Elevated => 1,
                SafetyLevel::Crisis => 2,
            });
            out.option(note.country.as_deref(), Writer::str);
        });
    });
    out.option(summary.as_ref(), |out, summary| {
        out.id(summary.owner.as_bytes());
        out.str(&summary.title);
        out.instant(summary.created_at);
        out.instant(summary.updated_at);
        out.u64(summary.message_count);
        out.id(summary.tail_id.as_bytes());
        out.option(summary.forked_from.as_ref(), |out, origin| {
            out.id(origin.dialogue_id.as_bytes());
            out.id(origin.message_id.as_bytes());
        });
    });
    out.0
}

pub(super) fn decode_message(bytes: &[u8]) -> anyhow::Result<StoredMessage> {
    match bytes.first() {
        Some(&MESSAGE_V1) => decode(bytes, MESSAGE_V1, "message", |input| message_from(input, MESSAGE_V1)),
        Some(&MESSAGE_V2) => decode(bytes, MESSAGE_V2, "message", |input| message_from(input, MESSAGE_V2)),
        Some(&MESSAGE_V3) => decode(bytes, MESSAGE_V3, "message", |input| message_from(input, MESSAGE_V3)),
        _ => decode(bytes, MESSAGE_V4, "message", |input| message_from(input, MESSAGE_V4)),
    }
}

fn message_from(input: &mut Reader<'_>, version: u8) -> anyhow::Result<StoredMessage> {
    let id = MessageId::from_bytes(input.id()?);
    let dialogue_id = DialogueId::from_bytes(input.id()?);
    let seq = input.u64()?;
    let role = match input.u8()? {
        0 => Role::User,
        1 => Role::Assistant,
        other => bail!("a stored message with role {other}"),
    };
    let created_at = input.instant()?;
    let prev_id = input.option(|input| input.id().map(MessageId::from_bytes))?;
    let next_id = input.option(|input| input.id().map(MessageId::from_bytes))?;
    let content = input.string()?;
    let meta = input.option(|input| {
        Ok(ReplyMeta {
            model: input.option(Reader::string)?,
            finish_reason: input.option(Reader::string)?,
            usage: input.option(|input| {
                Ok(Usage {
                    prompt_tokens: input.option(Reader::u32)?,
                    completion_tokens: input.option(Reader::u32)?,
                    total_tokens: input.option(Reader::u32)?,
                })
            })?,
            truncated_messages: input.option(Reader::u32)?,
            version: if version >= MESSAGE_V3 { input.option(Reader::u32)? } else { None },
            safety: if version >= MESSAGE_V4 {
                input.option(|input| {
                    let level = match input.u8()? {
                        0 => SafetyLevel::None,
                        1 => SafetyLevel::Elevated,
                        2 => SafetyLevel::Crisis,
                        other => bail!("a stored safety level {other}"),
                    };
                    Ok(SafetyNote { level, country: input.option(Reader::string)? })
                })?
            } else {
                None
            },
        })
    })?;
    let summary = input.option(|input| {
        Ok(DialogueSummary {
            id: dialogue_id,
            owner: UserId::from_bytes(input.id()?),
            title: input.string()?,
            created_at: input.instant()?,
            updated_at: input.instant()?,
            message_count: input.u64()?,
            tail_id: MessageId::from_bytes(input.id()?),
            forked_from: if version >= MESSAGE_V2 {
                input.option(|input| {
                    Ok(ForkOrigin {
                        dialogue_id: DialogueId::from_bytes(input.id()?),
                        message_id: MessageId::from_bytes(input.id()?),
                    })
                })?
            } else {
                None
            },
        })
    })?;
    Ok(StoredMessage {
        message: Message { id, dialogue_id, seq, role, content, created_at, prev_id, next_id, meta },
        summary,
    })
}

/// A record in the layout `version` read by `read`, which must use it to its last byte; or, if it
/// is JSON, as an earlier version wrote it.
fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    version: u8,
    what: &'static str,
    read: impl FnOnce(&mut Reader<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if bytes.first() == Some(&b'{') {
        return super::decode(bytes);
    }
    let mut input = Reader::new(bytes, version, what)?;
    let value = read(&mut input)?;
    input.finish()?;
    Ok(value)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn id(&mut self, id: &[u8; 16]) {
        self.0.extend_from_slice(id);
    }

    fn instant(&mut self, at: Timestamp) {
        self.0.extend_from_slice(&at.timestamp().to_be_bytes());
        self.u32(at.timestamp_subsec_nanos());
    }

    /// Texts here are messages (at most 16,000 characters) and titles, far below 4 GiB.
    fn str(&mut self, text: &str) {
        self.u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(text.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader past the version byte, which must be `version`.
    fn new(bytes: &'a [u8], version: u8, what: &'static str) -> anyhow::Result<Self> {
        match bytes.split_first() {
            Some((&found, rest)) if found == version => Ok(Self { rest, what }),
            Some((&found, _)) => bail!("a stored {what} in layout {found}, which this version does not read"),
            None => bail!("an empty stored {what}"),
        }
    }

    fn take<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .with_context(|| format!("a stored {} cut short", self.what))?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        self.take().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        self.take().map(u64::from_be_bytes)
    }

    fn id(&mut self) -> anyhow::Result<[u8; 16]> {
        self.take()
    }

    fn instant(&mut self) -> anyhow::Result<Timestamp> {
        let secs = i64::from_be_bytes(self.take()?);
        let nanos = self.u32()?;
        chrono::DateTime::from_timestamp(secs, nanos)
            .with_context(|| format!("a stored {}'s instant is out of range", self.what))
    }

    fn string(&mut self) -> anyhow::Result<String> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let what = self.what;
        let bytes = self.rest.get(..len).with_context(|| format!("a stored {what}'s text cut short"))?;
        self.rest = &self.rest[len..];
        String::from_utf8(bytes.to_vec()).with_context(|| format!("a stored {what}'s text is not UTF-8"))
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => bail!("a stored {} with presence byte {other}", self.what),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            bail!("a stored {} with {} bytes too many", self.what, self.rest.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn instant() -> impl Strategy<Value = Timestamp> {
        // Years 1970 to 9999: what RFC 3339 in the JSON of earlier versions can spell too.
        (0_i64..253_402_300_800, 0_u32..1_000_000_000)
            .prop_map(|(secs, nanos)| chrono::DateTime::from_timestamp(secs, nanos).unwrap())
    }

    fn id() -> impl Strategy<Value = [u8; 16]> {
        any::<[u8; 16]>()
    }

    prop_compose! {
        fn stored_message()(
            (id, dialogue, seq, assistant, created_at) in (id(), id(), any::<u64>(), any::<bool>(), instant()),
            (prev, next, content) in (proptest::option::of(id()), proptest::option::of(id()), ".{0,40}"),
            meta in proptest::option::of((
                proptest::option::of(".{0,12}"),
                proptest::option::of(".{0,12}"),
                proptest::option::of(proptest::array::uniform3(proptest::option::of(any::<u32>()))),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of((0_usize..3, proptest::option::of("[A-Z]{2}"))),
            )),
            summary in proptest::option::of((id(), ".{0,20}", instant(), instant(), any::<u64>(), id())),
            fork in proptest::option::of((id(), id())),
        ) -> StoredMessage {
            let dialogue_id = DialogueId::from_bytes(dialogue);
            StoredMessage {
                message: Message {
                    id: MessageId::from_bytes(id),
                    dialogue_id,
                    seq,
                    role: if assistant { Role::Assistant } else { Role::User },
                    content,
                    created_at,
                    prev_id: prev.map(MessageId::from_bytes),
                    next_id: next.map(MessageId::from_bytes),
                    meta: meta.map(|(model, finish_reason, usage, truncated_messages, version, safety)| ReplyMeta {
                        model,
                        finish_reason,
                        usage: usage.map(|[prompt_tokens, completion_tokens, total_tokens]| Usage {
                            prompt_tokens, completion_tokens, total_tokens,
                        }),
                        truncated_messages,
                        version,
                        safety: safety.map(|(level, country)| SafetyNote { level: SafetyLevel::ALL[level], country }),
                    }),
                },
                summary: summary.map(|(owner, title, created_at, updated_at, message_count, tail)| {
                    DialogueSummary {
                        id: dialogue_id,
                        owner: UserId::from_bytes(owner),
                        title,
                        created_at,
                        updated_at,
                        message_count,
                        tail_id: MessageId::from_bytes(tail),
                        forked_from: fork.map(|(dialogue, message)| ForkOrigin {
                            dialogue_id: DialogueId::from_bytes(dialogue),
                            message_id: MessageId::from_bytes(message),
                        }),
                    }
                }),
            }
        }
    }

    proptest! {
        #[test]
        fn messages_read_back_exactly_in_the_binary_layout_and_from_json(stored in stored_message()) {
            let bytes = encode_message(&stored);
            prop_assert_eq!(decode_message(&bytes).unwrap(), stored.clone());
            let json = super::super::encode(&stored).unwrap();
            prop_assert_eq!(decode_message(&json).unwrap(), stored, "as earlier versions wrote it");
        }

        #[test]
        fn a_cut_or_lengthened_message_is_an_error_never_a_guess(stored in stored_message(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_message(&stored);
            let at = cut.index(bytes.len());
            prop_assert!(decode_message(&bytes[..at]).is_err(), "cut at {at} of {}", bytes.len());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode_message(&longer).is_err());
        }

        #[test]
        fn no_bytes_make_the_decoders_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), version in 0_u8..3) {
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            let _ = decode_message(&bytes);
            let _ = decode_session(&bytes);
        }
    }

    #[test]
    fn sessions_read_back_exactly_in_the_binary_layout_and_from_json() {
        let created = chrono::DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap();
        let session = Session {
            id: SessionId::generate(),
            user_id: UserId::generate(),
            created_at: created,
            expires_at: created + chrono::Duration::hours(1),
        };
        let bytes = encode_session(&session);
        assert_eq!(bytes.len(), SESSION_LEN);
        assert_eq!(decode_session(&bytes).unwrap(), session);
        assert_eq!(
            decode_session(&super::super::encode(&session).unwrap()).unwrap(),
            session,
            "as earlier versions wrote it"
        );
        let wrong_version = [2; SESSION_LEN];
        let mut longer = bytes.clone();
        longer.push(0);
        for broken in [&bytes[..SESSION_LEN - 1], &longer, &[][..], &wrong_version[..], &b"not json"[..]] {
            assert!(decode_session(broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn heads_written_before_forks_existed_still_read() {
        let head = Message {
            id: MessageId::generate(),
            dialogue_id: DialogueId::from_bytes([7; 16]),
            seq: 1,
            role: Role::User,
            content: "hello".into(),
            created_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            prev_id: None,
            next_id: None,
            meta: None,
        };
        let mut summary = DialogueSummary::of_head(UserId::generate(), &head);
        summary.id = head.dialogue_id;
        let stored = StoredMessage { message: head, summary: Some(summary) };
        // Version 1 is version 2 without the fork's presence byte at the end.
        let mut v1 = encode_message(&stored);
        assert_eq!(v1.pop(), Some(0));
        v1[0] = MESSAGE_V1;
        assert_eq!(decode_message(&v1).unwrap(), stored);
        v1.push(0);
        assert!(decode_message(&v1).is_err(), "a version 1 record has no fork");
    }

    #[test]
    fn replies_written_before_safety_notes_existed_still_read() {
        let reply = StoredMessage {
            message: Message {
                id: MessageId::generate(),
                dialogue_id: DialogueId::from_bytes([7; 16]),
                seq: 2,
                role: Role::Assistant,
                content: "hello".into(),
                created_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
                prev_id: Some(MessageId::generate()),
                next_id: None,
                meta: Some(ReplyMeta { version: Some(2), ..ReplyMeta::default() }),
            },
            summary: None,
        };
        // Version 3 is version 4 without the safety note's presence byte, just before the
        // summary's presence byte at the end.
        let mut v3 = encode_message(&reply);
        assert_eq!(v3.remove(v3.len() - 2), 0);
        v3[0] = MESSAGE_V3;
        assert_eq!(decode_message(&v3).unwrap(), reply);
        let mut noted = reply.clone();
        noted.message.meta.as_mut().unwrap().safety =
            Some(SafetyNote { level: SafetyLevel::Crisis, country: Some("DE".into()) });
        assert_eq!(decode_message(&encode_message(&noted)).unwrap(), noted);
    }

    #[test]
    fn a_message_of_an_unknown_role_or_presence_byte_is_refused() {
        let stored = StoredMessage {
            message: Message {
                id: MessageId::generate(),
                dialogue_id: DialogueId::from_bytes([7; 16]),
                seq: 1,
                role: Role::User,
                content: "hello".into(),
                created_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
                prev_id: None,
                next_id: None,
                meta: None,
            },
            summary: None,
        };
        let bytes = encode_message(&stored);
        let role_at = 1 + 16 + 16 + 8;
        let mut role = bytes.clone();
        role[role_at] = 2;
        assert!(decode_message(&role).unwrap_err().to_string().contains("role 2"));
        let mut presence = bytes;
        presence[role_at + 1 + 12] = 2;
        assert!(decode_message(&presence).unwrap_err().to_string().contains("presence byte 2"));
    }
}
