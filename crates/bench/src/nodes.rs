//! `GH_BENCH_ONLY=nodes` (run only when named): the layout of
//! docs/deploying.md, "Two nodes behind HAProxy", with every part real
//! and on this machine: one sshd target, a fresh database on the local
//! PostgreSQL (127.0.0.1:5432, user postgres), s3s-fs (target/s3s, from
//! scripts/deps.sh) as the recordings bucket, two `gatehouse serve` nodes
//! with `[recording] url = "s3://bucket/rec"` and HAProxy (send-proxy-v2,
//! httpchk `/healthz`). Four paths to the same target:
//!
//! - `lb_two_nodes`: HAProxy, round robin over both nodes;
//! - `lb_one_node`: HAProxy with node A only;
//! - `one_node`: straight to node A (no PROXY header: the clients bind
//!   127.0.0.9, and only 127.0.0.1, HAProxy's source, is trusted for one);
//! - `direct`: straight to the target's sshd (the reference).
//!
//! Measured in one run:
//!
//! 1. Set-up rate: GH_BENCH_NODES_N (default 100) `ssh HOST true` started
//!    at once (curve25519-sha256, chacha20-poly1305, as the `setup`
//!    section's "curve25519" client): sessions/s over the wall time from
//!    the start to the last exit, p50/p99 of each session's own time, and
//!    how many succeeded. Every path must admit all of them (the target's
//!    sshd has `MaxStartups 100`: more than 100 would be refused on
//!    `direct`).
//! 2. Throughput: GH_BENCH_NODES_STREAMS (default 20) downloads of
//!    GH_BENCH_NODES_MIB (default 64) MiB each (`head -c` on the target,
//!    aes256-gcm) at once: aggregate MB/s over the wall time.
//! 3. Object-storage upload lag: a pty session through HAProxy prints
//!    about 1 MB/s of base64 for GH_BENCH_NODES_PTY_SECONDS (default 20);
//!    both nodes' `gatehouse_recording_upload_lag_seconds` (`/metrics`)
//!    is read every 250 ms (max and median of the node with the session).
//!    Then the output stops with a marker and the session stays open:
//!    the time from the client seeing the marker to the marker being in
//!    a chunk in the bucket directory s3s-fs serves (the recorder's late
//!    flush is 2.1 s after its last flush).
//! 4. Live watch across nodes: a pty session through HAProxy prints a
//!    line every 3 s (GH_BENCH_NODES_TICKS lines, default 5) while
//!    `gatehouse sessions watch` runs with node B's config, reading the
//!    bucket: for each line, the time from the client seeing it to the
//!    watcher printing it.
//!
//! The load average is reported at the start and end of each part.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use gatehouse_testkit::{self as kit, Sshd};
use serde_json::{json, Map, Value};

use super::{bench_login, env_u64, gatehouse_bin, median, open_to_login, percentile, stop};

const S3_KEY: &str = "gatehouse-bench";
const S3_SECRET: &str = "s3cret-key-for-the-bench";
const W: Duration = Duration::from_secs(30);
/// The paths, as hosts of the client config, with their JSON keys.
const PATHS: [(&str, &str); 4] = [
    ("lb2", "lb_two_nodes"),
    ("lb1", "lb_one_node"),
    ("node", "one_node"),
    ("direct", "direct"),
];
const MARK: &str = "END-42";

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn psql(sql: &str) -> bool {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-qtAc", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A database of its own, dropped at the end.
struct Database(String);

impl Database {
    fn create() -> Database {
        let name = format!("gh_bench_nodes_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        assert!(
            psql(&format!("CREATE DATABASE {name}")),
            "PostgreSQL on 127.0.0.1:5432 (user postgres) is needed"
        );
        Database(name)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// Processes stopped when dropped (also when a check fails and the run
/// unwinds): gateways with SIGTERM, then SIGKILL.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            stop(c, Duration::from_secs(10));
        }
    }
}

fn s3s_fs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/s3s/bin/s3s-fs");
    let home = std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"));
    [Ok(root), home]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .expect("s3s-fs is not installed: run scripts/deps.sh")
}

