//! Exports: one dialogue (JSON or Markdown) or a whole account (JSON), each one document written
//! a page of messages at a time into a bounded channel that the response body drains, so that
//! memory stays flat however much a person wrote, and a slow reader slows the reading instead of
//! filling memory. An export that fails midway ends the body with an error, never as a shorter
//! document that looks whole.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use futures::SinkExt as _;
use futures::channel::mpsc;
use ifs_domain::{
    DialogueId, DialogueSummary, Limit, Message, MessageCursor, ReplyMeta, ReplyVersion, Role, Timestamp,
    UserId,
};
use ifs_store::{DialogueStore, StoreError, UserRecord};
use serde::Serialize;

use crate::views::rfc3339;

/// What the `format` field of every JSON export says, so that a reader knows which shape it has.
pub const FORMAT: &str = "ifs-guide-export/1";
/// Messages read per page.
const MESSAGE_PAGE: usize = 100;
/// Dialogues listed per page when collecting an account's.
const DIALOGUE_PAGE: usize = 100;
/// Bytes gathered before a chunk is handed to the body.
const CHUNK: usize = 64 * 1024;

/// The formats of a dialogue's export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Markdown,
}

impl Format {
    /// `json` (also when absent) or `markdown`.
    pub fn parse(raw: Option<&str>) -> Result<Self, &'static str> {
        match raw.map(str::trim) {
            None | Some("json") => Ok(Self::Json),
            Some("markdown") => Ok(Self::Markdown),
            Some(_) => Err("must be json or markdown"),
        }
    }
}

/// A message as exported: everything stored about it but the links, which the order gives.
#[derive(Debug, Serialize)]
struct ExportedMessage<'a> {
    id: ifs_domain::MessageId,
    seq: u64,
    role: Role,
    content: &'a str,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ifs_domain::Usage>,
    /// On a regenerated reply: its version, and the earlier versions, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earlier_versions: Option<Vec<ExportedVersion>>,
}

/// An earlier version of a reply.
#[derive(Debug, Serialize)]
struct ExportedVersion {
    version: u32,
    content: String,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
}

impl<'a> From<&'a Message> for ExportedMessage<'a> {
    fn from(m: &'a Message) -> Self {
        let meta = m.meta.as_ref();
        Self {
            id: m.id,
            seq: m.seq,
            role: m.role,
            content: &m.content,
            created_at: m.created_at,
            model: meta.and_then(|meta| meta.model.as_deref()),
            finish_reason: meta.and_then(|meta| meta.finish_reason.as_deref()),
            usage: meta.and_then(|meta| meta.usage),
            version: meta.and_then(|meta| meta.version),
            earlier_versions: None,
        }
    }
}

/// A dialogue as exported, before its messages.
#[derive(Debug, Serialize)]
struct ExportedDialogue<'a> {
    id: DialogueId,
    title: &'a str,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    updated_at: Timestamp,
    message_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    forked_from: Option<ifs_domain::ForkOrigin>,
}

impl<'a> From<&'a DialogueSummary> for ExportedDialogue<'a> {
    fn from(d: &'a DialogueSummary) -> Self {
        Self {
            id: d.id,
            title: &d.title,
            created_at: d.created_at,
            updated_at: d.updated_at,
            message_count: d.message_count,
            forked_from: d.forked_from,
        }
    }
}

/// Why an export stopped.
#[derive(Debug)]
enum Stop {
    /// The reader went away: nothing more to do.
    Gone,
    Store(StoreError),
    Encode(serde_json::Error),
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<serde_json::Error> for Stop {
    fn from(error: serde_json::Error) -> Self {
        Self::Encode(error)
    }
}

/// Gathers bytes and hands them to the body in chunks, waiting while the reader is behind.
struct Writer {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl Writer {
    fn text(&mut self, text: &str) {
        self.buffer.extend_from_slice(text.as_bytes());
    }

    fn json(&mut self, value: &impl Serialize) -> Result<(), Stop> {
        Ok(serde_json::to_writer(&mut self.buffer, value)?)
    }

