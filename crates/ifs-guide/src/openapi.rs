//! The OpenAPI 3.1 contract of the whole API, assembled from the operations each function
//! documents beside its handlers. `ifs-guide serve` serves it at [`OPENAPI`] (without the agent's
//! operations when `AGENT_URL` sends them elsewhere); `openapi.json` at the repository's root is the
//! whole document, and a test keeps the two equal.

use axum::Router;
use ifs_api::Route;
use ifs_api::openapi::{
    AGENT_KEY, BEARER, BadGateway, BadRequest, ErrorBody, ErrorDetail, GatewayTimeout, Internal, NotFound,
    PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, UnsupportedMediaType,
};
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;

/// Where the document is served.
pub const OPENAPI: Route = Route::get("/api/v1/openapi.json");

/// What every part shares: the description, the tags, the error schemas and responses, the
/// bearer scheme.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "ifs-guide",
        description = "Sign up, log in, and hold dialogues with an LLM. Every error is \
            `{\"error\": {\"code\", \"message\"}}`; every response carries an `x-request-id`. \
            Protected operations take `Authorization: Bearer <access_token>` from `POST /api/v1/login`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(openapi_document),
    components(
        schemas(ErrorBody, ErrorDetail),
        responses(BadRequest, Unauthorized, NotFound, PayloadTooLarge, UnsupportedMediaType, TooManyRequests,
            Internal, BadGateway, Unavailable, GatewayTimeout),
    ),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "dialogues", description = "Dialogues with the agent: each a doubly linked list of messages"),
        (name = "agent", description = "The agent: OpenAI-compatible chat completions on a local model. On a \
            server started with AGENT_API_KEY they take `Authorization: Bearer <key>` (the `agent_key` scheme), \
            otherwise they are open; on AWS they require AWS IAM (SigV4) and only the Dialogue Manager calls them."),
        (name = "meta", description = "This document"),
    ),
)]
struct Shared;

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json",
        body = Object))
)]
#[allow(dead_code)] // documents the route `router` serves
fn openapi_document() {}

/// The whole contract; `with_agent: false` leaves out the agent's operations (served elsewhere).
#[must_use]
pub fn document(with_agent: bool) -> OpenApi {
    let mut doc = Shared::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for part in [
        ifs_signup::Api::openapi(),
        ifs_login::Api::openapi(),
        ifs_me::Api::openapi(),
        ifs_logout::Api::openapi(),
        ifs_dialogue::Api::openapi(),
        ifs_dialogues::Api::openapi(),
        ifs_messages::Api::openapi(),
    ] {
        doc.merge(part);
    }
    if with_agent {
        doc.merge(ifs_agent::router::openapi());
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(BEARER, ifs_api::openapi::bearer_scheme());
    if with_agent {
        components.add_security_scheme(AGENT_KEY, ifs_api::openapi::agent_key_scheme());
    }
    doc
}

/// The document as JSON, pretty-printed as it is committed.
#[must_use]
pub fn json(with_agent: bool) -> String {
    // Serialising plain data cannot fail.
    let mut value = serde_json::to_value(document(with_agent)).unwrap_or_default();
    camel_case_links(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// utoipa 5.5 writes a link's fields in snake case (`operation_id`), which no client reads;
/// OpenAPI spells them `operationId`, `operationRef` and `requestBody`.
fn camel_case_links(document: &mut serde_json::Value) {
    let Some(paths) = document.get_mut("paths").and_then(serde_json::Value::as_object_mut) else { return };
    let operations =
        paths.values_mut().filter_map(serde_json::Value::as_object_mut).flat_map(|item| item.values_mut());
    let responses =
        operations.filter_map(|op| op.get_mut("responses")?.as_object_mut()).flat_map(|r| r.values_mut());
    let links = responses.filter_map(|r| r.get_mut("links")?.as_object_mut()).flat_map(|l| l.values_mut());
    for link in links.filter_map(serde_json::Value::as_object_mut) {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// The route serving the document.
pub fn router(with_agent: bool) -> Router {
    // Rendered once; each answer shares the bytes.
    let body = axum::body::Bytes::from(json(with_agent));
    Router::new().route(
        OPENAPI.path,
        OPENAPI.to(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const COMMITTED: &str = include_str!("../../../openapi.json");

    #[test]
    fn the_committed_openapi_json_is_the_generated_document() {
        assert!(
            COMMITTED.trim_end() == json(true),
            "openapi.json is out of date: run `make openapi` and commit the result"
        );
    }

    /// Every route any function serves, and nothing else, is an operation of the document; the
    /// one without the agent has exactly the routes `serve` mounts with AGENT_URL set.
    #[test]
    fn the_document_has_exactly_the_routes_served() {
        let operations = |doc: &OpenApi| -> BTreeSet<(String, String)> {
            let value = serde_json::to_value(doc).unwrap();
            value["paths"]
                .as_object()
                .unwrap()
                .iter()
                .flat_map(|(path, item)| {
                    item.as_object().unwrap().keys().map(move |method| (method.to_uppercase(), path.clone()))
                })
                .collect()
        };
        let routes = |lists: &[&[Route]]| -> BTreeSet<(String, String)> {
            lists
                .iter()
                .flat_map(|l| l.iter())
                .map(|r| (r.method_name().to_owned(), r.path.to_owned()))
                .collect()
        };
        let without_agent = [
            ifs_signup::ROUTES,
            ifs_login::ROUTES,
            ifs_me::ROUTES,
            ifs_logout::ROUTES,
            ifs_dialogue::ROUTES,
            ifs_dialogues::ROUTES,
            ifs_messages::ROUTES,
            &[OPENAPI],
        ];
        assert_eq!(operations(&document(false)), routes(&without_agent));
        let mut all = without_agent.to_vec();
        all.push(ifs_agent::router::ROUTES);
        assert_eq!(operations(&document(true)), routes(&all));
    }

    /// Operations that take a token say so and document the 401; every error response is the
    /// envelope; every body-taking operation documents 413 and 415.
    #[test]
    fn every_operation_documents_its_security_and_errors() {
        let value = serde_json::to_value(document(true)).unwrap();
        let public = ["signup", "login", "openapi"];
        // Open unless the agent was given a key: either no security or the agent's key.
        let agent = ["agent_info", "agent_complete", "chat_completions", "list_models"];
        for (path, item) in value["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap();
                let responses = operation["responses"].as_object().unwrap();
                let protected = !public.contains(&id);
                if agent.contains(&id) {
                    assert_eq!(operation["security"], serde_json::json!([{}, {"agent_key": []}]), "{id}");
                }
                assert_eq!(operation.get("security").is_some(), protected, "{method} {path}: security");
                assert_eq!(responses.contains_key("401"), protected || id == "login", "{method} {path}: 401");
                if method == "post" && operation.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "500"] {
                        assert!(responses.contains_key(status), "{method} {path}: no {status}");
                    }
                }
                for (status, response) in responses.iter().filter(|(s, _)| !s.starts_with('2')) {
                    let reference = response["$ref"].as_str().map(str::to_owned);
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        reference.is_some_and(|r| r.starts_with("#/components/responses/"))
                            || schema == "#/components/schemas/ErrorBody",
                        "{method} {path} {status}: not the error envelope"
                    );
                }
            }
        }
    }
}
