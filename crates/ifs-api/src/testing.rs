//! Test support for router tests: a throwaway embedded store, fresh keys, a manual clock, and
//! helpers to sign someone in and call a router with `oneshot`. Only built with `testing`.

// Test support: a panic is how a case reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ifs_auth::{Authenticator, JwtKeys, PasswordHasher, TokenIssuer, TokenSettings, TokenVerifier};
use ifs_domain::{Email, ManualClock, SessionId, UserId};
use ifs_store::{Session, UserRecord};
use tower::ServiceExt as _;

use crate::backends::Backends;

/// Everything a function's state is built from, backed by a temporary directory.
#[derive(Debug)]
pub struct World {
    pub backends: Backends,
    pub keys: JwtKeys,
    pub settings: TokenSettings,
    pub clock: Arc<ManualClock>,
    pub hasher: PasswordHasher,
    _dir: tempfile::TempDir,
}

impl World {
    /// A new world whose clock stands at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backends = Backends::embedded(dir.path()).expect("embedded store");
        let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("valid instant");
        Self {
            backends,
            keys: JwtKeys::generate().expect("keys"),
            settings: TokenSettings {
                issuer: "ifs-guide".into(),
                audience: "ifs-guide".into(),
                ttl: chrono::Duration::hours(1),
            },
            clock: Arc::new(ManualClock::starting_at(start)),
            hasher: PasswordHasher::new().expect("hasher"),
            _dir: dir,
        }
    }

    pub fn authenticator(&self) -> Authenticator {
        let verifier = TokenVerifier::new(self.keys.public.clone(), &self.settings);
        Authenticator::new(verifier, self.backends.sessions.clone(), self.clock.clone())
    }

    pub fn issuer(&self) -> TokenIssuer {
        TokenIssuer::new(self.keys.clone(), self.settings.clone())
    }

    /// Registers `name@example.com` (password `password-of-{name}`) and opens a session;
    /// returns the user's id and a bearer token.
    pub async fn signed_in(&self, name: &str) -> (UserId, String) {
        use ifs_domain::Clock as _;
        let now = self.clock.now();
        let user = UserRecord {
            id: UserId::generate(),
            email: Email::parse(&format!("{name}@example.com")).expect("email"),
            password_hash: "unused".into(),
            created_at: now,
            country: None,
        };
        self.backends.users.create_user(&user).await.expect("user");
        let session = Session {
            id: SessionId::generate(),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.settings.ttl,
        };
        self.backends.sessions.create_session(&session).await.expect("session");
        let token = self.issuer().issue(user.id, session.id, now).expect("token");
        (user.id, token)
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `routes` (behind the common middleware) once; returns the status and the JSON body
/// (`null` when empty).
pub async fn call(routes: Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    use http_body_util::BodyExt as _;
    let response = crate::http::edge(routes).oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, json)
}

/// A JSON request, with a bearer token when given.
pub fn json_request(method: &str, uri: &str, token: Option<&str>, body: &serde_json::Value) -> Request<Body> {
    let mut builder =
        Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_string())).expect("request")
}

/// A body-less request, with a bearer token when given.
pub fn empty_request(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("request")
}

/// The events of a streamed answer, read as they arrive.
#[derive(Debug)]
pub struct EventReader {
    body: Body,
    decoder: crate::sse::Decoder,
    ready: std::collections::VecDeque<crate::sse::Event>,
}

impl EventReader {
    /// The next event, or None when the stream has ended.
    pub async fn next(&mut self) -> Option<crate::sse::Event> {
        use http_body_util::BodyExt as _;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let frame = self.body.frame().await?.expect("the stream's body");
            if let Ok(bytes) = frame.into_data() {
                self.ready.extend(self.decoder.push(&bytes).expect("events of sane size"));
            }
        }
    }

    /// Every event left, to the end of the stream.
    pub async fn rest(&mut self) -> Vec<crate::sse::Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// Calls `routes` through the edge middleware and returns the answer's status, headers and its
/// body read as server-sent events.
pub async fn open_stream(
    routes: Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, EventReader) {
    let response = crate::http::edge(routes).oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let reader = EventReader { body, decoder: crate::sse::Decoder::new(1 << 20), ready: Default::default() };
    (parts.status, parts.headers, reader)
}
