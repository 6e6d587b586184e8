//! Runbooks against a real trail: real denied ssh logins, a real live
//! session, and actions that the running gateway carries out.

mod common;

use std::time::Duration;

use common::{stdout, Env, T};
use gatehouse_testkit as kit;

#[test]
fn denied_surge_blocks_the_source_when_applied() {
    let env = Env::start();
    for _ in 0..4 {
        let out = kit::run(
            env.client(&env.bob)
                .ssh(env.port, "bob:web01@127.0.0.1", &["true"]),
            T,
        )
        .unwrap();
        assert_eq!(out.code, Some(1));
    }
    let _ = env
        .wait_rows("select count(*) from events where type = 'access.denied' having count(*) >= 4");
    let out = env.gatehouse(&["runbook", "run", "denied-surge", "--param", "min=3"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = stdout(&out);
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains("would take: BlockSource 127.0.0.1"), "{text}");
    // Not applied: still reachable.
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo open"])),
        "open\n"
    );

    let out = env.gatehouse(&[
        "runbook",
        "run",
        "denied-surge",
        "--param",
        "min=3",
        "--apply",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = env.ssh("alice:web01@127.0.0.1", &["echo blocked?"]);
    assert_eq!(out.code, Some(255), "a blocked source must not get in");
    let rows = env.query("select details from events where type = 'runbook.run' order by seq");
    assert_eq!(rows.len(), 2);
    let last: serde_json::Value =
        serde_json::from_str(rows[1]["details"].as_str().unwrap()).unwrap();
    assert_eq!(last["applied"], true);
    assert_eq!(last["actions"][0]["ok"], true);
    let _ = env.wait_rows(
        "select id from events where type = 'source.blocked' and source_ip = '127.0.0.1'",
    );
}

#[test]
fn long_sessions_can_be_ended_and_bad_input_is_refused() {
    let env = Env::start();
    let mut c = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 60"]);
    c.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let live = c.spawn().unwrap();
    let _ = env.wait_rows("select session_id from sessions where active = 1");
    std::thread::sleep(Duration::from_millis(1200));
    let out = env.gatehouse(&[
        "runbook",
        "run",
        "long-sessions",
        "--param",
        "longer_than=1s",
        "--param",
        "started_before=1s",
        "--apply",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stdout(&out).contains("taking: KillSession"),
        "{}",
        stdout(&out)
    );
    let done = live.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&done.stderr).contains("exceeded the allowed length"));

    let out = env.gatehouse(&[
        "runbook",
        "run",
        "sessions-by-user",
        "--param",
        "user=x' OR '1'='1",
    ]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    let out = env.gatehouse(&["runbook", "run", "sessions-by-user"]);
    assert!(out.stderr.contains("user is required"), "{}", out.stderr);
    let out = env.gatehouse(&[
        "runbook",
        "run",
        "sessions-by-user",
        "--param",
        "user=alice",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"][0]["target"], "web01");

    let out = env.gatehouse(&["runbook", "list"]);
    for name in [
        "sessions-by-user",
        "access-denied",
        "denied-surge",
        "sessions-without-mfa",
        "root-logins",
        "commands-matching",
        "file-transfers-by-user",
        "long-sessions",
    ] {
        assert!(stdout(&out).contains(name), "{name} missing");
    }
    assert!(stdout(&env.gatehouse(&["runbook", "show", "root-logins"])).contains("login = 'root'"));
}

#[test]
fn runbook_files_are_validated_and_a_writing_query_is_refused() {
    let env = Env::start();
    let dir = env.dir.path().join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mine.toml"),
        "name = \"my-commands\"\ndescription = \"mine\"\nquery = \"SELECT command FROM commands WHERE \\\"user\\\" = {user}\"\n[params.user]\ntype = \"string\"\ndefault = \"alice\"\n",
    )
    .unwrap();
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo from-runbook"])
            .code,
        Some(0)
    );
    let out = env.gatehouse(&["runbook", "run", "my-commands"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stdout(&out).contains("echo from-runbook"),
        "{}",
        stdout(&out)
    );

    // A query that writes cannot be smuggled in after a SELECT either.
    std::fs::write(
        dir.join("evil.toml"),
        "name = \"evil\"\ndescription = \"x\"\nquery = \"WITH x AS (SELECT 1) DELETE FROM audit_events\"\n",
    )
    .unwrap();
    let out = env.gatehouse(&["runbook", "run", "evil"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("read-only"), "{}", out.stderr);

    std::fs::write(
        dir.join("bad.toml"),
        "name = \"bad\"\ndescription = \"x\"\nquery = \"DROP TABLE x\"\n",
    )
    .unwrap();
    let out = env.gatehouse(&["check"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("bad.toml: query: a runbook query must be read-only"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_operator_blocks_and_unblocks_a_source_from_the_cli() {
    let env = Env::start();
    let out = env.gatehouse(&[
        "sources",
        "block",
        "127.0.0.1",
        "--for",
        "10m",
        "--reason",
        "drill",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let listed = stdout(&env.gatehouse(&["sources", "list"]));
    assert!(
        listed.contains("127.0.0.1") && listed.contains("drill"),
        "{listed}"
    );
    let out = env.ssh("alice:web01@127.0.0.1", &["echo in"]);
    assert_eq!(out.code, Some(255), "a blocked source must not get in");

    let out = env.gatehouse(&["sources", "unblock", "127.0.0.1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo in"])),
        "in\n"
    );
    let out = env.gatehouse(&["sources", "block", "not-an-address", "--reason", "x"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("not an IP address"), "{}", out.stderr);

    let rows = env.query(
        "select type, details from events where type in ('source.blocked', 'source.unblocked') order by seq",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        let d: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["channel"], "cli", "{d}");
    }
}
