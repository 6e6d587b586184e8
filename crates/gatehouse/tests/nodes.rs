//! Two gateway nodes on one PostgreSQL store: both heartbeat and show in
//! `gatehouse nodes`; after `kill -9` of one, the other closes its open
//! session in the trail (once, with the lost reason) and the chain still
//! verifies; a node stopped with SIGTERM is stopped, never lost.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::servers::{
    configure, ended, field, json, nodes, state, wait_nodes, wait_rows, Database, Node,
};
use common::{stdout, Env};
use gatehouse_testkit as kit;

/// The longest any condition below is waited for.
const W: Duration = Duration::from_secs(30);

const HEARTBEAT: &str = "heartbeat_interval = \"1s\"\nnode_lost_after = \"4s\"\n";

#[test]
fn a_node_that_stops_heartbeating_has_its_sessions_closed_by_another() {
    let db = Database::create("nodes");
    let mut env = Env::start_server(HEARTBEAT, "");
    env.stop_gateway();
    let port_b = kit::free_port();
    let config_b = configure(&env, &db.url(), port_b);
    let config_a = env.config_path.clone();
    env.spawn_gateway();
    let log_b = env.dir.path().join("node-b.log");
    let mut b = Node::spawn(&config_b, &log_b, port_b, &[]);
    let log_a = env.dir.path().join("gateway.log");
    let logs = move || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- node-a\n{}\n--- node-b\n{}", read(&log_a), read(&log_b))
    };

    // A live session through node A.
    let mut ssh = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep", "60"]);
    ssh.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut ssh = ssh.spawn().expect("ssh");
    let rows = wait_nodes(&config_b, "both nodes up, A with 1 session", &logs, |r| {
        state(r, "node-a") == "up"
            && state(r, "node-b") == "up"
            && field(r, "node-a", "open_sessions") == 1
    });
    assert_eq!(field(&rows, "node-b", "open_sessions"), 0);
    assert_eq!(
        field(&rows, "node-a", "address"),
        format!("127.0.0.1:{}", env.port)
    );
    assert_eq!(field(&rows, "node-a", "version"), env!("CARGO_PKG_VERSION"));
    let table = env.gatehouse(&["nodes"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(stdout(&table).contains("node-a"), "{}", stdout(&table));
    let session = json(
        &config_a,
        &[
            "audit",
            "query",
            "select session_id from sessions where end_time is null",
        ],
    )[0]["session_id"]
        .as_str()
        .expect("the live session")
        .to_string();

    // kill -9 node A: node B closes its session.
    let mut gw = env.gateway.take().expect("node a runs");
    gw.kill().expect("kill -9");
    gw.wait().expect("reaped");
    let _ = ssh.wait();
    let ends = wait_rows(
        &config_b,
        "select node, reason, result, details from events where type = 'session.end'",
        &logs,
    );
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["node"], "node-b");
    assert_eq!(
        ends[0]["reason"],
        "node node-a stopped heartbeating; session lost"
    );
    assert_eq!(ends[0]["result"], "error");
    let details: serde_json::Value =
        serde_json::from_str(ends[0]["details"].as_str().unwrap_or("{}")).expect("details");
    assert_eq!(details["lost_node"], "node-a");
    assert_eq!(details["recovered"], true);
    // The recording is on A's disk, not B's: not read, not listed.
    assert_eq!(details["recordings_not_read"], true);
    assert_eq!(details["recordings"], serde_json::json!([]));
    let recovered = json(
        &config_b,
        &[
            "audit",
            "query",
            "select node, details from events where type = 'gateway.recovered'",
        ],
    );
    assert_eq!(recovered.as_array().map(Vec::len), Some(1), "{recovered}");
    assert!(
        recovered[0]["details"]
            .as_str()
            .unwrap_or_default()
            .contains(&session),
        "{recovered}"
    );
    let rows = nodes(&config_b);
    assert_eq!(state(&rows, "node-a"), "lost", "{rows:#?}");
    assert_eq!(field(&rows, "node-a", "lost_by"), "node-b");
    assert_eq!(field(&rows, "node-a", "open_sessions"), 0);
    assert_eq!(state(&rows, "node-b"), "up");
    let table = env.gatehouse(&["nodes"]);
    assert!(
        stdout(&table).contains("lost (sessions closed by node-b)"),
        "{}",
        stdout(&table)
    );
    let out = env.gatehouse(&["audit", "verify", "--recordings"]);
    assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);

    // A starts again: up, nothing left to recover. Then B stops cleanly
    // and stays stopped while A keeps looking for lost nodes.
    env.spawn_gateway();
    wait_nodes(&config_a, "node A up again", &logs, |r| {
        state(r, "node-a") == "up"
    });
    assert!(b.stop(), "node B did not stop cleanly\n{}", b.log());
    let lost_after = 4000;
    let rows = wait_nodes(
        &config_a,
        "A up and looking for longer than node_lost_after since B stopped",
        &logs,
        |r| {
            let time = |key: &str| chrono_ms(field(r, "node-a", key).as_str().unwrap_or_default());
            let a_up_for = time("last_heartbeat") - time("started_at");
            field(r, "node-b", "silent_ms").as_u64().unwrap_or(0) > lost_after + 2000
                && a_up_for > lost_after as i64 + 2000
        },
    );
    assert_eq!(state(&rows, "node-b"), "stopped", "{rows:#?}");
    assert_eq!(field(&rows, "node-b", "lost_by"), serde_json::Value::Null);
    let recovered = json(
        &config_a,
        &[
            "audit",
            "query",
            "select count(*) as n from events where type = 'gateway.recovered'",
        ],
    );
    assert_eq!(recovered[0]["n"], 1, "{recovered}");
    let ends = json(
        &config_a,
        &[
            "audit",
            "query",
            "select count(*) as n from events where type = 'session.end'",
        ],
    );
    assert_eq!(
        ends[0]["n"], 1,
        "one session.end, however many nodes looked"
    );

    assert!(env.stop_gateway().expect("stopped").success());
    let rows = nodes(&config_a);
    assert_eq!(state(&rows, "node-a"), "stopped", "{rows:#?}");
    for config in [&config_a, &config_b] {
        let mut cmd = Command::new(common::gatehouse_bin());
        cmd.arg("--config").arg(config).args(["audit", "verify"]);
        let out = kit::run(cmd, common::T).expect("verify");
        assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (0 if unreadable).
fn chrono_ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

#[test]
fn a_kill_and_a_lock_from_one_node_end_sessions_on_the_other() {
    let db = Database::create("nodes");
    let mut env = Env::start_server(HEARTBEAT, "");
    env.stop_gateway();
    let port_b = kit::free_port();
    let config_b = configure(&env, &db.url(), port_b);
    let config_a = env.config_path.clone();
    env.spawn_gateway();
    let log_b = env.dir.path().join("node-b.log");
    let _b = Node::spawn(&config_b, &log_b, port_b, &[]);
    let log_a = env.dir.path().join("gateway.log");
    let logs = move || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- node-a\n{}\n--- node-b\n{}", read(&log_a), read(&log_b))
    };
    let spawn = |port: u16| {
        let mut c = env
            .alice()
            .ssh(port, "alice:web01@127.0.0.1", &["sleep", "60"]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().expect("ssh")
    };
    // One session on each node.
    let mut on_a = spawn(env.port);
    let mut on_b = spawn(port_b);
    wait_nodes(&config_b, "one session on each node", &logs, |r| {
        field(r, "node-a", "open_sessions") == 1 && field(r, "node-b", "open_sessions") == 1
    });
    let on_node = |node: &str| {
        json(
            &config_a,
            &[
                "audit",
                "query",
                &format!(
                    "select session_id from sessions where end_time is null and node = '{node}'"
                ),
            ],
        )[0]["session_id"]
            .as_str()
            .expect("a live session")
            .to_string()
    };
    let session_a = on_node("node-a");

    // Killed through node B's config (the CLI writes the request; node A
    // is woken by the notification and ends its session).
    let out = Command::new(common::gatehouse_bin())
        .args(["--config"])
        .arg(&config_b)
        .args(["sessions", "kill", &session_a, "--reason", "from node b"])
        .output()
        .expect("gatehouse sessions kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ended(&mut on_a, "the session on node A", &logs);
    let killed = wait_rows(
        &config_b,
        &format!("select node, reason from events where type = 'session.killed' and session_id = '{session_a}'"),
        &logs,
    );
    assert_eq!(killed[0]["node"], "node-a");
    assert_eq!(killed[0]["reason"], "from node b");

    // Locked through node A's config: the session on node B ends.
    let out = Command::new(common::gatehouse_bin())
        .args(["--config"])
        .arg(&config_a)
        .args(["users", "lock", "alice", "--reason", "from node a"])
        .output()
        .expect("gatehouse users lock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ended(&mut on_b, "the session on node B", &logs);
    wait_rows(
        &config_a,
        "select 1 from events where type = 'session.killed' and node = 'node-b'",
        &logs,
    );
    // A locked user is refused on either node.
    let out = kit::run(
        env.alice().ssh(port_b, "alice:web01@127.0.0.1", &["true"]),
        W,
    )
    .expect("ssh");
    assert_ne!(out.code, Some(0));
    let verify = Command::new(common::gatehouse_bin())
        .args(["--config"])
        .arg(&config_b)
        .args(["audit", "verify"])
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
