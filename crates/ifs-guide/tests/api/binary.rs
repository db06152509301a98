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

/// `ifs-guide check` on the embedded store: clean after real traffic, refuses to open a store a
/// server holds or one that does not exist, and names a list broken behind the app's back.
#[tokio::test]
async fn check_finds_a_list_broken_behind_the_apps_back() {
    use crate::helpers::spawn_app_with;

    let mut app = spawn_app_with(&["--store", "embedded", "--sessions", "embedded"]).await;
    app.backing.dynamodb = None; // under TEST_BACKENDS=aws too: this test is about the embedded store
    let token = app.user("ada@example.com").await;
    let (_, first) = app.say(&token, "one", None).await;
    let dialogue = first["dialogue_id"].as_str().unwrap().to_owned();
    for text in ["two", "three"] {
        assert_eq!(app.say(&token, text, Some(&dialogue)).await.0, StatusCode::OK);
    }
    let (code, printed) = app.backing.check();
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("stop `ifs-guide serve` on it first"), "{printed}");
    let backing = app.stop().await;
    backing.assert_check_clean(1, 6);

    // Lose the third message (the second user turn).
    const MESSAGES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");
    let id = ifs_domain::DialogueId::parse(&dialogue).unwrap();
    let key = [id.as_bytes().as_slice(), &3_u64.to_be_bytes()].concat();
    {
        let db = redb::Database::open(backing.data_dir.path().join("ifs-guide.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(MESSAGES).unwrap().remove(key.as_slice()).unwrap().expect("the third message");
        txn.commit().unwrap();
    }
    let (code, printed) = backing.check();
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains(&format!("dialogue {dialogue}: positions jump from 2 to 4")), "{printed}");
    assert!(
        printed.contains(&format!("dialogue {dialogue}: the summary's message_count is 6, the list says 5"))
    );
    assert!(printed.contains("checked 1 dialogue, 5 messages in embedded store"), "{printed}");

    let nothing = tempfile::tempdir().unwrap();
    let output = ifs_guide().arg("check").env("DATA_DIR", nothing.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no embedded store at"));
    assert!(!nothing.path().join("ifs-guide.redb").exists(), "check never creates a store");
}
