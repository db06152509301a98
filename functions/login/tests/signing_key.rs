//! Login's signing key from SSM Parameter Store, against a stand-in for SSM's JSON API: the
//! SecureString is asked for decrypted, and a missing parameter stops the cold start naming it.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFakeKeyMaterialForTheTestOnly0123456789abcd\n-----END PRIVATE KEY-----\n";

type Seen = Arc<Mutex<Vec<Value>>>;

/// SSM's `GetParameter` (awsJson1.1: `POST /` with `X-Amz-Target`), knowing one parameter.
async fn ssm(State(seen): State<Seen>, headers: HeaderMap, body: String) -> axum::response::Response {
    assert_eq!(headers["x-amz-target"], "AmazonSSM.GetParameter");
    let request: Value = serde_json::from_str(&body).unwrap();
    seen.lock().unwrap().push(request.clone());
    if request["Name"] == "/ifs-guide/jwt-private-key" {
        let parameter = json!({"Parameter": {"Name": request["Name"], "Type": "SecureString", "Value": PEM, "Version": 1}});
        return ([("content-type", "application/x-amz-json-1.1")], parameter.to_string()).into_response();
    }
    let missing = json!({"__type": "ParameterNotFound", "message": "no such parameter"});
    (StatusCode::BAD_REQUEST, [("content-type", "application/x-amz-json-1.1")], missing.to_string())
        .into_response()
}

async fn endpoint(seen: Seen) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/", post(ssm)).with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn the_key_is_read_decrypted_from_its_parameter() {
    let seen = Seen::default();
    let ssm = endpoint(seen.clone()).await;
    let key = ifs_login::signing_key::from_parameter("/ifs-guide/jwt-private-key", Some(&ssm)).await.unwrap();
    assert_eq!(key.expose_secret(), PEM);
    assert_eq!(seen.lock().unwrap()[0]["WithDecryption"], true);
}

#[tokio::test]
async fn a_missing_parameter_is_an_error_that_names_it() {
    let ssm = endpoint(Seen::default()).await;
    let error = ifs_login::signing_key::from_parameter("/nope", Some(&ssm)).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("JWT_PRIVATE_KEY_PARAMETER /nope") && message.contains("ParameterNotFound"),
        "{message}"
    );
}
