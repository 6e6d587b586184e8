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
    assert!(d.join("data/user_ca").exists() && d.join("data/user_ca.pub").exists());
    assert!(text.contains("ca_key = \"data/user_ca\""));
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
fn check_names_an_unreadable_or_malformed_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.toml");
    let p = path.to_str().unwrap();
    std::fs::write(
        &path,
        "[auth]\ntrusted_user_ca_keys = [\"missing_ca.pub\"]\n",
    )
    .unwrap();
    let out = gh(&["--config", p, "check"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("auth.trusted_user_ca_keys[0]")
            && out.stderr.contains("missing_ca.pub"),
        "{}",
        out.stderr
    );
    std::fs::write(
        &path,
        "[auth]\ntrusted_user_ca_keys = [\"ssh-ed25519 not-base64 ca\"]\n",
    )
    .unwrap();
    let out = gh(&["--config", p, "check"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("auth.trusted_user_ca_keys[0]: not an OpenSSH public key line"),
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
    let _ = env.wait_rows("select id from events where type = 'session.end'");
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

#[test]
fn audit_verify_detects_tampering_and_a_truncated_tail() {
    let mut env = Env::start();
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo one"]).code,
        Some(0)
    );
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    // A clean stop signs the chain's head.
    assert!(env.stop_gateway().expect("stopped").success());
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stdout(&out).contains("hash chain intact")
            && stdout(&out).contains("signed checkpoints valid"),
        "{}",
        stdout(&out)
    );

    let db = env.dir.path().join("gatehouse.db");
    let sql = |q: &str| {
        let s = Command::new("sqlite3")
            // The gateway may hold a write lock for a moment.
            .args(["-cmd", ".timeout 10000"])
            .arg(&db)
            .arg(q)
            .status()
            .expect("sqlite3");
        assert!(s.success());
    };
    // Cut the tail: the chain is still consistent, the checkpoint is not.
    sql("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)");
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(1));
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));

    // Edit an event in the middle: verify names it.
    let id: String = {
        let o = Command::new("sqlite3")
            // The gateway may hold a write lock for a moment.
            .args(["-cmd", ".timeout 10000"])
            .arg(&db)
            .arg("SELECT id FROM audit_events WHERE type = 'command'")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    sql(&format!(
        "UPDATE audit_events SET details = '{{\"command\":\"innocent\"}}' WHERE id = '{id}'"
    ));
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(1));
    assert!(
        stdout(&out).contains(&id) && stdout(&out).contains("modified"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn audit_tail_filters_and_follows() {
    let env = Env::start();
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let out = env.gatehouse(&[
        "audit",
        "tail",
        "-n",
        "50",
        "--filter",
        "type=auth.* user=alice",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|e| e["type"].as_str().unwrap().starts_with("auth.") && e["user"] == "alice"));

    let mut follow = Command::new(gatehouse_bin());
    follow
        .arg("--config")
        .arg(&env.config_path)
        .args([
            "audit",
            "tail",
            "-n",
            "0",
            "--follow",
            "--filter",
            "type=command",
        ])
        .stdout(std::process::Stdio::piped());
    let mut child = follow.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo followed"]).code,
        Some(0)
    );
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("echo followed"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

/// The whole gateway on PostgreSQL: a real session's events, the same
/// views and runbooks as on SQLite, and `audit verify` naming an event
/// edited with psql.
#[test]
fn the_gateway_runs_on_postgresql_and_verify_names_a_tampered_event() {
    let name = format!("gh_store_{}", std::process::id());
    let psql = |db: &str, sql: &str| {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
            .output()
            .expect("psql (PostgreSQL must run on 127.0.0.1:5432)")
    };
    let _ = psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
    assert!(psql("postgres", &format!("CREATE DATABASE {name}"))
        .status
        .success());
    let mut env = Env::start();
    env.stop_gateway();
    env.use_store(&format!("postgres://postgres@127.0.0.1:5432/{name}"));
    env.spawn_gateway();

    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "on-pg"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert!(stdout(&out).contains("on-pg"));
    let query = |sql: &str| -> Vec<serde_json::Value> {
        let out = env.gatehouse(&["--format", "json", "audit", "query", sql]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut ended = Vec::new();
    for _ in 0..100 {
        // "user" is a reserved word in PostgreSQL: quoted, it is portable.
        ended = query("select session_id, \"user\" from sessions where end_time is not null");
        if !ended.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ended[0]["user"], "alice", "{ended:?}");
    let cmds = query("select command from commands where \"user\" = 'alice'");
    assert_eq!(cmds[0]["command"], "echo on-pg");
    // Runbooks are portable SQL: the built-in runs on PostgreSQL too.
    let out = env.gatehouse(&[
        "--format",
        "json",
        "runbook",
        "run",
        "sessions-by-user",
        "--param",
        "user=alice",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).contains(ended[0]["session_id"].as_str().unwrap()));
    // Writes are refused by the database.
    let out = env.gatehouse(&["audit", "query", "delete from audit_events"]);
    assert_ne!(out.code, Some(0));

    assert!(env.stop_gateway().expect("stopped").success());
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);

    let id = String::from_utf8_lossy(
        &psql(&name, "SELECT id FROM audit_events WHERE type = 'command'").stdout,
    )
    .trim()
    .to_string();
    assert!(!id.is_empty());
    assert!(psql(
        &name,
        &format!("UPDATE audit_events SET user_name = 'mallory' WHERE id = '{id}'"),
    )
    .status
    .success());
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(1));
    assert!(
        stdout(&out).contains(&id) && stdout(&out).contains("modified"),
        "{}",
        stdout(&out)
    );
    drop(env);
    let _ = psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}