fn haproxy() -> &'static str {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("HAProxy is not installed: apt-get install haproxy (scripts/deps.sh does)")
}

/// One plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Some((status, body.to_string()))
}

/// `gatehouse_recording_upload_lag_seconds` of the node at `admin`.
fn upload_lag(admin: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("gatehouse_recording_upload_lag_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// Dropped in field order: the processes stop, then the database is
/// dropped, then the target and the directory go.
struct Cluster {
    _procs: Procs,
    _db: Database,
    _target: Sshd,
    s3_root: PathBuf,
    s3_port: u16,
    admins: [String; 2],
    dir: tempfile::TempDir,
}

/// Node `name`'s config: on the shared database and bucket, trusting
/// PROXY headers from 127.0.0.1 (HAProxy's source address).
fn node_config(d: &Path, name: &str, port: u16, admin: u16, db: &str, target: &Sshd) -> PathBuf {
    let login = bench_login();
    let user_pub = std::fs::read_to_string(d.join("user.pub")).expect("user.pub");
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
host_key = "host_ed25519"
node = "{name}"
admin_listen = "127.0.0.1:{admin}"
proxy_protocol = ["127.0.0.1/32"]
max_startups = 2000
# Every client is alice from 127.0.0.9: the per-source and per-user
# limits would otherwise cap the bursts.
per_source_max_startups = 2000
max_connections_per_user = 5000
[upstream]
key = "client_ed25519"
[store]
url = "{db}"
[recording]
url = "s3://bucket/rec"
dir = "{name}-recordings"
[audit]
anchor_file = "anchor-{name}.jsonl"
[[targets]]
name = "web01"
address = "{addr}"
host_key = "{fp}"
default_login = "{login}"
[[roles]]
name = "all"
allow = [{{ targets = {{}}, logins = ["*"] }}]
[[users]]
name = "alice"
keys = ["{user}"]
roles = ["all"]
"#,
        addr = target.address(),
        fp = target.host_key_fingerprint,
        user = user_pub.trim(),
    );
    let path = d.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("write node config");
    path
}

/// s3s-fs on a free port serving `root` (one bucket, `bucket`).
fn start_s3(root: &Path) -> (Child, u16) {
    std::fs::create_dir_all(root.join("bucket")).expect("bucket dir");
    let port = kit::free_port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    kit::wait_for_port(port, W).expect("s3s-fs listens");
    (child, port)
}

/// `gatehouse serve` for `cfg`; returns once its `/healthz` answers 200.
fn start_node(cfg: &Path, port: u16, admin: &str, s3_port: u16) -> Child {
    let log = std::fs::File::create(cfg.with_extension("log")).expect("log");
    let mut child = Command::new(gatehouse_bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .env("GATEHOUSE_LOG", "warn")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3_port}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gatehouse (build it: cargo build --release -p gatehouse)");
    let deadline = Instant::now() + W;
    while http_get(admin, "/healthz").map(|r| r.0) != Some(200) {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
            panic!("node {} did not become healthy:\n{log}", cfg.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kit::wait_for_port(port, W).expect("node listening");
    child
}

/// HAProxy: `lb2` over both nodes, `lb1` over node A only.
fn start_haproxy(d: &Path, lb: [u16; 2], ports: [u16; 2], admin: [u16; 2]) -> Child {
    let server = |i: usize| {
        format!(
            "  server node-{} 127.0.0.1:{} source 127.0.0.1 send-proxy-v2 check port {}\n",
            ["a", "b"][i],
            ports[i],
            admin[i]
        )
    };
    let head =
        "  balance roundrobin\n  option redispatch\n  retries 3\n  option httpchk GET /healthz\n  \
                http-check expect status 200\n  default-server inter 1s fall 2 rise 2\n";
    let cfg = format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  \
         timeout server 300s\nlisten two\n  bind 127.0.0.1:{}\n{head}{}{}listen one\n  bind 127.0.0.1:{}\n{head}{}",
        lb[1],
        server(0),
        server(1),
        lb[0],
        server(0)
    );
    let path = d.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("haproxy.cfg");
    let child = Command::new(haproxy())
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    for p in lb {
        kit::wait_for_port(p, Duration::from_secs(10)).expect("haproxy listens");
    }
    child
}

/// The client configs: `setup` (chacha20-poly1305) and `bulk`
/// (aes256-gcm), both with curve25519-sha256, every client bound to
/// 127.0.0.9.
fn client_configs(d: &Path, target: &Sshd, lb: [u16; 2], node: u16) {
    let login = bench_login();
    let hosts = format!(
        "Host direct\n    HostName 127.0.0.1\n    Port {}\n    User {login}\n\
         Host node\n    HostName 127.0.0.1\n    Port {node}\n    User alice:web01\n\
         Host lb1\n    HostName 127.0.0.1\n    Port {}\n    User alice:web01\n\
         Host lb2\n    HostName 127.0.0.1\n    Port {}\n    User alice:web01\n",
        target.port, lb[0], lb[1]
    );
    for (tag, cipher) in [
        ("setup", "chacha20-poly1305@openssh.com"),
        ("bulk", "aes256-gcm@openssh.com"),
    ] {
        let text = format!(
            "{hosts}Host *\n    BindAddress 127.0.0.9\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
             BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    \
             LogLevel ERROR\n    Ciphers {cipher}\n    KexAlgorithms curve25519-sha256\n",
            d.join("user").display()
        );
        std::fs::write(d.join(format!("ssh_config.{tag}")), text).expect("ssh config");
    }
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let user = kit::keygen(d, "user").expect("keygen");
    let upstream = kit::keygen(d, "client_ed25519").expect("keygen");
    kit::keygen(d, "host_ed25519").expect("keygen");
    let target = Sshd::start(&[user.public_line.clone(), upstream.public_line.clone()])
        .expect("target sshd");
    open_to_login(&target);
    let db = Database::create();
    let s3_root = d.join("s3");
    let mut procs = Procs(Vec::new());
    let (s3, s3_port) = start_s3(&s3_root);
    procs.0.push(s3);
    let ports = [kit::free_port(), kit::free_port()];
    let admin = [kit::free_port(), kit::free_port()];
    let admins = admin.map(|p| format!("127.0.0.1:{p}"));
    // One after the other: the first applies the schema.
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        let cfg = node_config(d, name, ports[i], admin[i], &db.url(), &target);
        procs
            .0
            .push(start_node(&cfg, ports[i], &admins[i], s3_port));
    }
    let lb = [kit::free_port(), kit::free_port()];
    procs.0.push(start_haproxy(d, lb, ports, admin));
    client_configs(d, &target, lb, ports[0]);
    // HAProxy's checks: `rise 2` at 1 s before a server takes traffic.
    std::thread::sleep(Duration::from_millis(2500));
    Cluster {
        _procs: procs,
        _db: db,
        _target: target,
        s3_root,
        s3_port,
        admins,
        dir,
    }
}

/// `n` clients at once.
struct Burst {
    wall: f64,
    /// Seconds from the release to the last client's start (the clients
    /// themselves queue for the CPU).
    last_start: f64,
    /// Each succeeded session's own seconds.
    times: Vec<f64>,
    failed: usize,
    first_error: String,
}

impl Cluster {
    fn ssh(&self, tag: &str, host: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.dir.path().join(format!("ssh_config.{tag}")))
            .arg(host)
            .arg(cmd);
        c
    }

    /// `n` clients of `ssh HOST cmd` started together (a thread each,
    /// released by one barrier).
    fn burst(&self, tag: &str, host: &str, cmd: &str, n: u64) -> Burst {
        let barrier = Arc::new(Barrier::new(n as usize + 1));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let mut c = self.ssh(tag, host, cmd);
                c.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let out = c.output();
                    let end = Instant::now();
                    let err = match out {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some(format!(
                            "{}: {}",
                            o.status,
                            String::from_utf8_lossy(&o.stderr)
                        )),
                        Err(e) => Some(e.to_string()),
                    };
                    (t, end, (end - t).as_secs_f64(), err)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut b = Burst {
            wall: 0.0,
            times: Vec::new(),
            failed: 0,
            last_start: 0.0,
            first_error: String::new(),
        };
        for h in handles {
            let (start, end, secs, err) = h.join().expect("client thread");
            let start = start.saturating_duration_since(t0).as_secs_f64();
            b.last_start = b.last_start.max(start);
            b.wall = b.wall.max(end.saturating_duration_since(t0).as_secs_f64());
            match err {
                None => b.times.push(secs),
                Some(e) => {
                    b.failed += 1;
                    if b.first_error.is_empty() {
                        b.first_error = e;
                    }
                }
            }
        }
        b
    }

    /// Recording directories in the bucket (`ID.cast`).
    fn recordings(&self) -> BTreeSet<PathBuf> {
        std::fs::read_dir(self.s3_root.join("bucket/rec"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Upload lag of the node with the session: the larger of the two.
    fn lag_now(&self) -> Option<f64> {
        let v: Vec<f64> = self.admins.iter().filter_map(|a| upload_lag(a)).collect();
        v.into_iter().reduce(f64::max)
    }
}

/// The chunk objects of a recording directory, in order.
fn chunks(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
    });
    v.sort();
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `MARK` is in the recordings `dirs` as stored. `state` is what
/// was seen last (chunk count, last chunk's size): unchanged, nothing is
/// read again; otherwise the last two chunks are (the whole recording
/// the first time).
fn marked(dirs: &[PathBuf], state: &mut Option<(usize, u64)>) -> bool {
    let all: Vec<PathBuf> = dirs.iter().flat_map(|d| chunks(d)).collect();
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let now = (all.len(), all.last().map(size).unwrap_or(0));
    let first = state.is_none();
    if *state == Some(now) {
        return false;
    }
    *state = Some(now);
    let from = if first {
        0
    } else {
        all.len().saturating_sub(2)
    };
    let mut body = Vec::new();
    for p in &all[from..] {
        body.extend(std::fs::read(p).unwrap_or_default());
    }
    contains(&body, MARK.as_bytes())
}

struct Lag {
    samples: Vec<f64>,
    client_bytes: u64,
    seconds: f64,
    to_bucket: f64,
}

/// Reads `ssh`'s output; sends the time `MARK` was seen, then the bytes
/// read so far.
fn watch(mut out: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, u64)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        let mut total = 0u64;
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 {
                break;
            }
            total += k as u64;
            tail.extend_from_slice(&buf[..k]);
            if contains(&tail, MARK.as_bytes()) {
                let _ = tx.send((Instant::now(), total));
                // Keep draining so that the session is not blocked.
                while matches!(out.read(&mut buf), Ok(k) if k > 0) {}
                return;
            }
            let keep = tail.len().saturating_sub(MARK.len());
            tail.drain(..keep);
        }
    });
    rx
}

