//! The standalone `agent` binary, started as `make agent` would start it, driven by the official
//! OpenAI Python client (installed into `.cache/venv` by `infra/python-tools.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
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

    let output = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .arg(&base_url)
        .output()
        .unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("OK "), "{stdout}");
}
