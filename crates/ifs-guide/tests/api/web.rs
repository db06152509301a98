//! The chat page as `ifs-guide serve` serves it: types, caching, the CSP and security headers,
//! its size, and what its scripts may do. The page's behaviour is tested in a real browser
//! (web/tests, `make test-web`).

use axum::http::StatusCode;
use ifs_guide::web::{ASSET_CACHE, ASSETS, PAGE_CACHE, SECURITY_HEADERS, VERSION};

use crate::helpers::{ifs_guide_command, spawn_app};

fn assert_secured(response: &reqwest::Response) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(response.headers().get(*name).map(|v| v.to_str().unwrap()), Some(*value), "{name}");
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types_caching_and_security_headers() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(response.headers()["cache-control"], PAGE_CACHE);
    assert_secured(&response);
    let html = response.text().await.unwrap();
    // Before anyone writes a word, the page says what ifs-guide is not.
    assert!(html.contains(ifs_domain::DISCLAIMER), "the disclaimer is missing");
    assert!(!html.contains("{{"), "a placeholder was left unfilled");

    for asset in ASSETS {
        let path = format!("/assets/{}/{}", *VERSION, asset.name);
        assert!(html.contains(&path) || asset.name.ends_with(".js"), "{path} is not in the page");
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], asset.content_type, "{path}");
        assert_eq!(response.headers()["cache-control"], ASSET_CACHE, "{path}");
        assert_secured(&response);
        assert_eq!(response.bytes().await.unwrap().as_ref(), asset.body, "{path}");
    }

    // Another build's version, or a name that is not an asset: a JSON 404, never a guess.
    for path in ["/assets/0123456789abcdef/app.js".to_owned(), format!("/assets/{}/secret.txt", *VERSION)] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[test]
fn the_page_is_small_and_every_file_of_web_is_served() {
    let total: usize = ASSETS.iter().map(|a| a.body.len()).sum::<usize>() + ifs_guide::web::PAGE.len();
    assert!(total < 80 * 1024, "the page weighs {total} bytes, over 80 KB");

    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    for entry in std::fs::read_dir(&web).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.path().is_dir() || name == "index.html" {
            continue; // web/tests is the browser suite
        }
        assert!(ASSETS.iter().any(|a| a.name == name), "web/{name} is not served");
    }
}

/// No inline script or style for the CSP to refuse, nothing from another origin, and no way for
/// text to become markup or code: the scripts never use the HTML or `eval` sinks.
#[test]
fn the_page_s_code_keeps_to_its_content_security_policy() {
    let html = ifs_guide::web::PAGE.as_str();
    for forbidden in [" style=", " onclick", " onload", " onerror", "javascript:", "http://", "https://"] {
        assert!(!html.contains(forbidden), "index.html has {forbidden:?}");
    }
    let scripts = html.matches("<script").count();
    assert_eq!(scripts, html.matches("<script type=\"module\" src=\"/assets/").count(), "an inline script");

    for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
        let code = std::str::from_utf8(asset.body).unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute(\"style\"",
            ".style.",
        ] {
            assert!(!code.contains(sink), "{} uses {sink}", asset.name);
        }
        for import in code.lines().filter(|l| l.starts_with("import ")) {
            let target =
                import.rsplit("from ").next().unwrap().trim_matches(|c| c == '"' || c == ';' || c == ' ');
            let name = target.strip_prefix("./").unwrap_or_else(|| panic!("{}: {import}", asset.name));
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{} imports {target}, which is not served",
                asset.name
            );
        }
    }
}

/// `ifs-guide web-export` writes what serve serves, byte for byte, at the paths the HTML names.
#[test]
fn web_export_writes_the_files_serve_serves() {
    let dir = tempfile::tempdir().unwrap();
    let output = ifs_guide_command().arg("web-export").arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("index.html")).unwrap(), *ifs_guide::web::PAGE);
    for asset in ASSETS {
        let path = format!("assets/{}/{}", *VERSION, asset.name);
        assert_eq!(std::fs::read(dir.path().join(&path)).unwrap(), asset.body, "{path}");
        assert!(listed.contains(&format!("{path}\t{}\t{ASSET_CACHE}", asset.content_type)), "{listed}");
    }
    assert!(listed.contains(&format!("index.html\ttext/html; charset=utf-8\t{PAGE_CACHE}")), "{listed}");
}
