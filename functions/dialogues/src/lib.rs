//! `GET /api/v1/dialogues?limit=&cursor=`: the caller's dialogues, newest activity first, a page
//! at a time; `GET /api/v1/dialogues/{dialogue_id}`: one of them (what a client opening it by
//! its id shows first); `PATCH /api/v1/dialogues/{dialogue_id}`: a new title for one of them;
//! `DELETE /api/v1/dialogues/{dialogue_id}` and `DELETE /api/v1/dialogues`: one of them, or all,
//! erased; `POST /api/v1/dialogues/{dialogue_id}/fork`: a copy up to a message, to go on from
//! there differently (how an earlier message is edited);
//! `GET /api/v1/dialogues/{dialogue_id}/export?format=json|markdown`: one of them as a download.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ifs_api::extract::Query;
use ifs_api::views::SizedJson;
use ifs_api::{ApiError, AuthUser, Json, Route};
use ifs_auth::Authenticator;
use ifs_domain::dialogue::title_for;
use ifs_domain::{DialogueCursor, DialogueId, DialogueSummary, Limit, MessageId, Timestamp};
use ifs_store::DialogueStore;
use serde::{Deserialize, Serialize};

/// Page size bounds.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// What the listing needs.
#[derive(Debug, Clone, axum::extract::FromRef)]
pub struct DialoguesState {
    pub auth: Authenticator,
    pub dialogues: Arc<dyn DialogueStore>,
}

/// The listing.
pub const DIALOGUES: Route = Route::get("/api/v1/dialogues");
/// One dialogue's summary.
pub const DIALOGUE: Route = Route::get("/api/v1/dialogues/{dialogue_id}");
/// A new title for one dialogue.
pub const RENAME: Route = Route::patch("/api/v1/dialogues/{dialogue_id}");
/// Erases one dialogue.
pub const DELETE: Route = Route::delete("/api/v1/dialogues/{dialogue_id}");
/// Erases every dialogue of the caller.
pub const DELETE_ALL: Route = Route::delete("/api/v1/dialogues");
/// A new dialogue copied from one up to a message.
pub const FORK: Route = Route::post("/api/v1/dialogues/{dialogue_id}/fork");
/// One dialogue as a download.
pub const EXPORT: Route = Route::get("/api/v1/dialogues/{dialogue_id}/export");
/// Every route of this function, for what maps requests to it.
pub const ROUTES: &[Route] = &[DIALOGUES, DIALOGUE, RENAME, DELETE, DELETE_ALL, FORK, EXPORT];

/// The routes of this function, as `template.yaml` gives them.
pub fn router(state: DialoguesState) -> Router {
    Router::new()
        .route(DIALOGUES.path, DIALOGUES.to(dialogues))
        .route(DIALOGUE.path, DIALOGUE.to(dialogue).merge(RENAME.to(rename)).merge(DELETE.to(delete)))
        .route(DIALOGUES.path, DELETE_ALL.to(delete_all))
        .route(FORK.path, FORK.to(fork))
        .route(EXPORT.path, EXPORT.to(export))
        .with_state(state)
}

/// A dialogue's new title.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"title": "Talking to my inner critic"}))]
pub struct RenameRequest {
    /// Kept as titles are: whitespace folded, control, format and bidi characters dropped, cut at
    /// 80 characters; at least one visible character must remain.
    #[schema(min_length = 1)]
    title: String,
}

/// Where to fork a dialogue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"message_id": "0193a4c2-8d1e-7c4a-9b2f-3e4d5a6b7c8d"}))]
pub struct ForkRequest {
    /// The last message the fork copies: one of the dialogue's, at most the 1,000th.
    #[schema(format = Uuid)]
    message_id: String,
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// A dialogue in the list: its first message's id, a title from that message, when it started
/// and when it last grew.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DialogueView {
    #[schema(value_type = String, format = Uuid)]
    id: DialogueId,
    /// The first message, or the title the user gave it; whitespace folded, at most 80 characters.
    title: String,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "ifs_api::views::rfc3339")]
    updated_at: Timestamp,
    #[schema(minimum = 1)]
    message_count: u64,
    /// Present on a fork: the dialogue and message it was copied from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    forked_from: Option<ForkedFrom>,
}

