//! The standalone `agent` binary, started as `make agent` would start it with `AGENT_API_KEY`,
//! driven by the official OpenAI Python client (installed into `.cache/venv` by
//! `infra/python-tools.sh`) and, for what the client hides, by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_official_openai_python_client_talks_to_the_standalone_agent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "no model at {}: run `make model`", model.display());
    let python = Command::new(root.join("infra/python-tools.sh")).output().unwrap();
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    let python = root.join(String::from_utf8(python.stdout).unwrap().trim());

    let mut agent = Command::new(env!("CARGO_BIN_EXE_agent"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("AGENT_MODEL_PATH", &model)
        .env("AGENT_API_KEY", KEY)
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    // Keep reading: with the pipe closed, the agent's next banner line would fail and end it.
    std::thread::spawn(move || lines.for_each(drop));
    let base_url = banner.split("OpenAI base URL ").nth(1).expect(&banner).trim_end_matches(')').to_owned();
    let address = base_url.trim_start_matches("http://").trim_end_matches("/v1").to_owned();

    // The health check needs no key; everything else does, refused in OpenAI's error shape.
    let health = raw(&address, "GET /health HTTP/1.1", None);
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with(r#"{"status":"ok"}"#), "{health}");
    for (request, key) in [
        ("GET /v1/models HTTP/1.1", None),
        ("GET /api/v1/agent HTTP/1.1", Some("wrong-key-wrong-key")),
        ("POST /v1/chat/completions HTTP/1.1", Some(&KEY[1..])),
    ] {
        let refused = raw(&address, request, key);
        assert!(refused.starts_with("HTTP/1.1 401"), "{request}: {refused}");
        assert!(refused.to_ascii_lowercase().contains("www-authenticate: bearer"), "{refused}");
        let body = refused.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            body.contains(r#""code":"invalid_api_key""#)
                && body.contains(r#""type":"invalid_request_error""#)
                && body.contains(r#""param":null"#),
            "{body}"
        );
    }
    let info = raw(&address, "GET /api/v1/agent HTTP/1.1", Some(KEY));
    assert!(info.starts_with("HTTP/1.1 200"), "{info}");

    let output = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .arg(&base_url)
        .arg(KEY)
        .output()
        .unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("OK "), "{stdout}");
}

const KEY: &str = "test-agent-key-0123456789";

/// One request on a connection of its own (`Connection: close`); the whole answer as text.
fn raw(address: &str, request_line: &str, key: Option<&str>) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let authorization = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let body = if request_line.starts_with("POST") { "{}" } else { "" };
    write!(
        stream,
        "{request_line}\r\nHost: {address}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
