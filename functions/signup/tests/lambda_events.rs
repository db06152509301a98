//! API Gateway events, as Lambda delivers them, through `lambda_http`'s conversion into this
//! function's router, through the same service `main` runs: proof that the router works
//! unchanged behind API Gateway, named stages included.

use std::sync::Arc;

use axum::http::StatusCode;
use http_body_util::BodyExt as _;
use ifs_api::testing::World;
use ifs_signup::{SignupState, router};
use tower::ServiceExt as _;

async fn handle(world: &World, event: &str) -> (StatusCode, serde_json::Value) {
    let request = lambda_http::request::from_str(event).expect("a valid API Gateway event");
    let app = ifs_api::lambda::service(router(SignupState {
        users: world.backends.users.clone(),
        hasher: world.hasher.clone(),
        clock: Arc::new(ifs_domain::SystemClock),
    }));
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

#[tokio::test]
async fn an_http_api_event_signs_a_user_up() {
    let world = World::new();
    let (status, body) = handle(&world, include_str!("data/apigw_v2_signup.json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["email"], "lambda@example.com");
}

#[tokio::test]
async fn a_rest_api_event_with_a_base64_body_is_validated_like_any_other() {
    let world = World::new();
    let (status, body) = handle(&world, include_str!("data/apigw_rest_signup_base64.json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["message"], "password: must be at least 8 characters");
}