/// Where a fork was copied from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ForkedFrom {
    #[schema(value_type = String, format = Uuid)]
    dialogue_id: DialogueId,
    #[schema(value_type = String, format = Uuid)]
    message_id: MessageId,
}

impl DialogueView {
    /// About what one dialogue takes as JSON besides its title: its id, instants and names.
    const JSON_OVERHEAD: usize = 160;
}

impl From<DialogueSummary> for DialogueView {
    fn from(d: DialogueSummary) -> Self {
        Self {
            id: d.id,
            title: d.title,
            created_at: d.created_at,
            updated_at: d.updated_at,
            message_count: d.message_count,
            forked_from: d
                .forked_from
                .map(|origin| ForkedFrom { dialogue_id: origin.dialogue_id, message_id: origin.message_id }),
        }
    }
}

/// One page of the caller's dialogues, newest activity first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse {
    dialogues: Vec<DialogueView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The operations of this function, for the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(dialogues, dialogue, rename, delete, delete_all, fork, export))]
pub struct Api;

/// The caller's dialogues, newest activity first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/dialogues",
    tag = "dialogues",
    operation_id = "dialogues",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, 20 unless given"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the page before"),
    ),
    responses(
        (status = 200, description = "A page of dialogues", body = ListResponse),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn dialogues(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Query(query): Query<ListQuery>,
) -> Result<SizedJson<ListResponse>, ApiError> {
    let limit = Limit::parse(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)
        .map_err(|e| ApiError::invalid_field("limit", e))?;
    let cursor = query
        .cursor
        .as_deref()
        .map(DialogueCursor::decode)
        .transpose()
        .map_err(|e| ApiError::invalid_field("cursor", e))?;
    let page = store.dialogues(principal.user_id, limit, cursor).await?;
    // Titles may grow when escaped; the buffer grows then.
    let capacity =
        page.items.iter().map(|d| d.title.len() + DialogueView::JSON_OVERHEAD).sum::<usize>() + 200;
    Ok(SizedJson {
        body: ListResponse {
            dialogues: page.items.into_iter().map(DialogueView::from).collect(),
            next_cursor: page.next.map(|c| c.encode()),
        },
        capacity,
    })
}

/// One of the caller's dialogues: its title, when it started and last grew, how many messages it
/// holds (a client opening it at its end asks `GET /api/v1/messages` for those `before`
/// `message_count + 1`).
#[utoipa::path(
    get,
    path = "/api/v1/dialogues/{dialogue_id}",
    tag = "dialogues",
    operation_id = "dialogue",
    security(("bearer" = [])),
    params(("dialogue_id" = String, Path, format = Uuid, description = "The dialogue (the id of its first message)")),
    responses(
        (status = 200, description = "The dialogue", body = DialogueView),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn dialogue(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Path(dialogue_id): Path<String>,
) -> Result<axum::Json<DialogueView>, ApiError> {
    let dialogue = DialogueId::parse(&dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    Ok(axum::Json(DialogueView::from(store.dialogue(principal.user_id, dialogue).await?)))
}

/// Gives one of the caller's dialogues a new title. Renaming is not activity: the dialogue keeps
/// its place in the listing.
#[utoipa::path(
    patch,
    path = "/api/v1/dialogues/{dialogue_id}",
    tag = "dialogues",
    operation_id = "rename_dialogue",
    security(("bearer" = [])),
    params(("dialogue_id" = String, Path, format = Uuid, description = "The dialogue (the id of its first message)")),
    request_body = RenameRequest,
    responses(
        (status = 200, description = "The dialogue, renamed", body = DialogueView),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn rename(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Path(dialogue_id): Path<String>,
    Json(request): Json<RenameRequest>,
) -> Result<axum::Json<DialogueView>, ApiError> {
    let dialogue = DialogueId::parse(&dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    let title = title_for(&request.title);
    if title.is_empty() {
        return Err(ApiError::invalid_field("title", "must have a visible character"));
    }
    let summary = store.rename_dialogue(principal.user_id, dialogue, title).await?;
    Ok(axum::Json(DialogueView::from(summary)))
}

/// Erases one of the caller's dialogues: afterwards it, its messages and every id in it answer
/// 404 to everyone. A turn racing the deletion either lands before it (and is erased with it) or
/// fails with 404.
#[utoipa::path(
    delete,
    path = "/api/v1/dialogues/{dialogue_id}",
    tag = "dialogues",
    operation_id = "delete_dialogue",
    security(("bearer" = [])),
    params(("dialogue_id" = String, Path, format = Uuid, description = "The dialogue (the id of its first message)")),
    responses(
        (status = 204, description = "The dialogue is erased"),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn delete(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Path(dialogue_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let dialogue = DialogueId::parse(&dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    store.delete_dialogue(principal.user_id, dialogue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases every dialogue of the caller, as deleting each would. Safe to repeat: a call that was
/// cut short is finished by the next.
#[utoipa::path(
    delete,
    path = "/api/v1/dialogues",
    tag = "dialogues",
    operation_id = "delete_dialogues",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every dialogue of the caller is erased"),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn delete_all(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
) -> Result<StatusCode, ApiError> {
    let deleted = store.delete_dialogues(principal.user_id).await?;
    tracing::info!(deleted, "erased every dialogue of a user");
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a new dialogue holding copies (new ids) of this one's messages from its first up to
/// and including `message_id`, under the same title; the original is untouched. This is how an
/// earlier message is edited: fork at the message before it, then continue the fork with the
/// new text. At most 1,000 messages are copied.
#[utoipa::path(
    post,
    path = "/api/v1/dialogues/{dialogue_id}/fork",
    tag = "dialogues",
    operation_id = "fork_dialogue",
    security(("bearer" = [])),
    params(("dialogue_id" = String, Path, format = Uuid, description = "The dialogue to copy from")),
    request_body = ForkRequest,
    responses(
        (status = 201, description = "The fork", body = DialogueView),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 409, description = "The message is further into the dialogue than a fork copies",
         body = ifs_api::openapi::ErrorBody,
         example = json!({"error": {"code": "fork_too_long", "message": "a fork copies at most 1000 messages: fork at an earlier message"}})),
        (status = 413, response = ifs_api::openapi::PayloadTooLarge),
        (status = 415, response = ifs_api::openapi::UnsupportedMediaType),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn fork(
    AuthUser(principal): AuthUser,
    State(state): State<DialoguesState>,
    Path(dialogue_id): Path<String>,
    Json(request): Json<ForkRequest>,
) -> Result<(StatusCode, axum::Json<DialogueView>), ApiError> {
    let dialogue = DialogueId::parse(&dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    let through =
        MessageId::parse(&request.message_id).map_err(|e| ApiError::invalid_field("message_id", e))?;
    let summary = state.dialogues.fork_dialogue(principal.user_id, dialogue, through).await?;
    ifs_api::keep_if_signed_in(&state.auth, state.dialogues.as_ref(), &principal, summary.id).await?;
    Ok((StatusCode::CREATED, axum::Json(DialogueView::from(summary))))
}

/// One of the caller's dialogues as a download: JSON (`ifs-guide-export/1`: the dialogue's
/// summary and every message, with its reply metadata) or Markdown (for reading). Streamed a page
/// at a time; if the export fails midway the body ends with an error, never as a shorter
/// document.
#[utoipa::path(
    get,
    path = "/api/v1/dialogues/{dialogue_id}/export",
    tag = "dialogues",
    operation_id = "export_dialogue",
    security(("bearer" = [])),
    params(
        ("dialogue_id" = String, Path, format = Uuid, description = "The dialogue"),
        ("format" = Option<String>, Query, description = "`json` (the default) or `markdown`",
         example = "markdown"),
    ),
    responses(
        (status = 200, description = "The dialogue, as an attachment (`content-disposition`)",
         content((Object = "application/json"), (String = "text/markdown")),
         headers(("content-disposition" = String, description = "attachment; filename=\"ifs-guide-<id>.json\" (or .md)"))),
        (status = 400, response = ifs_api::openapi::BadRequest),
        (status = 401, response = ifs_api::openapi::Unauthorized),
        (status = 404, response = ifs_api::openapi::NotFound),
        (status = 500, response = ifs_api::openapi::Internal),
        (status = 503, response = ifs_api::openapi::Unavailable),
    )
)]
async fn export(
    AuthUser(principal): AuthUser,
    State(store): State<Arc<dyn DialogueStore>>,
    Path(dialogue_id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    let dialogue = DialogueId::parse(&dialogue_id).map_err(|e| ApiError::invalid_field("dialogue_id", e))?;
    let format = ifs_api::export::Format::parse(query.format.as_deref())
        .map_err(|e| ApiError::invalid_field("format", e))?;
    // Found before the answer starts: a dialogue that is not the caller's is a 404, not a
    // broken download.
    let summary = store.dialogue(principal.user_id, dialogue).await?;
    Ok(ifs_api::export::dialogue(store, summary, format, chrono::Utc::now()))
}

#[cfg(test)]
mod tests {
    use ifs_api::testing::{World, call, empty_request};
    use ifs_domain::{Clock as _, MessageId, MessageText, NewMessage, Role};

    use super::*;

    #[tokio::test]
    async fn dialogues_page_newest_first_with_titles() {
        let world = World::new();
        let (owner, token) = world.signed_in("ada").await;
        for i in 0..3 {
            world.clock.advance(chrono::Duration::seconds(1));
            let first = NewMessage {
                id: MessageId::generate(),
                role: Role::User,
                content: MessageText::parse(format!("dialogue {i}")).unwrap(),
                created_at: world.clock.now(),
                meta: None,
            };
            world.backends.dialogues.start_dialogue(owner, first).await.unwrap();
        }
        let app = router(DialoguesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });

        let (status, one) =
            call(app.clone(), empty_request("GET", "/api/v1/dialogues?limit=2", Some(&token))).await;
        assert_eq!(status, StatusCode::OK, "{one}");
        let titles: Vec<_> =
            one["dialogues"].as_array().unwrap().iter().map(|d| d["title"].as_str().unwrap()).collect();
        assert_eq!(titles, ["dialogue 2", "dialogue 1"]);
        assert_eq!(one["dialogues"][0]["message_count"], 1);

        let next = format!("/api/v1/dialogues?limit=2&cursor={}", one["next_cursor"].as_str().unwrap());
        let (_, two) = call(app.clone(), empty_request("GET", &next, Some(&token))).await;
        assert_eq!(two["dialogues"][0]["title"], "dialogue 0");
        assert_eq!(two["next_cursor"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_dialogue_is_renamed_by_its_owner_only_and_its_title_kept_clean() {
        let world = World::new();
        let (owner, token) = world.signed_in("ada").await;
        let (_, stranger) = world.signed_in("bob").await;
        let first = NewMessage {
            id: MessageId::generate(),
            role: Role::User,
            content: MessageText::parse("hello".into()).unwrap(),
            created_at: world.clock.now(),
            meta: None,
        };
        let head = world.backends.dialogues.start_dialogue(owner, first).await.unwrap();
        let app = router(DialoguesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });
        let path = format!("/api/v1/dialogues/{}", head.dialogue_id);
        let rename = |token: &str, path: &str, body: serde_json::Value| {
            call(app.clone(), ifs_api::testing::json_request("PATCH", path, Some(token), &body))
        };

        let (status, renamed) =
            rename(&token, &path, serde_json::json!({"title": "  My \u{202E}inner\n critic  "})).await;
        assert_eq!(status, StatusCode::OK, "{renamed}");
        assert_eq!(renamed["title"], "My inner critic");
        assert_eq!(renamed["id"], head.dialogue_id.to_string());
        let (_, listed) = call(app.clone(), empty_request("GET", "/api/v1/dialogues", Some(&token))).await;
        assert_eq!(listed["dialogues"][0]["title"], "My inner critic");
        // One dialogue read on its own says what the listing says, to its owner only.
        let (status, one) = call(app.clone(), empty_request("GET", &path, Some(&token))).await;
        assert_eq!((status, &one), (StatusCode::OK, &listed["dialogues"][0]));
        let (status, _) = call(app.clone(), empty_request("GET", &path, Some(&stranger))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) =
            call(app.clone(), empty_request("GET", "/api/v1/dialogues/nope", Some(&token))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = rename(&stranger, &path, serde_json::json!({"title": "mine"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for (path, body, field) in [
            (path.as_str(), serde_json::json!({"title": " \u{200B} "}), "title"),
            (path.as_str(), serde_json::json!({}), "title"),
            ("/api/v1/dialogues/nope", serde_json::json!({"title": "x"}), "dialogue_id"),
        ] {
            let (status, json) = rename(&token, path, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
            assert!(json["error"]["message"].as_str().unwrap().contains(field), "{json}");
        }
    }

    #[tokio::test]
    async fn a_dialogue_or_all_of_them_are_erased_by_their_owner_only() {
        let world = World::new();
        let (owner, token) = world.signed_in("ada").await;
        let (_, stranger) = world.signed_in("bob").await;
        let mut heads = Vec::new();
        for text in ["one", "two", "three"] {
            let first = NewMessage {
                id: MessageId::generate(),
                role: Role::User,
                content: MessageText::parse(text.into()).unwrap(),
                created_at: world.clock.now(),
                meta: None,
            };
            heads.push(world.backends.dialogues.start_dialogue(owner, first).await.unwrap().dialogue_id);
        }
        let app = router(DialoguesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });
        let delete =
            |token: &str, path: String| call(app.clone(), empty_request("DELETE", &path, Some(token)));
        let one = format!("/api/v1/dialogues/{}", heads[0]);

        assert_eq!(delete(&stranger, one.clone()).await.0, StatusCode::NOT_FOUND);
        assert_eq!(delete(&stranger, "/api/v1/dialogues".into()).await.0, StatusCode::NO_CONTENT);
        let (status, json) = delete(&token, "/api/v1/dialogues/nope".into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert!(json["error"]["message"].as_str().unwrap().contains("dialogue_id"), "{json}");
        let (_, listed) = call(app.clone(), empty_request("GET", "/api/v1/dialogues", Some(&token))).await;
        assert_eq!(listed["dialogues"].as_array().unwrap().len(), 3, "a stranger erased nothing");

        assert_eq!(delete(&token, one.clone()).await.0, StatusCode::NO_CONTENT);
        assert_eq!(delete(&token, one).await.0, StatusCode::NOT_FOUND);
        let (_, listed) = call(app.clone(), empty_request("GET", "/api/v1/dialogues", Some(&token))).await;
        assert_eq!(listed["dialogues"].as_array().unwrap().len(), 2);
        assert_eq!(delete(&token, "/api/v1/dialogues".into()).await.0, StatusCode::NO_CONTENT);
        let (_, listed) = call(app.clone(), empty_request("GET", "/api/v1/dialogues", Some(&token))).await;
        assert_eq!(listed["dialogues"], serde_json::json!([]));
        assert_eq!(delete(&token, format!("/api/v1/dialogues/{}", heads[2])).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_limits_and_cursors_are_400s_naming_the_parameter() {
        let world = World::new();
        let (_, token) = world.signed_in("ada").await;
        let app = router(DialoguesState {
            auth: world.authenticator(),
            dialogues: world.backends.dialogues.clone(),
        });
        for (query, field) in
            [("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("cursor=zzz", "cursor")]
        {
            let (status, json) =
                call(app.clone(), empty_request("GET", &format!("/api/v1/dialogues?{query}"), Some(&token)))
                    .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert!(json["error"]["message"].as_str().unwrap().starts_with(field), "{json}");
        }
    }
}
