//! Alerts evaluated as events are written, from real ssh activity.

mod common;

use common::{Env, T};
use gatehouse_testkit as kit;

const ALERTS: &str = r#"
[[alerts]]
name = "privilege-escalation"
when = "type = 'command' and command ~ '^(sudo|su)\b'"
severity = "high"

[[alerts]]
name = "failed-login-surge"
threshold = { count = 3, type = "auth.failure", by = "source_ip", within = "1m" }
severity = "critical"
action = { block_source = "15m" }
"#;

#[test]
fn a_pattern_alert_fires_on_a_matching_command() {
    let env = Env::start_with(ALERTS);
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo harmless"]).code,
        Some(0)
    );
    let _ = env.ssh("alice:web01@127.0.0.1", &["sudo -n true; true"]);
    let rows = env.wait_rows("select severity, user, details from events where type = 'alert'");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["severity"], "high");
    assert_eq!(rows[0]["user"], "alice");
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["alert"], "privilege-escalation");
    assert_eq!(d["event_type"], "command");
}

#[test]
fn a_threshold_alert_from_failed_logins_blocks_the_source() {
    let env = Env::start_with(ALERTS);
    for _ in 0..3 {
        let out = kit::run(
            env.client(&env.bob)
                .ssh(env.port, "mallory:web01@127.0.0.1", &["true"]),
            T,
        )
        .unwrap();
        assert_eq!(out.code, Some(255));
    }
    let rows =
        env.wait_rows("select severity, source_ip, details from events where type = 'alert'");
    assert_eq!(rows[0]["severity"], "critical");
    assert_eq!(rows[0]["source_ip"], "127.0.0.1");
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["alert"], "failed-login-surge");
    assert!(
        d["actions"][0]
            .as_str()
            .unwrap()
            .starts_with("block_source 127.0.0.1"),
        "{d}"
    );
    // The source is now refused, even with a good key.
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(255));
}

#[test]
fn a_malformed_alert_rule_fails_check_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[[alerts]]\nname = \"bad\"\nwhen = \"command ~ '('\"\n",
    )
    .unwrap();
    let mut c = std::process::Command::new(common::gatehouse_bin());
    c.arg("--config").arg(&path).arg("check");
    let out = kit::run(c, T).unwrap();
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("g.toml: alerts[0].when: bad regex"),
        "{}",
        out.stderr
    );
}
