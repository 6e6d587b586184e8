//! The command line: init, check, policy explain, audit query.

mod common;

use std::process::Command;

use common::{gatehouse_bin, stdout, Env, T};
use gatehouse_testkit as kit;

fn gh(args: &[&str]) -> kit::Output {
    let mut c = Command::new(gatehouse_bin());
    c.args(args);
    kit::run(c, T).expect("run gatehouse")
}

#[test]
fn init_writes_a_valid_starter_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = kit::keygen(dir.path(), "admin").unwrap();
    let d = dir.path().join("gh");
    let ds = d.to_str().unwrap();
    let out = gh(&[
        "init",
        "--dir",
        ds,
        "--admin-user",
        "root-admin",
        "--admin-key",
        &format!("{}.pub", key.private.display()),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let config = d.join("gatehouse.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("name = \"root-admin\""));
    assert!(text.contains(key.public_line.split_whitespace().nth(1).unwrap()));
    let out = gh(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).starts_with("OK:"), "{}", stdout(&out));
    let out = gh(&["init", "--dir", ds]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("already exists; refusing to overwrite"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_names_the_file_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let p = path.to_str().unwrap();

    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\nlistne = 2\n").unwrap();
    let out = gh(&["--config", p, "check"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("bad.toml")
            && out.stderr.contains("listne")
            && out.stderr.contains("line 3"),
        "{}",
        out.stderr
    );

    std::fs::write(
        &path,
        r#"
[[targets]]
name = "a"
address = "h"
tofu = true
[[targets]]
name = "a"
address = "h2"
tofu = true
[[roles]]
name = "r"
deny = [{ commands = ["(unclosed"] }]
[[users]]
name = "u"
roles = ["nope"]
"#,
    )
    .unwrap();
    let out = gh(&["--config", p, "check"]);
    assert_eq!(out.code, Some(2));
    for needle in [
        "targets[1].name: duplicate target \"a\"",
        "roles[0].deny[0].commands[0]: bad regex",
        "users[0].roles[0]: unknown role \"nope\"",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?} in {}",
            out.stderr
        );
    }

    std::fs::write(&path, "[server]\nhost_key = \"/nonexistent/key\"\n").unwrap();
    let out = gh(&["--config", p, "check"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("server.host_key") && out.stderr.contains("/nonexistent/key"),
        "{}",
        out.stderr
    );

    let out = gh(&["--config", "/nonexistent/gatehouse.toml", "check"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("gatehouse init"), "{}", out.stderr);
}

#[test]
fn serve_with_a_bad_config_or_store_exits_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[store]\nurl = \"postgres://postgres@127.0.0.1:1/none\"\n",
    )
    .unwrap();
    let out = gh(&["--config", path.to_str().unwrap(), "serve"]);
    assert_eq!(out.code, Some(1));
    let line = out.stderr.lines().last().unwrap_or("");
    assert!(
        line.starts_with("gatehouse: ") && line.contains("store"),
        "{}",
        out.stderr
    );
}

#[test]
fn policy_explain_prints_the_decision_and_the_rule() {
    let env = Env::start();
    let out = env.gatehouse(&["policy", "explain", "alice", "web01"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("ALLOW alice -> web01 as {}", env.login)),
        "{text}"
    );
    assert!(text.contains("role dev allow[0]"), "{text}");

    let out = env.gatehouse(&["policy", "explain", "bob", "web01"]);
    assert_eq!(out.code, Some(1));
    assert!(
        stdout(&out).starts_with("DENY bob -> web01"),
        "{}",
        stdout(&out)
    );

    let out = env.gatehouse(&[
        "policy",
        "explain",
        "alice",
        "web01",
        "--command",
        "rm -rf /",
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        stdout(&out).contains("DENY by role dev deny[0]"),
        "{}",
        stdout(&out)
    );

    let out = env.gatehouse(&["--format", "json", "policy", "explain", "alice", "prod01"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false);
}

#[test]
fn audit_query_is_read_only_and_formats_output() {
    let env = Env::start();
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let before = env.query("select count(*) as n from events")[0]["n"]
        .as_i64()
        .unwrap();
    assert!(before >= 3);
    for sql in [
        "delete from audit_events",
        "drop view events",
        "insert into host_keys values ('x','y','z')",
        "update audit_events set user_name = 'x'",
    ] {
        let out = env.gatehouse(&["audit", "query", sql]);
        assert_ne!(out.code, Some(0), "{sql} was accepted");
        assert!(out.stderr.contains("read-only"), "{sql}: {}", out.stderr);
    }
    let after = env.query("select count(*) as n from events")[0]["n"]
        .as_i64()
        .unwrap();
    assert_eq!(before, after);

    let out = env.gatehouse(&[
        "--format",
        "csv",
        "audit",
        "query",
        "select type, user from events where type = 'auth.success'",
    ]);
    assert!(stdout(&out).starts_with("type,user\n"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("auth.success,alice"),
        "{}",
        stdout(&out)
    );
    let out = env.gatehouse(&[
        "audit",
        "query",
        "select type, user from events where type = 'auth.success'",
    ]);
    assert!(stdout(&out).contains("auth.success"), "{}", stdout(&out));
    let out = env.gatehouse(&["audit", "query", "select nonsense from nowhere"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
