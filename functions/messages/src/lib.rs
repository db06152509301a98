//! `GET /api/v1/messages?dialogue_id=&limit=&cursor=`: one dialogue's messages in list order,
//! oldest first, a page at a time, forwards from the head or (`before=`) backwards from any
//! position, as a reader opening a long dialogue at its end scrolls up; `GET /api/v1/messages/{message_id}/versions?dialogue_id=`:
//! every version of a regenerated reply.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use ifs_api::extract::Query;
use ifs_api::views::{MessageView, SizedJson};
use ifs_api::{ApiError, AuthUser, Route};
use ifs_auth::Authenticator;
use ifs_domain::{DialogueId, Limit, MessageCursor, MessageId, PageFill, Timestamp};
use ifs_store::DialogueStore;
use serde::{Deserialize, Serialize};

/// Page size bounds.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

/// What the message listing needs.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct MessagesState {
    pub auth: Authenticator,
    pub dialogues: Arc<dyn DialogueStore>,
}

/// A page of a dialogue's messages.
pub const MESSAGES: Route = Route::get("/api/v1/messages");
/// The versions of one message.
pub const VERSIONS: Route = Route::get("/api/v1/messages/{message_id}/versions");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[MESSAGES, VERSIONS];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: MessagesState) -> Router {
    Router::new()
        .route(MESSAGES.path, MESSAGES.to(messages))
        .route(VERSIONS.path, VERSIONS.to(versions))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct VersionsQuery {
    dialogue_id: Option<String>,
}

/// Every version of a message, oldest first; the last is the one the dialogue shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionsResponse {
    #[schema(value_type = String, format = Uuid)]
    dialogue_id: DialogueId,
    #[schema(value_type = String, format = Uuid)]
    message_id: MessageId,
    versions: Vec<VersionView>,
}

/// One version of a reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    /// 1 for the first reply, one more for each regeneration.
    #[schema(minimum = 1)]
    version: u32,
    content: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ifs_domain::Usage>,
}

#[derive(Debug, Deserialize)]
struct MessagesQuery {
    dialogue_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    before: Option<String>,
}

/// One page of a dialogue's messages, in list order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagesResponse {
    #[schema(value_type = String, format = Uuid)]
    dialogue_id: DialogueId,
    messages: Vec<MessageView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(messages, versions))]
pub struct Api;

