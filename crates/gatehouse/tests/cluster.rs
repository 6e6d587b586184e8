//! The deployment of docs/deploying.md, "Two nodes behind HAProxy", with
//! every part real: two gateway processes on one PostgreSQL database,
//! recordings in one S3-protocol bucket (s3s-fs), HAProxy in front
//! sending PROXY v2 and checking each node's `/healthz`.
//!
//! Sessions land on both nodes with the user's own address; a kill and a
//! lock made through one node end sessions on the other; `sessions watch`
//! through one node follows a session on the other, whose node then
//! publishes the recording at every flush; a rolling
//! restart (SIGTERM) lets the running session finish while new ones go
//! to the other node; `kill -9` of a node mid-session has the other
//! close its session with the recording read back from the bucket; and
//! `audit verify --recordings` passes from either node.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::servers::{
    configure, ended, json_with, wait_rows, Database, Haproxy, Node, S3, S3_SECRET,
};
use common::Env;
use gatehouse_testkit as kit;
use sha2::{Digest, Sha256};

const W: Duration = Duration::from_secs(30);

const SERVER: &str = "heartbeat_interval = \"1s\"\nnode_lost_after = \"4s\"\n\
                      drain_timeout = \"30s\"\nproxy_protocol = [\"127.0.0.1/32\"]\n";

struct Cluster {
    env: Env,
    s3: S3,
    _db: Database,
    _lb: Haproxy,
    lb: u16,
    configs: [PathBuf; 2],
    ports: [u16; 2],
    nodes: [Option<Node>; 2],
    vars: Vec<(String, String)>,
}

impl Cluster {
    fn start(tmp: &Path) -> Cluster {
        let db = Database::create("cluster");
        let s3 = S3::start(tmp.join("s3"));
        let mut env = Env::start_server(SERVER, "");
        env.stop_gateway();
        let port_b = kit::free_port();
        let config_b = configure(&env, &db.url(), port_b);
        let config_a = env.config_path.clone();
        let admin = [kit::free_port(), kit::free_port()];
        for (config, admin) in [(&config_a, admin[0]), (&config_b, admin[1])] {
            let text = std::fs::read_to_string(config).expect("read config");
            let text = text
                .replacen(
                    "node_lost_after",
                    &format!("admin_listen = \"127.0.0.1:{admin}\"\nnode_lost_after"),
                    1,
                )
                .replacen(
                    "\n[recording]\n",
                    "\n[recording]\nurl = \"s3://bucket/rec\"\n",
                    1,
                );
            assert!(text.contains("s3://bucket/rec") && text.contains("admin_listen"));
            std::fs::write(config, text).expect("write config");
        }
        let ports = [env.port, port_b];
        let lb = kit::free_port();
        let lb_proc = Haproxy::start(
            &format!(
                "listen ssh\n  bind 127.0.0.1:{lb}\n  balance roundrobin\n  option redispatch\n  retries 3\n\
                 \x20 option httpchk GET /healthz\n  http-check expect status 200\n\
                 \x20 default-server inter 300ms fall 1 rise 2\n\
                 \x20 server node-a 127.0.0.1:{} source 127.0.0.1 send-proxy-v2 check port {}\n\
                 \x20 server node-b 127.0.0.1:{} source 127.0.0.1 send-proxy-v2 check port {}\n",
                ports[0], admin[0], ports[1], admin[1]
            ),
            &[lb],
        );
        let vars = s3.env(S3_SECRET);
        let mut c = Cluster {
            env,
            s3,
            _db: db,
            _lb: lb_proc,
            lb,
            configs: [config_a, config_b],
            ports,
            nodes: [None, None],
            vars,
        };
        c.spawn(0);
        c.spawn(1);
        c
    }

