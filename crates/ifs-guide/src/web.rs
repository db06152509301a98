//! The chat page (`web/`), built into the binary and served at `/`: the HTML names its scripts
//! and styles under `/assets/<version>/`, where `<version>` is a hash of every file, so that the
//! assets can be cached for a year and a new build is never mixed with an old one; the HTML itself
//! is revalidated on each load. Every answer carries the page's Content-Security-Policy and
//! security headers, the same ones CloudFront adds in AWS (`template.yaml`, checked by a test).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ifs_api::ApiError;
use sha2::Digest as _;

/// The page's security headers, as `ifs-guide serve` sends them and as the CloudFront response
/// headers policy of `template.yaml` must. The CSP allows this origin's scripts, styles, images
/// and API only: no inline script or style, no `eval`, no framing, no plugins, no `<base>`.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// How long browsers keep an asset: its path changes whenever its contents do.
pub const ASSET_CACHE: &str = "public, max-age=31536000, immutable";
/// The HTML is checked with the server on every load, so that a deployment shows at once.
pub const PAGE_CACHE: &str = "no-cache";

/// One file of the page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every asset, by the name the HTML and the modules use.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/api.js"),
    },
    Asset {
        name: "render.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/render.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/style.css"),
    },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_bytes!("../../../web/icon.svg") },
];

const INDEX: &str = include_str!("../../../web/index.html");

/// The assets' version: the first 16 hex digits of a SHA-256 over every asset and the HTML.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = sha2::Sha256::new();
    for asset in ASSETS {
        hash.update(asset.name.as_bytes());
        hash.update((asset.body.len() as u64).to_le_bytes());
        hash.update(asset.body);
    }
    hash.update(INDEX.as_bytes());
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
});

/// The HTML as served: the assets' version and the disclaimer filled in.
pub static PAGE: LazyLock<String> = LazyLock::new(|| {
    INDEX.replace("{{version}}", &VERSION).replace("{{disclaimer}}", &escape(ifs_domain::DISCLAIMER))
});

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Every file as a static host serves it: path (no leading slash), content type, cache policy
/// and body. `ifs-guide web-export` writes these for S3.
pub fn files() -> Vec<(String, &'static str, &'static str, &'static [u8])> {
    let mut files = vec![("index.html".to_owned(), "text/html; charset=utf-8", PAGE_CACHE, PAGE.as_bytes())];
    for asset in ASSETS {
        files.push((
            format!("assets/{}/{}", *VERSION, asset.name),
            asset.content_type,
            ASSET_CACHE,
            asset.body,
        ));
    }
    files
}

/// `/` and `/assets/{version}/{name}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/assets/{version}/{name}", get(asset))
}

fn with_headers(content_type: &'static str, cache: &'static str, body: &'static [u8]) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response();
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}

async fn page() -> Response {
    with_headers("text/html; charset=utf-8", PAGE_CACHE, PAGE.as_bytes())
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    // Another version's file is not this build's: a 404 rather than the wrong contents under
    // a name cached for a year.
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) if version == *VERSION => with_headers(asset.content_type, ASSET_CACHE, asset.body),
        _ => ApiError::not_found("no such file").into_response(),
    }
}