/// A dialogue's messages in list order (`seq` 1, 2, …), a page at a time: forwards from the
/// first with `cursor`, or with `before` the page just before a position (still in list order),
/// to read a dialogue from its end.
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "dialogues",
    operation_id = "messages",
    security(("bearer" = [])),
    params(
        ("dialogue_id" = String, Query, format = Uuid, description = "The dialogue (the id of its first message)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, 50 unless given"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the page before"),
        ("before" = Option<u64>, Query, minimum = 1, description = "Instead of `cursor`: the messages just before this `seq`, at most \
            `limit` of them, in list order, `next_cursor` null. The dialogue's `message_count + 1` (or more) gives \
            its last messages; the first `seq` of a page is the next page's `before`, until it is 1."),
    ),
    responses(
        (status = 200, description = "A page of messages", body = MessagesResponse),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn messages(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Query(query): Query<MessagesQuery>,
) -> Result<SizedJson<MessagesResponse>, ApiError> {
    let dialogue_id =
        query.dialogue_id.as_deref().ok_or_else(|| ApiError::invalid_field("dialogue_id", "is required"))?;
    let dialogue_id =
        DialogueId::parse(dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    let limit = Limit::parse(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)
        .map_err(|e| ApiError::invalid_field("limit", e))?;
    let cursor = query
        .cursor
        .as_deref()
        .map(MessageCursor::decode)
        .transpose()
        .map_err(|e| ApiError::invalid_field("cursor", e))?;
    let page = match query.before.as_deref() {
        None => store.messages(principal.user_id, dialogue_id, limit, cursor).await?,
        Some(_) if cursor.is_some() => {
            return Err(ApiError::invalid_field("before", "cannot be given with cursor"));
        }
        Some(before) => {
            let before = before
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| ApiError::invalid_field("before", "must be a whole number from 1"))?;
            let mut items =
                store.messages_before(principal.user_id, dialogue_id, before, limit.get()).await?;
            // The page keeps the newest that fit the byte budget of a forward page; the reader
            // asks for the rest with the first `seq` it got.
            let mut fill = PageFill::new(limit);
            let kept = items.iter().rev().take_while(|m| fill.admit(m.content.len())).count();
            items.drain(..items.len() - kept);
            ifs_domain::Page { items, next: None }
        }
    };
    // Text may grow when escaped; the buffer grows then.
    let capacity =
        page.items.iter().map(|m| m.content.len() + MessageView::JSON_OVERHEAD).sum::<usize>() + 200;
    Ok(SizedJson {
        body: MessagesResponse {
            dialogue_id,
            messages: page.items.into_iter().map(MessageView::from).collect(),
            next_cursor: page.next.map(|c| c.encode()),
        },
        capacity,
    })
}

/// Every version of one message of the caller's, oldest first, the current one last: a reply
/// regenerated keeps its earlier versions (at most 10); any other message has one.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{message_id}/versions",
    tag = "dialogues",
    operation_id = "message_versions",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, format = Uuid, description = "The message"),
        ("dialogue_id" = String, Query, format = Uuid, description = "Its dialogue (every message view names it)"),
    ),
    responses(
        (status = 200, description = "The message's versions", body = VersionsResponse),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn versions(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Path(message_id): Path<String>,
    Query(query): Query<VersionsQuery>,
) -> Result<axum::Json<VersionsResponse>, ApiError> {
    let message_id = MessageId::parse(&message_id).map_err(|e| ApiError::invalid_field("message_id", e))?;
    let dialogue_id =
        query.dialogue_id.as_deref().ok_or_else(|| ApiError::invalid_field("dialogue_id", "is required"))?;
    let dialogue_id =
        DialogueId::parse(dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    let versions = store.versions(principal.user_id, dialogue_id, message_id).await?;
    Ok(axum::Json(VersionsResponse {
        dialogue_id,
        message_id,
        versions: versions
            .into_iter()
            .map(|v| {
                let meta = v.meta.unwrap_or_default();
                VersionView {
                    version: v.version,
                    content: v.content,
                    created_at: v.created_at,
                    finish_reason: meta.finish_reason,
                    usage: meta.usage,
                }
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use ifs_api::testing::{World, call, empty_request};
    use ifs_domain::{Clock as _, MessageId, MessageText, NewMessage, Role};

    use super::*;

    fn said(world: &World, text: &str) -> NewMessage {
        NewMessage {
            id: MessageId::generate(),
            role: Role::User,
            content: MessageText::parse(text.into()).unwrap(),
            created_at: world.clock.now(),
            meta: None,
        }
    }

    #[tokio::test]
    async fn messages_come_in_list_order_with_their_links() {
        let world = World::new();
        let (owner, token) = world.signed_in("ada").await;
        let head = world.backends.dialogues.start_dialogue(owner, said(&world, "one")).await.unwrap();
        for text in ["two", "three"] {
            world
                .backends
                .dialogues
                .append_message(owner, head.dialogue_id, said(&world, text))
                .await
                .unwrap();
        }
        let app = router(MessagesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });

        let uri = format!("/api/v1/messages?dialogue_id={}&limit=2", head.dialogue_id);
        let (status, page) = call(app.clone(), empty_request("GET", &uri, Some(&token))).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["messages"][0]["content"], "one");
        assert_eq!(page["messages"][0]["prev_id"], serde_json::Value::Null);
        assert_eq!(page["messages"][0]["next_id"], page["messages"][1]["id"]);
        let next = format!("{uri}&cursor={}", page["next_cursor"].as_str().unwrap());
        let (_, rest) = call(app.clone(), empty_request("GET", &next, Some(&token))).await;
        assert_eq!(rest["messages"][0]["content"], "three");
        assert_eq!(rest["messages"][0]["prev_id"], page["messages"][1]["id"]);
        assert_eq!(rest["next_cursor"], serde_json::Value::Null);

        // Backwards from the end, as a reader opening the dialogue scrolls up.
        let contents = |page: &serde_json::Value| -> Vec<String> {
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, last) =
            call(app.clone(), empty_request("GET", &format!("{uri}&before=4"), Some(&token))).await;
        assert_eq!(status, StatusCode::OK, "{last}");
        assert_eq!(contents(&last), ["two", "three"]);
        assert_eq!(last["next_cursor"], serde_json::Value::Null);
        let (_, earlier) =
            call(app.clone(), empty_request("GET", &format!("{uri}&before=2"), Some(&token))).await;
        assert_eq!(contents(&earlier), ["one"]);
        let (_, past) = call(app, empty_request("GET", &format!("{uri}&before=999999"), Some(&token))).await;
        assert_eq!(contents(&past), ["two", "three"]);
    }

    #[tokio::test]
    async fn missing_or_bad_parameters_are_400s_and_others_dialogues_404s() {
        let world = World::new();
        let (owner, _) = world.signed_in("ada").await;
        let (_, bob) = world.signed_in("bob").await;
        let head = world.backends.dialogues.start_dialogue(owner, said(&world, "private")).await.unwrap();
        let app = router(MessagesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });
        let id = head.dialogue_id;
        for (query, status, field) in [
            (String::new(), StatusCode::BAD_REQUEST, "dialogue_id"),
            ("dialogue_id=42".into(), StatusCode::BAD_REQUEST, "dialogue_id"),
            (format!("dialogue_id={id}&limit=201"), StatusCode::BAD_REQUEST, "limit"),
            (format!("dialogue_id={id}&cursor=%%%"), StatusCode::BAD_REQUEST, ""),
            (format!("dialogue_id={id}&cursor=abc"), StatusCode::BAD_REQUEST, "cursor"),
            (format!("dialogue_id={id}&before=0"), StatusCode::BAD_REQUEST, "before"),
            (format!("dialogue_id={id}&before=-3"), StatusCode::BAD_REQUEST, "before"),
            (
                format!("dialogue_id={id}&before=2&cursor={}", MessageCursor { after_seq: 1 }.encode()),
                StatusCode::BAD_REQUEST,
                "before",
            ),
            (format!("dialogue_id={id}&before=5"), StatusCode::NOT_FOUND, ""),
            (format!("dialogue_id={id}"), StatusCode::NOT_FOUND, ""),
        ] {
            let (got, json) =
                call(app.clone(), empty_request("GET", &format!("/api/v1/messages?{query}"), Some(&bob)))
                    .await;
            assert_eq!(got, status, "{query} → {json}");
            assert!(json["error"]["message"].as_str().unwrap().starts_with(field), "{json}");
        }
    }
}