    fn name(i: usize) -> &'static str {
        ["node-a", "node-b"][i]
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.env
            .dir
            .path()
            .join(format!("{}.log", Cluster::name(i)))
    }

    fn spawn(&mut self, i: usize) {
        let node = Node::spawn(
            &self.configs[i],
            &self.log_path(i),
            self.ports[i],
            &self.vars,
        );
        self.nodes[i] = Some(node);
        self.wait_healthy(i);
    }

    /// Until HAProxy's checks would pass: `/healthz` answers 200 (the
    /// balancer then needs `rise 2` checks, 600 ms).
    fn admin(&self, i: usize) -> String {
        let config = std::fs::read_to_string(&self.configs[i]).expect("config");
        config
            .lines()
            .find_map(|l| l.strip_prefix("admin_listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("admin_listen")
            .to_string()
    }

    fn wait_healthy(&self, i: usize) {
        let admin = self.admin(i);
        let deadline = Instant::now() + W;
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{admin}/healthz"))
                .output()
                .expect("curl");
            if out.stdout == b"200" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy\n{}",
                Cluster::name(i),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1200));
    }

    fn logs(&self) -> String {
        (0..2)
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                format!("--- {}\n{text}", Cluster::name(i))
            })
            .collect()
    }

    /// `ssh -b 127.0.0.9` through the balancer running `cmd` with a pty.
    fn ssh(&self, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.env.alice().opts())
            .args(["-tt", "-b", "127.0.0.9", "-p", &self.lb.to_string()])
            .args(["alice:web01@127.0.0.1", cmd]);
        c
    }

    /// A long session through the balancer, and the node it landed on
    /// with its session id (found by the marker it prints).
    fn open(&self, marker: &str) -> (Child, String, String) {
        self.open_running(marker, "sleep 120")
    }

    /// [`Cluster::open`], the session going on with `then`.
    fn open_running(&self, marker: &str, then: &str) -> (Child, String, String) {
        let mut c = self.ssh(&format!("echo {marker}-$((6*7)); {then}"));
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("ssh");
        let rows = wait_rows(
            &self.configs[0],
            &format!(
                "select s.session_id, s.node, s.source_ip from sessions s join commands c \
                 on c.session_id = s.session_id where s.end_time is null \
                 and c.command like 'echo {marker}-%'"
            ),
            &|| self.logs(),
        );
        assert_eq!(rows[0]["source_ip"], "127.0.0.9", "{rows:?}");
        let node = rows[0]["node"].as_str().expect("node").to_string();
        let id = rows[0]["session_id"].as_str().expect("id").to_string();
        (child, node, id)
    }

    fn cli(&self, i: usize, args: &[&str]) -> kit::Output {
        let mut cmd = Command::new(common::gatehouse_bin());
        cmd.arg("--config")
            .arg(&self.configs[i])
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .args(args);
        kit::run(cmd, common::T).expect("run gatehouse")
    }

    fn query(&self, i: usize, sql: &str) -> Vec<serde_json::Value> {
        json_with(&self.configs[i], &self.vars, &["audit", "query", sql])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn verify(&self, i: usize) {
        let out = self.cli(i, &["audit", "verify", "--recordings"]);
        assert_eq!(
            out.code,
            Some(0),
            "verify from {}: {}\n{}",
            Cluster::name(i),
            String::from_utf8_lossy(&out.stdout),
            out.stderr
        );
    }
}

