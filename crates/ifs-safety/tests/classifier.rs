//! The classifier beside the built-in list, against a guard-model double on a loopback port:
//! its verdict can only raise a level; when it times out, fails or answers junk the built-in
//! list decides alone (fail open) and the screener name says so.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use ifs_domain::SafetyLevel;
use ifs_safety::{BuiltIn, Classifier, Combined, Screener as _};
use serde_json::{Value, json};

/// How the double answers.
#[derive(Debug, Clone, Copy)]
enum Guard {
    Says(&'static str),
    Fails,
    Junk,
    Sleeps,
}

async fn answer(
    State(guard): State<Guard>,
    axum::Json(request): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    assert_eq!(request["messages"][0]["role"], "user", "the person's message is asked about");
    let content = match guard {
        Guard::Says(content) => content,
        Guard::Fails => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "model not loaded").into_response();
        }
        Guard::Junk => return (axum::http::StatusCode::OK, "<html>hello</html>").into_response(),
        Guard::Sleeps => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "safe"
        }
    };
    axum::Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
        .into_response()
}

async fn screener(guard: Guard) -> Combined {
    let app = Router::new().route("/v1/chat/completions", post(answer)).with_state(guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let classifier = Classifier::new(&url, "llama-guard", Duration::from_millis(300)).unwrap();
    Combined { built_in: BuiltIn::default(), classifier: Some(classifier) }
}

const QUIET: &str = "I have been thinking about the weekend.";
const CRISIS: &str = "I want to kill myself";

#[tokio::test]
async fn a_self_harm_verdict_raises_a_message_the_list_missed_to_crisis() {
    let screener = screener(Guard::Says("unsafe\nS11")).await;
    let screening = screener.screen_message(QUIET).await;
    assert_eq!(screening.level, SafetyLevel::Crisis);
    assert!(screening.screener.ends_with("+classifier"), "{}", screening.screener);
    assert!(screener.reply_is_unsafe("hi", "a reply").await, "and a reply it judges so is unsafe");
}

#[tokio::test]
async fn a_safe_verdict_never_lowers_what_the_list_found() {
    let screener = screener(Guard::Says("safe")).await;
    assert_eq!(screener.screen_message(CRISIS).await.level, SafetyLevel::Crisis);
    assert_eq!(screener.screen_message(QUIET).await.level, SafetyLevel::None);
    let other = screener.screen_message(QUIET).await;
    assert!(other.screener.ends_with("+classifier"));
}

#[tokio::test]
async fn a_classifier_that_fails_answers_junk_or_times_out_leaves_the_list_to_decide() {
    for guard in [Guard::Fails, Guard::Junk, Guard::Sleeps, Guard::Says("I am not sure")] {
        let screener = screener(guard).await;
        let started = Instant::now();
        let crisis = screener.screen_message(CRISIS).await;
        let quiet = screener.screen_message(QUIET).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{guard:?} held the turn for {:?}",
            started.elapsed()
        );
        assert_eq!((crisis.level, quiet.level), (SafetyLevel::Crisis, SafetyLevel::None), "{guard:?}");
        assert!(quiet.screener.ends_with("+classifier-unavailable"), "{guard:?}: {}", quiet.screener);
        assert!(!screener.reply_is_unsafe("hi", "That sounds hard.").await, "{guard:?}");
    }
}

#[tokio::test]
async fn a_classifier_nobody_listens_on_leaves_the_list_to_decide_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
    drop(listener);
    let classifier = Classifier::new(&url, "llama-guard", Duration::from_millis(300)).unwrap();
    let screener = Combined { built_in: BuiltIn::default(), classifier: Some(classifier) };
    let screening = screener.screen_message(CRISIS).await;
    assert_eq!(screening.level, SafetyLevel::Crisis);
    assert!(screening.screener.ends_with("+classifier-unavailable"));
}
