//! The `ifs-guide` binary itself: what `make run` starts.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use axum::http::StatusCode;

use crate::helpers::{AgentDouble, ifs_guide_command as ifs_guide};

#[tokio::test]
async fn serve_prints_where_it_listens_and_answers_there() {
    let agent = AgentDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = ifs_guide()
        .arg("serve")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", dir.path())
        .env("AGENT_URL", &agent.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    let address = banner.strip_prefix("ifs-guide listening on ").expect(&banner).to_owned();
    let rest: Vec<String> = lines.by_ref().take(3).map(Result::unwrap).collect();
    assert!(rest[0].contains("embedded store") && rest[1].contains(&agent.url), "{rest:?}");

    let response = reqwest::Client::new()
        .post(format!("{address}/api/v1/signup"))
        .json(&serde_json::json!({"email": "bin@example.com", "password": "from the binary"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, StatusCode::CREATED.as_u16());
    assert!(dir.path().join("jwt-ed25519.pem").exists());
}

#[test]
fn serve_without_an_agent_url_or_a_model_exits_at_once_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let output = ifs_guide()
        .arg("serve")
        .env("DATA_DIR", dir.path())
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("AGENT_MODEL_PATH", dir.path().join("missing.gguf"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGENT_MODEL_PATH") && stderr.contains("make model"), "{stderr}");
}

#[test]
fn a_bad_setting_is_refused_naming_the_variable() {
    let output = ifs_guide().arg("serve").env("MEMORY_MESSAGES", "lots").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MEMORY_MESSAGES"), "{stderr}");
}