/// Ends an `ssh` that landed on the wrong node.
fn discard(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn index(node: &str) -> usize {
    match node {
        "node-a" => 0,
        "node-b" => 1,
        other => panic!("unknown node {other}"),
    }
}

/// `sessions watch` through one node follows a session that runs on the
/// other. While it is watched, its node puts the output in the bucket at
/// every flush (about every half second while output flows) instead of
/// every two seconds: ten seconds of output make well over the six
/// chunks the two-second interval would.
fn watched_from_the_other_node(c: &Cluster) {
    let (mut session, node, id) = c.open_running(
        "watched",
        "for i in $(seq 1 40); do echo tick-$i; sleep 0.25; done; sleep 120",
    );
    let other = 1 - index(&node);
    let seen = c.env.dir.path().join("watch.out");
    let mut watch = Command::new(common::gatehouse_bin());
    watch
        .arg("--config")
        .arg(&c.configs[other])
        .envs(c.vars.iter().map(|(k, v)| (k, v)))
        .args(["sessions", "watch", &id])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&seen).expect("watch output"))
        .stderr(Stdio::null());
    let mut watcher = watch.spawn().expect("sessions watch");
    let start = Instant::now();
    while !std::fs::read_to_string(&seen)
        .unwrap_or_default()
        .contains("tick-40")
    {
        assert!(
            start.elapsed() < W,
            "the watch through {} never showed the end of the output: {:?}\n{}",
            Cluster::name(other),
            std::fs::read_to_string(&seen),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        session.try_wait().expect("ssh").is_none(),
        "the session was still running"
    );
    let chunks = c.s3.chunks(&id).len();
    assert!(
        chunks >= 9,
        "{chunks} chunks: the watched session's node did not publish at every flush\n{}",
        c.logs()
    );
    let out = c.cli(other, &["sessions", "kill", &id, "--reason", "watched"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    ended(&mut session, "the watched session", &|| c.logs());
    ended(&mut watcher, "the watch of an ended session", &|| c.logs());
    let rows = c.query(
        other,
        &format!(
            "select details from events where type = 'recording.access' and session_id = '{id}'"
        ),
    );
    assert!(
        rows.iter()
            .any(|r| r["details"].to_string().contains("watch")),
        "the watch is in the audit trail: {rows:?}"
    );
}

#[test]
fn two_nodes_behind_haproxy_on_one_database_and_one_bucket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(tmp.path());

    // Round robin: two sessions, one on each node, both from the user's
    // own address (PROXY v2 from the balancer).
    let (mut first, node1, id1) = c.open("one");
    let (mut second, node2, id2) = c.open("two");
    assert_ne!(node1, node2, "round robin puts them on both nodes");

    // Killed through the other node's config.
    let other = 1 - index(&node1);
    let out = c.cli(
        other,
        &["sessions", "kill", &id1, "--reason", "from the other node"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    ended(&mut first, "the killed session", &|| c.logs());
    let killed = wait_rows(
        &c.configs[other],
        &format!("select node, reason from events where type = 'session.killed' and session_id = '{id1}'"),
        &|| c.logs(),
    );
    assert_eq!(killed[0]["node"], node1.as_str());
    assert_eq!(killed[0]["reason"], "from the other node");

    watched_from_the_other_node(&c);

    // A rolling restart of the node that holds the second session: it
    // stops accepting, the balancer sends new users to the other node,
    // and the running session gets to finish.
    let b = index(&node2);
    // It lands on node `b` (round robin, after the second session's);
    // tried again until it does.
    let mut attempt = 0;
    let mut finishing = loop {
        attempt += 1;
        let mut cmd = c.ssh(&format!("sleep 3; echo finished-{attempt}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("ssh");
        let rows = wait_rows(
            &c.configs[0],
            &format!(
                "select s.node from sessions s join commands c on c.session_id = s.session_id \
                 where c.command = 'sleep 3; echo finished-{attempt}'"
            ),
            &|| c.logs(),
        );
        if rows[0]["node"] == Cluster::name(b) {
            break child;
        }
        discard(child);
    };
    let pid = c.nodes[b].as_ref().expect("node").pid();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    for n in 0..4 {
        let out = kit::run(c.ssh(&format!("echo during-{n}")), W).expect("ssh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("during-{n}"),
            "a new session during the drain: {}\n{}",
            out.stderr,
            c.logs()
        );
    }
    let during = c.query(
        0,
        "select distinct s.node from sessions s join commands c on c.session_id = s.session_id \
         where c.command like 'echo during-%'",
    );
    assert_eq!(during.len(), 1, "{during:?}");
    assert_eq!(during[0]["node"], Cluster::name(1 - b));
    let done = {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = finishing.try_wait() {
                break finishing.wait_with_output().expect("output");
            }
            assert!(start.elapsed() < W, "the draining session did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("finished"),
        "{err}"
    );
    assert_eq!(done.status.code(), Some(0), "{err}");
    // The second session was told and is still running; the node waits
    // for it. It ends with the session (killed here, from node `b`'s peer).
    let out = c.cli(
        1 - b,
        &["sessions", "kill", &id2, "--reason", "rolling restart"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    ended(&mut second, "the second session", &|| c.logs());
    let stopped = c.nodes[b].as_mut().expect("node").stop();
    assert!(stopped, "node {b} did not exit cleanly\n{}", c.logs());
    c.spawn(b);

    // kill -9 of a node mid-session: its peer closes the session with the
    // recording as it is in the bucket.
    let mut attempt = 0;
    let (mut lost, lost_node, lost_id) = loop {
        attempt += 1;
        let (child, node, id) = c.open(&format!("lost{attempt}"));
        if node == Cluster::name(b) {
            break (child, node, id);
        }
        discard(child);
    };
    // Wait until the recording's output is in the bucket (a chunk within
    // about two seconds).
    let start = Instant::now();
    while !String::from_utf8_lossy(&c.s3.recording(&lost_id)).contains(&format!("lost{attempt}-42"))
    {
        assert!(
            start.elapsed() < W,
            "the output never reached the bucket\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.nodes[b].as_mut().expect("node").kill9();
    let _ = lost.kill();
    let _ = lost.wait();
    let ends = wait_rows(
        &c.configs[1 - b],
        &format!("select node, reason, details from events where type = 'session.end' and session_id = '{lost_id}'"),
        &|| c.logs(),
    );
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["node"], Cluster::name(1 - b));
    assert_eq!(
        ends[0]["reason"],
        format!("node {lost_node} stopped heartbeating; session lost")
    );
    let details: serde_json::Value =
        serde_json::from_str(ends[0]["details"].as_str().unwrap_or("{}")).expect("details");
    assert_eq!(details["recordings_not_read"], false, "{details}");
    assert_eq!(
        details["recordings"][0]["id"],
        lost_id.as_str(),
        "{details}"
    );
    let body = c.s3.recording(&lost_id);
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(details["recordings"][0]["sha256"], sha, "{details}");
    // While it is down, the balancer sends everyone to the other node.
    let out = kit::run(c.ssh("echo still-served"), W).expect("ssh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "still-served",
        "{}",
        out.stderr
    );

    // A lock through the node that was killed (its config; the node
    // itself restarted) ends alice's session on the other.
    c.spawn(b);
    let mut attempt = 0;
    let (mut locked, locked_node, _) = loop {
        attempt += 1;
        let (child, node, id) = c.open(&format!("locked{attempt}"));
        if node != Cluster::name(b) {
            break (child, node, id);
        }
        discard(child);
    };
    assert_eq!(locked_node, Cluster::name(1 - b));
    let out = c.cli(b, &["users", "lock", "alice", "--reason", "across nodes"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    ended(&mut locked, "the locked user's session", &|| c.logs());
    let out = kit::run(c.ssh("echo refused"), W).expect("ssh");
    assert_ne!(out.code, Some(0), "a locked user is refused");

    // Every chunk cut is in the bucket: no upload lag, no failure.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", c.admin(1 - b))])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
    };
    assert_eq!(value("gatehouse_recording_upload_lag_seconds"), 0.0);
    assert_eq!(value("gatehouse_recording_upload_failures_total"), 0.0);

    // One trail, verifiable with every recording from either node.
    c.verify(0);
    c.verify(1);
    let sessions = c.query(
        0,
        "select count(*) as n, count(distinct node) as nodes from sessions",
    );
    assert_eq!(sessions[0]["nodes"], 2, "{sessions:?}");
}