/// Part 3: the upload lag while a pty session prints steadily through
/// HAProxy, then the time until its last output is in the bucket.
fn upload(c: &Cluster, seconds: u64) -> Lag {
    let before = c.recordings();
    // About 100 KB of base64 every 0.1 s; the marker is computed on the
    // target so that only the output carries it.
    let steps = seconds * 10;
    let script = format!(
        "i=0; while [ $i -lt {steps} ]; do head -c 75000 /dev/urandom | base64 -w 200; \
         sleep 0.1; i=$((i+1)); done; echo END-$((6*7)); sleep 60"
    );
    // `-tt` before the host.
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg(c.dir.path().join("ssh_config.setup"))
        .args(["-tt", "lb2", &script]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh -tt");
    let rx = watch(child.stdout.take().expect("stdout"));
    let t = Instant::now();
    let mut samples = Vec::new();
    let (end, client_bytes) = loop {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(x) => break x,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(v) = c.lag_now() {
                    samples.push(v);
                }
                assert!(
                    t.elapsed() < Duration::from_secs(seconds + 60),
                    "the pty session never printed its marker"
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the pty session ended before its marker")
            }
        }
    };
    let secs = (end - t).as_secs_f64();
    let dirs: Vec<PathBuf> = c.recordings().difference(&before).cloned().collect();
    assert!(
        !dirs.is_empty(),
        "no recording of the pty session in the bucket"
    );
    let mut state = None;
    while !marked(&dirs, &mut state) {
        assert!(
            end.elapsed() < W,
            "the output's end never reached the bucket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let to_bucket = end.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    Lag {
        samples,
        client_bytes,
        seconds: secs,
        to_bucket,
    }
}

/// The time each of `marks` first appears in `out`, in order.
fn marks_seen(mut out: impl Read + Send + 'static, marks: Vec<String>) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen: Vec<u8> = Vec::new();
        let mut next = 0;
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..k]);
            while next < marks.len() && contains(&seen, marks[next].as_bytes()) {
                let _ = tx.send(Instant::now());
                next += 1;
            }
        }
    });
    rx
}

