//! Two gateway nodes on one PostgreSQL store: both heartbeat and show in
//! `gatehouse nodes`; after `kill -9` of one, the other closes its open
//! session in the trail (once, with the lost reason) and the chain still
//! verifies; a node stopped with SIGTERM is stopped, never lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stdout, Env};
use gatehouse_testkit as kit;

/// The longest any condition below is waited for.
const W: Duration = Duration::from_secs(30);

const HEARTBEAT: &str = "heartbeat_interval = \"1s\"\nnode_lost_after = \"4s\"\n";

fn psql(db: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .expect("psql (PostgreSQL must run on 127.0.0.1:5432)")
}

/// A database of its own, dropped at the end.
struct Database(String);

impl Database {
    fn create() -> Database {
        // One per test: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gh_nodes_{}_{n}", std::process::id());
        let _ = psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        assert!(psql("postgres", &format!("CREATE DATABASE {name}"))
            .status
            .success());
        Database(name)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}

/// A second gateway process, killed when the test ends.
struct Node {
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn spawn(config: &Path, log: &Path, port: u16) -> Node {
        let file = std::fs::File::create(log).expect("log");
        let child = Command::new(common::gatehouse_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("GATEHOUSE_LOG", "info,russh=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn gateway");
        let node = Node {
            child: Some(child),
            log: log.to_path_buf(),
        };
        if let Err(e) = kit::wait_for_port(port, Duration::from_secs(20)) {
            panic!("gateway did not start: {e}\n{}", node.log());
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + W;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `gatehouse --config CONFIG --format json args...` and parses it.
fn json(config: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(common::gatehouse_bin());
    cmd.arg("--config")
        .arg(config)
        .args(["--format", "json"])
        .args(args);
    let out = kit::run(cmd, common::T).expect("run gatehouse");
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `gatehouse nodes` as (name → row).
fn nodes(config: &Path) -> Rows {
    json(config, &["nodes"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n["name"].as_str().unwrap_or_default().to_string(), n))
        .collect()
}

/// Polls `gatehouse nodes` until `done` holds for the rows.
fn wait_nodes(
    config: &Path,
    what: &str,
    logs: &dyn Fn() -> String,
    done: impl Fn(&Rows) -> bool,
) -> Rows {
    let deadline = Instant::now() + W;
    loop {
        let rows = nodes(config);
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {rows:#?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `audit query` until it returns at least one row.
fn wait_rows(config: &Path, sql: &str, logs: &dyn Fn() -> String) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + W;
    loop {
        let rows = json(config, &["audit", "query", sql])
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !rows.is_empty() {
            return rows;
        }
        assert!(Instant::now() < deadline, "no rows for {sql}\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

type Rows = std::collections::BTreeMap<String, serde_json::Value>;

/// `key` of `node`'s row (null when the node is not listed).
fn field(rows: &Rows, node: &str, key: &str) -> serde_json::Value {
    rows.get(node)
        .map(|n| n[key].clone())
        .unwrap_or(serde_json::Value::Null)
}

fn state(rows: &Rows, node: &str) -> String {
    field(rows, node, "state")
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

/// Node A's config (the Env's) on PostgreSQL as `node-a`, and node B's
/// beside it: its own port, recordings and anchor file.
fn configure(env: &Env, url: &str, port_b: u16) -> PathBuf {
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("url = \"sqlite://") {
                format!("url = \"{url}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let a = text.replace("node = \"test-node\"", "node = \"node-a\"")
        + "\n[audit]\nanchor_file = \"anchor-a.jsonl\"\n";
    std::fs::write(&env.config_path, a).expect("write config a");
    let b = text
        .replace("node = \"test-node\"", "node = \"node-b\"")
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", env.port),
            &format!("listen = \"127.0.0.1:{port_b}\""),
        )
        .replace("dir = \"recordings\"", "dir = \"recordings-b\"")
        + "\n[audit]\nanchor_file = \"anchor-b.jsonl\"\n";
    let path = env.dir.path().join("node-b.toml");
    std::fs::write(&path, b).expect("write config b");
    path
}

#[test]
fn a_node_that_stops_heartbeating_has_its_sessions_closed_by_another() {
    let db = Database::create();
    let mut env = Env::start_server(HEARTBEAT, "");
    env.stop_gateway();
    let port_b = kit::free_port();
    let config_b = configure(&env, &db.url(), port_b);
    let config_a = env.config_path.clone();
    env.spawn_gateway();
    let log_b = env.dir.path().join("node-b.log");
    let mut b = Node::spawn(&config_b, &log_b, port_b);
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

/// Waits for `child` to exit (the session it runs was ended).
fn ended(child: &mut Child, what: &str, logs: &dyn Fn() -> String) {
    let start = Instant::now();
    while start.elapsed() < W {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("{what} still runs\n{}", logs());
}

#[test]
fn a_kill_and_a_lock_from_one_node_end_sessions_on_the_other() {
    let db = Database::create();
    let mut env = Env::start_server(HEARTBEAT, "");
    env.stop_gateway();
    let port_b = kit::free_port();
    let config_b = configure(&env, &db.url(), port_b);
    let config_a = env.config_path.clone();
    env.spawn_gateway();
    let log_b = env.dir.path().join("node-b.log");
    let _b = Node::spawn(&config_b, &log_b, port_b);
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
