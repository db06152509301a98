//! Data and sessions survive a restart of the server on the same `DATA_DIR`.

use axum::http::StatusCode;

use crate::helpers::{assert_valid_list, spawn_app, spawn_app_in};

#[tokio::test]
async fn users_sessions_and_dialogues_survive_a_restart() {
    let app = spawn_app().await;
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "remember this", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    app.say(&token, "and this", Some(&dialogue)).await;

    let backing = app.stop().await;
    let app = spawn_app_in(backing, &[]).await;

    // The same key and session store: the old token still works.
    let (status, me) = app.get("/api/v1/me", Some(&token)).await;
    assert_eq!((status, me["email"].as_str()), (StatusCode::OK, Some("ada@example.com")));
    let messages = app.all_messages(&token, &dialogue).await;
    assert_eq!(messages.len(), 4);
    assert_valid_list(&messages);
    assert_eq!(app.login("ada@example.com", "a long password").await.0, StatusCode::OK);
    let (status, _) = app.say(&token, "I'm back", Some(&dialogue)).await;
    assert_eq!(status, StatusCode::OK);
}
