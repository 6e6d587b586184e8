//! Just-in-time approval with real ssh clients: one waits, another
//! approves or denies from their own terminal; grants last their ttl;
//! requests expire; nobody approves their own.

mod common;

use std::process::{Child, Stdio};

use common::{stdout, Env, T};
use gatehouse_testkit as kit;

fn env_with_approvals() -> Env {
    let env = Env::start_with(&format!(
        r#"
[[roles]]
name = "oncall"
allow = [{{ targets = {{ env = "test" }}, logins = ["*"],
           require_approval = {{ logins = ["{login}"], approvers = ["leads"], ttl = "1h" }} }}]

[[roles]]
name = "leads"
"#,
        login = kit::current_login()
    ));
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = []", "roles = [\"oncall\"]")
        .replace("roles = [\"dev\"]", "roles = [\"dev\", \"leads\"]")
        .replace(
            "node = \"test-node\"",
            "node = \"test-node\"\napproval_wait = \"3s\"",
        );
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    env
}

fn bob_waits(env: &Env, target: &str, cmd: &str) -> Child {
    let mut c = env
        .client(&env.bob)
        .ssh(env.port, &format!("bob:{target}@127.0.0.1"), &[cmd]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// The id of the newest request for `target` other than `not`.
fn request_id_other_than(env: &Env, target: &str, not: &str) -> String {
    for _ in 0..100 {
        let rows = env.wait_rows(&format!(
            "select details from events where type = 'approval.requested' and target = '{target}' order by seq desc"
        ));
        let d: serde_json::Value =
            serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
        let id = d["request"].as_str().unwrap().to_string();
        if id != not {
            return id;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no new approval request for {target}");
}

fn request_id(env: &Env, target: &str) -> String {
    request_id_other_than(env, target, "")
}

#[test]
fn an_approver_lets_a_waiting_session_in_and_the_grant_lasts() {
    let env = env_with_approvals();
    let waiting = bob_waits(&env, "web01", "echo approved-run");
    let id = request_id(&env, "web01");

    // Nobody approves their own request.
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob@127.0.0.1", &["approve", &id]),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("nobody approves their own request"),
        "{}",
        out.stderr
    );

    let out = env.ssh("alice@127.0.0.1", &["requests"]);
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = env.ssh("alice@127.0.0.1", &["approve", &id]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).starts_with(&format!("approved {id}")));

    let done = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(
        String::from_utf8_lossy(&done.stdout),
        "approved-run\n",
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "waiting for approval of request {id} (ask a member of leads"
        )),
        "{err}"
    );
    assert!(err.contains("approved by alice"), "{err}");

    // The grant covers the next session without asking again.
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["echo again"]),
        T,
    )
    .unwrap();
    assert_eq!(stdout(&out), "again\n");
    assert!(
        !out.stderr.contains("waiting for approval"),
        "{}",
        out.stderr
    );

    let types: Vec<String> = env
        .query("select type from events where type like 'approval.%' order by seq")
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, vec!["approval.requested", "approval.granted"]);
}

#[test]
fn denial_expiry_and_the_admin_cli() {
    let env = env_with_approvals();
    // Denied from a terminal, with a reason.
    let waiting = bob_waits(&env, "tofu01", "echo never");
    let id = request_id(&env, "tofu01");
    let out = env.ssh("alice@127.0.0.1", &["deny", &id, "not", "now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = waiting.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&done.stdout), "");
    assert!(String::from_utf8_lossy(&done.stderr)
        .contains(&format!("request {id} was denied by alice: not now")));

    // Nobody decides: the request expires (approval_wait = 3s).
    let waiting = bob_waits(&env, "web01", "echo never");
    let id = request_id(&env, "web01");
    let done = waiting.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&done.stderr)
        .contains(&format!("request {id} expired without a decision")));
    let _ = env.wait_rows("select id from events where type = 'approval.expired'");

    // An administrator approves from the CLI.
    let expired = id;
    let waiting = bob_waits(&env, "web01", "echo via-cli");
    let id = request_id_other_than(&env, "web01", &expired);
    let out = env.gatehouse(&["approvals", "list"]);
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = env.gatehouse(&["approvals", "approve", &id]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = waiting.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&done.stdout), "via-cli\n");
    let out = env.gatehouse(&["approvals", "approve", &id]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("already granted"), "{}", out.stderr);
}

/// The decision from an approver's terminal and the one from the CLI go
/// through the same operation: the events differ only in who decided and
/// through which channel.
#[test]
fn a_decision_over_ssh_and_one_from_the_cli_write_the_same_event() {
    let mut env = env_with_approvals();
    let _web02 = env.add_web_targets(2);
    let first = bob_waits(&env, "web01", "echo one");
    let id1 = request_id(&env, "web01");
    let out = env.ssh("alice@127.0.0.1", &["approve", &id1]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&first.wait_with_output().unwrap().stdout),
        "one\n"
    );
    let second = bob_waits(&env, "web02", "echo two");
    let id2 = request_id(&env, "web02");
    let out = env.gatehouse(&["approvals", "approve", &id2]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&second.wait_with_output().unwrap().stdout),
        "two\n"
    );

    let rows = env.query(
        "select user, severity, result, login, session_id, source_ip, details from events where type = 'approval.granted' order by seq",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let details = |r: &serde_json::Value| -> serde_json::Value {
        serde_json::from_str(r["details"].as_str().unwrap()).unwrap()
    };
    let (ssh, cli) = (details(&rows[0]), details(&rows[1]));
    assert_eq!(ssh["channel"], "ssh", "{ssh}");
    assert_eq!(cli["channel"], "cli", "{cli}");
    assert_eq!(ssh["by"], "alice");
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[1]["user"], cli["by"]);
    assert!(ssh["by_session"].is_string(), "{ssh}");
    for k in ["severity", "result", "login", "session_id", "source_ip"] {
        assert_eq!(rows[0][k], rows[1][k], "{k}: {rows:?}");
    }
    let keys = |d: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = d
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                !["by_session", "by_source_ip", "claimed_user", "sudo_user"].contains(&k.as_str())
            })
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ssh), keys(&cli));
    assert_eq!(ssh["requester"], cli["requester"]);
}