    /// `value`, a JSON object, without its closing brace, so that more members can follow.
    fn open_object(&mut self, value: &impl Serialize) -> Result<(), Stop> {
        self.json(value)?;
        if self.buffer.pop() != Some(b'}') {
            return Err(Stop::Encode(serde::ser::Error::custom("not an object")));
        }
        Ok(())
    }

    async fn flush_if_full(&mut self) -> Result<(), Stop> {
        if self.buffer.len() >= CHUNK { self.flush().await } else { Ok(()) }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
        self.tx.send(Ok(chunk)).await.map_err(|_| Stop::Gone)
    }
}

/// A body written by `produce` on a task of its own.
fn spawned<F, Fut>(produce: F) -> Body
where
    F: FnOnce(Writer) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Stop>> + Send + 'static,
{
    // One chunk in flight and one being written: a reader that stalls holds up the export.
    let (tx, rx) = mpsc::channel(1);
    let mut failed = tx.clone();
    tokio::spawn(async move {
        match produce(Writer { tx, buffer: Vec::with_capacity(CHUNK) }).await {
            Ok(()) | Err(Stop::Gone) => {}
            Err(Stop::Store(error)) => {
                tracing::error!(error = %error, "an export stopped midway");
                let _ = failed.send(Err(std::io::Error::other("the export could not be finished"))).await;
            }
            Err(Stop::Encode(error)) => {
                tracing::error!(error = %error, "an export could not be encoded");
                let _ = failed.send(Err(std::io::Error::other("the export could not be finished"))).await;
            }
        }
    });
    Body::from_stream(rx)
}

/// The response around an export's `body`: a download named `filename`, never cached.
fn download(body: Body, content_type: &'static str, filename: &str) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Writes every message of `dialogue`, page after page, through `each`, with the earlier
/// versions of a regenerated reply; a dialogue deleted meanwhile ends early.
async fn each_message(
    store: &dyn DialogueStore,
    owner: UserId,
    dialogue: DialogueId,
    out: &mut Writer,
    mut each: impl FnMut(&mut Writer, &Message, Vec<ReplyVersion>, bool) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let mut cursor: Option<MessageCursor> = None;
    let mut first = true;
    loop {
        let page = match store
            .messages(owner, dialogue, Limit::new_clamped(MESSAGE_PAGE, MESSAGE_PAGE), cursor)
            .await
        {
            Ok(page) => page,
            // Deleted while it was being exported: what was written stands.
            Err(StoreError::NotFound) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        for message in &page.items {
            let mut earlier = Vec::new();
            if ReplyMeta::version(message.meta.as_ref()) > 1 {
                match store.versions(owner, dialogue, message.id).await {
                    Ok(mut versions) => {
                        versions.pop();
                        earlier = versions;
                    }
                    Err(StoreError::NotFound) => return Ok(()),
                    Err(error) => return Err(error.into()),
                }
            }
            each(out, message, earlier, first)?;
            first = false;
        }
        out.flush_if_full().await?;
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Writes `summary`'s dialogue as a JSON object with its messages.
async fn dialogue_json(
    store: &dyn DialogueStore,
    summary: &DialogueSummary,
    out: &mut Writer,
) -> Result<(), Stop> {
    out.open_object(&ExportedDialogue::from(summary))?;
    out.text(",\"messages\":[");
    each_message(store, summary.owner, summary.id, out, |out, message, earlier, first| {
        if !first {
            out.text(",");
        }
        let mut exported = ExportedMessage::from(message);
        if !earlier.is_empty() {
            exported.earlier_versions = Some(
                earlier
                    .into_iter()
                    .map(|v| ExportedVersion {
                        version: v.version,
                        content: v.content,
                        created_at: v.created_at,
                        finish_reason: v.meta.and_then(|meta| meta.finish_reason),
                    })
                    .collect(),
            );
        }
        out.json(&exported)
    })
    .await?;
    out.text("]}");
    Ok(())
}

/// One dialogue, already found to be the caller's (`summary`), as a download.
pub fn dialogue(
    store: Arc<dyn DialogueStore>,
    summary: DialogueSummary,
    format: Format,
    now: Timestamp,
) -> Response<Body> {
    let filename = format!("ifs-guide-{}.{}", summary.id, if format == Format::Json { "json" } else { "md" });
    let content_type =
        if format == Format::Json { "application/json" } else { "text/markdown; charset=utf-8" };
    let body = spawned(move |mut out| async move {
        match format {
            Format::Json => {
                out.text(&format!("{{\"format\":\"{FORMAT}\",\"exported_at\":"));
                out.json(&Stamp(now))?;
                out.text(",\"dialogue\":");
                dialogue_json(store.as_ref(), &summary, &mut out).await?;
                out.text("}\n");
            }
            Format::Markdown => {
                markdown_head(&mut out, &summary, now);
                each_message(store.as_ref(), summary.owner, summary.id, &mut out, |out, message, _, _| {
                    markdown_message(out, message);
                    Ok(())
                })
                .await?;
            }
        }
        out.flush().await
    });
    download(body, content_type, &filename)
}

/// The whole account of `user`: their profile, then every dialogue with every message, as one
/// JSON document. The list of dialogues is taken first (16 bytes each), so one that gets a new
/// message while the export runs is neither missed nor written twice.
pub fn account(store: Arc<dyn DialogueStore>, user: UserRecord, now: Timestamp) -> Response<Body> {
    let filename = format!("ifs-guide-account-{}.json", now.format("%Y-%m-%d"));
    let body = spawned(move |mut out| async move {
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let page =
                store.dialogues(user.id, Limit::new_clamped(DIALOGUE_PAGE, DIALOGUE_PAGE), cursor).await?;
            ids.extend(page.items.iter().map(|d| d.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        out.text(&format!("{{\"format\":\"{FORMAT}\",\"exported_at\":"));
        out.json(&Stamp(now))?;
        out.text(",\"profile\":");
        out.json(&Profile {
            id: user.id,
            email: user.email.as_str(),
            created_at: user.created_at,
            country: user.country.as_ref().map(ifs_domain::Country::as_str),
        })?;
        out.text(",\"dialogues\":[");
        let mut first = true;
        for id in ids {
            let summary = match store.dialogue(user.id, id).await {
                Ok(summary) => summary,
                // Deleted since the list was taken.
                Err(StoreError::NotFound) => continue,
                Err(error) => return Err(error.into()),
            };
            if !first {
                out.text(",");
            }
            first = false;
            dialogue_json(store.as_ref(), &summary, &mut out).await?;
            out.flush_if_full().await?;
        }
        out.text("]}\n");
        out.flush().await
    });
    download(body, "application/json", &filename)
}

/// An instant as the API writes them.
#[derive(Debug, Serialize)]
struct Stamp(#[serde(serialize_with = "rfc3339")] Timestamp);

/// The account's profile in an export.
#[derive(Debug, Serialize)]
struct Profile<'a> {
    id: UserId,
    email: &'a str,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    /// Whose crisis lines they are given, if they said.
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
}

/// A Markdown export's title and what it is.
fn markdown_head(out: &mut Writer, summary: &DialogueSummary, now: Timestamp) {
    out.text(&format!(
        "# {}\n\nExported from ifs-guide on {}. Started {}; {} messages.\n",
        summary.title,
        now.format("%Y-%m-%d %H:%M UTC"),
        summary.created_at.format("%Y-%m-%d %H:%M UTC"),
        summary.message_count,
    ));
    if let Some(origin) = summary.forked_from {
        out.text(&format!("Forked from dialogue {} at message {}.\n", origin.dialogue_id, origin.message_id));
    }
}

/// One message in a Markdown export: who and when, then the words as written. A reply that did
/// not end normally says how it ended.
fn markdown_message(out: &mut Writer, message: &Message) {
    let who = match message.role {
        Role::User => "You",
        Role::Assistant => "Guide",
    };
    let ended = match message.meta.as_ref().and_then(|meta| meta.finish_reason.as_deref()) {
        None | Some("stop") => String::new(),
        Some(reason) => format!(" ({reason})"),
    };
    out.text(&format!(
        "\n---\n\n**{who}**{ended} · {}\n\n{}\n",
        message.created_at.format("%Y-%m-%d %H:%M UTC"),
        message.content.trim_end()
    ));
}
