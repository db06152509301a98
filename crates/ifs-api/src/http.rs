//! The middleware every deployment puts around the routers — locally around all of them merged,
//! on Lambda around one: safe request ids, one log line per request, body limits, panic catching,
//! JSON for every error, a JSON 404 for unknown routes, and CORS when `CORS_ALLOW_ORIGIN` asks.
//! Whatever a request passes through on every call is one [`Edge`] step.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use crate::ApiError;

/// Largest request body accepted on routes that set no limit of their own (with
/// `DefaultBodyLimit` on the route, as the dialogue does for long messages).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Longest client-supplied request id that is kept; anything longer, or with other characters
/// than `[A-Za-z0-9._-]`, is replaced by a generated one so that it cannot forge log fields.
pub const REQUEST_ID_MAX: usize = 64;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps finished routers (state already provided) for serving, with CORS as
/// `CORS_ALLOW_ORIGIN` says.
pub fn edge(routes: Router) -> Router {
    edge_with(routes, cors_from_env())
}

/// [`edge`] with the CORS policy given.
pub fn edge_with(routes: Router, cors: Option<CorsLayer>) -> Router {
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outside the routes, so that a preflight is answered before a route could refuse OPTIONS.
        .layer(tower::util::option_layer(cors))
        // Inside the edge, so that a caught panic's bare 500 gets JSON, a request id and a log
        // line like any other answer.
        .layer(CatchPanicLayer::new())
        .layer(tower::layer::layer_fn(|inner| Edge { inner }))
}

/// The CORS policy of `CORS_ALLOW_ORIGIN`: `*`, or origins separated by commas
/// (`https://app.example.com`); unset or empty, no CORS headers (same-origin and non-browser
/// clients need none). Origins that are not valid header values are left out, with a warning.
#[must_use]
pub fn cors_from_env() -> Option<CorsLayer> {
    cors(&std::env::var("CORS_ALLOW_ORIGIN").unwrap_or_default())
}

/// The CORS policy for `origins` as `CORS_ALLOW_ORIGIN` spells them. Browsers may send the
/// bearer token and JSON, and read the request id and `Retry-After`; no cookies are involved.
#[must_use]
pub fn cors(origins: &str) -> Option<CorsLayer> {
    let origins = origins.trim();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let valid: Vec<_> = origins
            .split(',')
            .map(str::trim)
            .filter_map(|origin| {
                let value = origin.parse().ok();
                if value.is_none() {
                    tracing::warn!(origin, "CORS_ALLOW_ORIGIN: not a valid origin, left out");
                }
                value
            })
            .collect();
        AllowOrigin::list(valid)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PATCH,
                axum::http::Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, X_REQUEST_ID])
            .expose_headers([X_REQUEST_ID, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// A request id in the UUID form clients and log queries expect, without a system call each (a
/// random UUID asked the OS for randomness on every request): random bits drawn once per
/// process, with a counter mixed into the last eight bytes. Unique within a process, and across
/// processes as unlikely to collide as random UUIDs; they are labels, not secrets.
fn generated_request_id() -> HeaderValue {
    static BASE: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        let mut bytes = [0; 16];
        // Without randomness every process starts from zero: still unique within each.
        let _ = getrandom::fill(&mut bytes);
        bytes
    });
    let mut bytes = *base;
    let count = COUNT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    for (byte, c) in bytes[8..].iter_mut().zip(count) {
        *byte ^= c;
    }
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn is_safe_request_id(id: &[u8]) -> bool {
    (1..=REQUEST_ID_MAX).contains(&id.len())
        && id.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown of local servers.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = terminate => {} }
    tracing::info!("shutting down");
}

/// What every request passes through first and every answer last, in one step rather than a
/// layer each (they were a tenth of a `/me` request's CPU): the request id (a client's safe one
/// kept, otherwise one generated), a span carrying it for whatever the handler logs, JSON for
/// error answers that are not JSON yet (axum's 405, the body limit's 413, a caught panic), the id
/// on the answer, and one log line with the status sent.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<Body>> for Edge<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let id = request_id(&request);
        request.headers_mut().insert(X_REQUEST_ID, id.clone());
        let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or("-"));
        let (method, uri, started) = (request.method().clone(), request.uri().clone(), Instant::now());
        let answer = span.in_scope(|| self.inner.call(request)).instrument(span.clone());
        Box::pin(async move {
            let Ok(response) = answer.await;
            let mut response = json_errors(response.map(Body::new));
            response.headers_mut().insert(X_REQUEST_ID, id);
            let status = response.status().as_u16();
            let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            span.in_scope(|| tracing::info!(%method, path = %uri.path(), status, latency_ms, "handled"));
            Ok(response)
        })
    }
}

/// The request's id: the client's `x-request-id` if it sent exactly one and that one is short
/// and of safe characters (so that it cannot forge log fields), otherwise a generated one.
fn request_id(request: &Request<Body>) -> HeaderValue {
    let mut ids = request.headers().get_all(X_REQUEST_ID).iter();
    match (ids.next(), ids.next()) {
        (Some(id), None) if is_safe_request_id(id.as_bytes()) => id.clone(),
        _ => generated_request_id(),
    }
}

