//! The Lambda entry point refuses, at start-up and naming the variable, backends that would lose
//! data on Lambda or that are missing their address.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn me_on_lambda(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ifs-me"));
    for variable in [
        "STORE",
        "SESSIONS",
        "REDIS_URL",
        "TABLE_NAME",
        "DYNAMODB_ENDPOINT",
        "JWT_PUBLIC_KEY",
        "JWT_PRIVATE_KEY",
    ] {
        command.env_remove(variable);
    }
    command.env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9").env("DATA_DIR", dir.path());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn on_lambda_both_backends_must_be_named_because_tmp_is_not_durable() {
    let stderr = me_on_lambda(&[]);
    assert!(stderr.contains("STORE must be set on Lambda"), "{stderr}");
    let stderr = me_on_lambda(&[("STORE", "dynamodb")]);
    assert!(stderr.contains("SESSIONS must be set on Lambda"), "{stderr}");
}

#[test]
fn redis_sessions_without_an_address_are_refused_naming_redis_url() {
    let stderr = me_on_lambda(&[("STORE", "embedded"), ("SESSIONS", "redis")]);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    let stderr =
        me_on_lambda(&[("STORE", "embedded"), ("SESSIONS", "redis"), ("REDIS_URL", "http://not-redis")]);
    assert!(stderr.contains("REDIS_URL is not a redis://"), "{stderr}");
}