/// Part 4: seconds from the client seeing each of `ticks` lines (3 s
/// apart) of a session through HAProxy to `sessions watch`, run with
/// node B's config, printing it.
fn live_watch(c: &Cluster, ticks: usize) -> Vec<f64> {
    let before = c.recordings();
    let script =
        format!("for i in $(seq 1 {ticks}); do sleep 3; echo TICK-$((i+100)); done; sleep 60");
    let marks: Vec<String> = (1..=ticks).map(|i| format!("TICK-{}", i + 100)).collect();
    let mut client = Command::new("ssh")
        .arg("-F")
        .arg(c.dir.path().join("ssh_config.setup"))
        .args(["-tt", "lb2", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh -tt");
    let client_rx = marks_seen(client.stdout.take().expect("stdout"), marks.clone());
    let start = Instant::now();
    let id = loop {
        let new: Vec<PathBuf> = c.recordings().difference(&before).cloned().collect();
        if let Some(name) = new
            .first()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        {
            break name.trim_end_matches(".cast").to_string();
        }
        assert!(start.elapsed() < W, "no recording of the watched session");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut watcher = Command::new(gatehouse_bin())
        .arg("--config")
        .arg(c.dir.path().join("node-b.toml"))
        .args(["sessions", "watch", &id])
        .env("GATEHOUSE_LOG", "warn")
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", c.s3_port),
        )
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gatehouse sessions watch");
    let watch_rx = marks_seen(watcher.stdout.take().expect("stdout"), marks);
    let mut lags = Vec::new();
    for _ in 0..ticks {
        let seen = client_rx.recv_timeout(W).expect("the client saw the line");
        let shown = watch_rx
            .recv_timeout(W)
            .expect("the watcher showed the line");
        lags.push(shown.saturating_duration_since(seen).as_secs_f64());
    }
    for child in [&mut watcher, &mut client] {
        let _ = child.kill();
        let _ = child.wait();
    }
    lags
}

/// The p50, p99 and max of a burst's session times, in ms.
fn p50_p99(b: &Burst) -> (f64, f64, f64) {
    if b.times.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v: Vec<f64> = b.times.iter().map(|s| s * 1000.0).collect();
    let max = v.iter().cloned().fold(0.0, f64::max);
    (median(&mut v.clone()), percentile(&mut v, 0.99), max)
}

fn set_up_rates(c: &Cluster, n: u64, table: &mut String) -> Value {
    let load0 = load();
    let mut rows = Map::new();
    let mut text = String::new();
    for (host, key) in PATHS {
        let b = c.burst("setup", host, "true", n);
        let (p50, p99, max) = p50_p99(&b);
        let rate = b.times.len() as f64 / b.wall;
        text.push_str(&format!(
            "  {key:<14} {rate:>6.1} sessions/s  p50 {p50:>5.0} ms  p99 {p99:>5.0} ms  max {max:>5.0} ms  \
             {}/{n} ok  wall {:.2} s  last start +{:.0} ms\n",
            b.times.len(),
            b.wall,
            b.last_start * 1000.0
        ));
        rows.insert(
            key.into(),
            json!({"sessions_per_s": rate, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
                   "ok": b.times.len(), "n": n, "wall_s": b.wall,
                   "last_start_ms": b.last_start * 1000.0}),
        );
        assert_eq!(
            b.failed, 0,
            "{}/{n} `ssh {host} true` failed; the first: {}\n{text}",
            b.failed, b.first_error
        );
    }
    let load1 = load();
    table.push_str(&format!(
        "set-up rate, {n} `ssh HOST true` at once (curve25519-sha256), load {load0} -> {load1}:\n{text}"
    ));
    rows.insert("load".into(), json!([load0, load1]));
    Value::Object(rows)
}

fn throughput(c: &Cluster, m: u64, mib: u64, table: &mut String) -> Value {
    let load0 = load();
    let mut rows = Map::new();
    let mut text = String::new();
    let bytes = mib << 20;
    for (host, key) in PATHS {
        let b = c.burst("bulk", host, &format!("head -c {bytes} /dev/zero"), m);
        let rate = (b.times.len() as u64 * bytes) as f64 / b.wall / 1e6;
        text.push_str(&format!(
            "  {key:<14} {rate:>8.1} MB/s  {}/{m} ok  wall {:.2} s\n",
            b.times.len(),
            b.wall
        ));
        rows.insert(
            key.into(),
            json!({"mb_per_s": rate, "ok": b.times.len(), "n": m, "wall_s": b.wall}),
        );
        assert_eq!(
            b.failed, 0,
            "{}/{m} downloads through {host} failed; the first: {}\n{text}",
            b.failed, b.first_error
        );
    }
    let load1 = load();
    table.push_str(&format!(
        "throughput, {m} downloads of {mib} MiB at once (aes256-gcm), load {load0} -> {load1}:\n{text}"
    ));
    rows.insert("load".into(), json!([load0, load1]));
    Value::Object(rows)
}

pub fn run(table: &mut String, json_out: &mut Map<String, Value>) {
    let n = env_u64("GH_BENCH_NODES_N", 100);
    let m = env_u64("GH_BENCH_NODES_STREAMS", 20);
    let mib = env_u64("GH_BENCH_NODES_MIB", 64);
    let pty_seconds = env_u64("GH_BENCH_NODES_PTY_SECONDS", 20);
    let ticks = env_u64("GH_BENCH_NODES_TICKS", 5) as usize;
    let c = start();
    // One session per path first: every node's store pool and target
    // connection is warm before anything is timed.
    for (host, _) in PATHS {
        let out = c.ssh("setup", host, "true").output().expect("ssh");
        assert!(
            out.status.success(),
            "warm-up through {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    table.push_str("\nnodes: two gateway nodes (PostgreSQL, s3s-fs bucket) behind HAProxy\n");
    let setup = set_up_rates(&c, n, table);
    let bulk = throughput(&c, m, mib, table);
    let load0 = load();
    let lag = upload(&c, pty_seconds);
    let load1 = load();
    let max = lag.samples.iter().cloned().fold(0.0, f64::max);
    let med = if lag.samples.is_empty() {
        f64::NAN
    } else {
        median(&mut lag.samples.clone())
    };
    let rate = lag.client_bytes as f64 / lag.seconds / 1e6;
    table.push_str(&format!(
        "upload lag, pty through HAProxy at {rate:.2} MB/s for {:.1} s, load {load0} -> {load1}:\n  \
         gatehouse_recording_upload_lag_seconds max {max:.3} s, median {med:.3} s ({} samples)\n  \
         output stopped -> its end in the bucket: {:.2} s\n",
        lag.seconds,
        lag.samples.len(),
        lag.to_bucket
    ));
    let watched = live_watch(&c, ticks);
    let watch_max = watched.iter().cloned().fold(0.0, f64::max);
    let watch_med = median(&mut watched.clone());
    table.push_str(&format!(
        "live watch across nodes (sessions watch with node B's config, one line every 3 s through HAProxy):\n  \
         client sees a line -> the watcher prints it: median {watch_med:.2} s, max {watch_max:.2} s ({} lines: {})\n",
        watched.len(),
        watched.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
    ));
    json_out.insert(
        "nodes".into(),
        json!({
            "live_watch_s": watched,
            "setup": setup,
            "throughput": bulk,
            "mib_each": mib,
            "upload_lag": {"max_s": max, "median_s": med, "samples": lag.samples.len(),
                           "pty_mb_per_s": rate, "pty_seconds": lag.seconds,
                           "end_to_bucket_s": lag.to_bucket, "load": [load0, load1]},
        }),
    );
}