/// Replaces any error response that is not already our JSON (axum's 405, tower-http's 413, a
/// caught panic) with the `{"error": …}` body for its status, keeping its headers.
fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let (replacement, body) = ApiError::for_status(status).into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(replacement.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn call(
        app: Router,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn cors_answers_preflights_and_marks_responses_for_the_allowed_origin_only() {
        assert!(cors("").is_none() && cors("  ").is_none(), "unset means no CORS at all");
        let routes = || {
            Router::new().route(
                "/echo",
                post(|crate::Json(v): crate::Json<serde_json::Value>| async move { axum::Json(v) }),
            )
        };
        let app = edge_with(routes(), cors("https://app.example.com, not an origin\n"));
        let preflight = Request::builder()
            .method("OPTIONS")
            .uri("/echo")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = call(app.clone(), preflight).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");

        let from = |origin: &str| {
            Request::post("/echo")
                .header("origin", origin)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap()
        };
        let (status, headers, _) = call(app.clone(), from("https://app.example.com")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
        assert!(headers["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
        let (_, headers, _) = call(app, from("https://evil.example.net")).await;
        assert!(!headers.contains_key("access-control-allow-origin"));

        let (_, headers, _) = call(edge_with(routes(), cors("*")), from("https://any.example.org")).await;
        assert_eq!(headers["access-control-allow-origin"], "*");
    }

    #[tokio::test]
    async fn a_safe_client_request_id_is_kept_and_anything_else_replaced() {
        let with_id = |ids: &[&str]| {
            let mut request = Request::get("/nope");
            for id in ids {
                request = request.header("x-request-id", *id);
            }
            request.body(Body::empty()).unwrap()
        };
        let kept = "trace-me_42.a";
        let (_, headers, _) = call(app(), with_id(&[kept])).await;
        assert_eq!(headers["x-request-id"], kept);
        let longest = "a".repeat(REQUEST_ID_MAX);
        let (_, headers, _) = call(app(), with_id(&[&longest])).await;
        assert_eq!(headers["x-request-id"], longest.as_str());

        let too_long = "a".repeat(REQUEST_ID_MAX + 1);
        for ids in
            [&["evil\" status=500 forged=1"][..], &[too_long.as_str()], &["a b"], &[""], &["é"], &["x", "y"]]
        {
            let (_, headers, _) = call(app(), with_id(ids)).await;
            let id = headers["x-request-id"].to_str().unwrap();
            assert!(uuid_like(id), "{ids:?} → {id}");
        }
    }

    #[tokio::test]
    async fn generated_request_ids_are_distinct_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (_, headers, _) = call(app(), Request::get("/nope").body(Body::empty()).unwrap()).await;
            let id = headers["x-request-id"].to_str().unwrap().to_owned();
            let parsed = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert!(seen.insert(id), "a repeated request id");
        }
    }

    fn uuid_like(id: &str) -> bool {
        id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    }

    fn app() -> Router {
        edge(
            Router::new()
                .route(
                    "/echo",
                    post(|crate::Json(v): crate::Json<serde_json::Value>| async move { axum::Json(v) }),
                )
                .route("/panic", get(|| async { panic!("boom") as &'static str })),
        )
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404s_with_a_request_id() {
        let (status, headers, body) = call(app(), Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert!(headers.contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_json_405() {
        let (status, headers, body) = call(app(), Request::get("/echo").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert_eq!(headers[header::ALLOW], "POST");
    }

    #[tokio::test]
    async fn an_oversized_body_is_a_json_413_whether_or_not_its_length_is_declared() {
        let big = format!("\"{}\"", "x".repeat(BODY_LIMIT));
        let declared = Request::post("/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big.clone()))
            .unwrap();
        let (status, _, body) = call(app(), declared).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
        );

        // No Content-Length: the limit applies while the body is read.
        let undeclared = Request::post("/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(big))
            .unwrap();
        let (status, _, body) = call(app(), undeclared).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_and_wrong_content_type_a_415() {
        let bad = Request::post("/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{"))
            .unwrap();
        let (status, _, body) = call(app(), bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request"))
        );

        let text =
            Request::post("/echo").header(header::CONTENT_TYPE, "text/plain").body(Body::from("{}")).unwrap();
        let (status, _, body) = call(app(), text).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }

    #[tokio::test]
    async fn each_request_is_one_log_line_with_its_id_and_the_status_sent() {
        let out = crate::logs::Captured::default();
        let to = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .fmt_fields(crate::logs::plain_fields())
            .with_writer(move || to.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let request = Request::get("/echo").header("x-request-id", "trace-7").body(Body::empty()).unwrap();
        let (status, _, _) = call(app(), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (_, headers, _) = call(app(), Request::get("/panic").body(Body::empty()).unwrap()).await;
        let generated = headers["x-request-id"].to_str().unwrap().to_owned();

        let lines = out.text();
        let handled: Vec<&str> = lines.lines().filter(|line| line.contains("handled")).collect();
        assert_eq!(handled.len(), 2, "{lines}");
        assert!(handled[0].starts_with(" INFO request{request_id=trace-7}: ifs_api::http: handled method=GET path=/echo status=405 latency_ms="), "{lines}");
        assert!(
            handled[1].contains(&format!("request{{request_id={generated}}}"))
                && handled[1].contains("status=500"),
            "{lines}"
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_json_500_that_says_nothing_of_it() {
        let (status, _, body) = call(app(), Request::get("/panic").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("boom"));
    }
}
