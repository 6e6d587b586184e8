//! `cargo run --release -p gatehouse-bench` (or `bench/run.sh`): measures,
//! in one run on this machine, three paths to the same real sshd target:
//! direct OpenSSH, OpenSSH ProxyJump through a second sshd, and OpenSSH
//! through Gatehouse (recording on). Prints a table and one JSON line.
//!
//! Sizes are environment variables so that a quick run and a full run use
//! the same code: GH_BENCH_BYTES (bulk bytes per run, default 1 GiB),
//! GH_BENCH_RUNS (default 3), GH_BENCH_IDLE (idle sessions, default 1000),
//! GH_BENCH_EVENTS (rows for the query benchmark, default 10 million),
//! GH_BENCH_STREAMS (concurrent streams, default 100; each moves
//! GH_BENCH_BYTES / 64), GH_BENCH_ONLY (comma-separated sections: bulk,
//! setup, keys, recording, streams, idle, burst, audit; default all;
//! `ingest`, batched audit ingest alone in `GH_BENCH_RUNS` rounds per
//! backend (see `ingest.rs`), `console`, the web console's section, and
//! `nodes`, two gateway nodes
//! behind HAProxy, run only when named: see `console.rs`, `nodes.rs`;
//! `burst.rs` has the burst section's own knobs),
//! GH_BENCH_HOLD (seconds to keep the idle sessions open after measuring,
//! for a profiler; default 0), GH_BENCH_LOGIN (the login on the targets;
//! see `bench_login`).
//!
//! `gatehouse-bench soak [--short]` (or `bench/soak.sh`) runs the soak
//! test instead; see `soak.rs` and BENCHMARKS.md, "Soak".

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::{self as kit, Sshd};

mod burst;
mod console;
mod ingest;
mod nodes;
mod soak;
mod writers;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Setup {
    dir: tempfile::TempDir,
    target: Sshd,
    _bastion: Sshd,
    gateways: Vec<std::process::Child>,
    gw_pid: u32,
    gw_db: PathBuf,
    /// The login on the targets (`bench_login`).
    login: String,
}

const HOSTS: [&str; 3] = ["direct", "jump", "gatehouse"];

fn gatehouse_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("gatehouse")
}

fn write_gateway_config(
    dir: &Path,
    name: &str,
    port: u16,
    target: &Sshd,
    login: &str,
    user_pub: &str,
    recording: bool,
) -> PathBuf {
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
host_key = "host_ed25519"
max_startups = 2000
# Every client is alice from 127.0.0.1: the per-source and per-user
# limits would otherwise cap the idle and concurrent sections.
per_source_max_startups = 2000
max_connections_per_user = 5000
[upstream]
key = "client_ed25519"
[store]
url = "sqlite://{name}.db"
[recording]
dir = "{name}-recordings"
enabled = {recording}
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
keys = ["{user_pub}"]
roles = ["all"]
"#,
        addr = target.address(),
        fp = target.host_key_fingerprint,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("write gateway config");
    path
}

/// The login the benchmark uses on its targets. Its shell must start
/// nothing of its own: a login whose rc files run tools (pyenv, conda, nvm)
/// would put their start-up time into every set-up measurement and, with
/// hundreds of sessions at once, their lock contention into the concurrency
/// ones. `GH_BENCH_LOGIN` names one; otherwise, as root, the benchmark uses
/// (and creates once) the system account `gatehouse-bench` with `/bin/sh`;
/// as anyone else, the current login.
fn bench_login() -> String {
    if let Ok(l) = std::env::var("GH_BENCH_LOGIN") {
        return l;
    }
    let me = kit::current_login();
    if me != "root" {
        return me;
    }
    const LOGIN: &str = "gatehouse-bench";
    let exists = Command::new("id")
        .arg(LOGIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let status = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh", LOGIN])
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {LOGIN} failed");
    }
    // No password, but not locked either: sshd refuses locked accounts
    // (`!` in the shadow file) even for key authentication.
    let status = Command::new("usermod")
        .args(["-p", "*", LOGIN])
        .status()
        .expect("usermod");
    assert!(status.success(), "usermod -p '*' {LOGIN} failed");
    LOGIN.to_string()
}

/// Lets every login read the target's authorized_keys (benchmark only).
fn open_to_login(target: &Sshd) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(target.dir.path(), 0o755);
    mode(&target.dir.path().join("authorized_keys"), 0o644);
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let user = kit::keygen(d, "user").expect("keygen");
    let upstream = kit::keygen(d, "client_ed25519").expect("keygen");
    kit::keygen(d, "host_ed25519").expect("keygen");
    let login = bench_login();
    let target = Sshd::start(&[user.public_line.clone(), upstream.public_line.clone()])
        .expect("target sshd");
    // sshd reads authorized_keys as the login it authenticates.
    open_to_login(&target);
    let bastion = Sshd::start(std::slice::from_ref(&user.public_line)).expect("bastion sshd");
    open_to_login(&bastion);
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    for (name, recording) in [("gw", true), ("gwnorec", false)] {
        let port = kit::free_port();
        let cfg =
            write_gateway_config(d, name, port, &target, &login, &user.public_line, recording);
        let log = std::fs::File::create(d.join(format!("{name}.log"))).expect("log");
        // GH_BENCH_WRAP runs the recording gateway under a profiler, e.g.
        // "valgrind --tool=massif --massif-out-file=/tmp/massif.out".
        let wrap = std::env::var("GH_BENCH_WRAP").unwrap_or_default();
        let mut words: Vec<String> = if recording {
            wrap.split_whitespace().map(str::to_string).collect()
        } else {
            Vec::new()
        };
        words.push(gatehouse_bin().display().to_string());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("GATEHOUSE_LOG", "warn")
            .stderr(log)
            .spawn()
            .expect("start gatehouse (build it: cargo build --release -p gatehouse)");
        kit::wait_for_port(port, Duration::from_secs(20)).expect("gateway listening");
        gateways.push(child);
        ports.push(port);
    }
    let gw_pid = gateways[0].id();
    let common = format!(
        "    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
        user.private.display()
    );
    // Three client settings: each cipher with OpenSSH's default key
    // exchange (sntrup761x25519 where both ends have it), and chacha20 with
    // curve25519-sha256 everywhere, the key exchange Gatehouse speaks, so
    // that set-up can be compared like for like.
    for (tag, cipher, kex) in [
        ("chacha20", "chacha20-poly1305@openssh.com", ""),
        ("aes256gcm", "aes256-gcm@openssh.com", ""),
        (
            "curve25519",
            "chacha20-poly1305@openssh.com",
            "curve25519-sha256",
        ),
    ] {
        let mut c = format!("{common}    Ciphers {cipher}\n");
        if !kex.is_empty() {
            c.push_str(&format!("    KexAlgorithms {kex}\n"));
        }
        let text = format!(
            "Host direct\n    HostName 127.0.0.1\n    Port {tp}\n    User {login}\n{c}\
             Host bastion\n    HostName 127.0.0.1\n    Port {bp}\n    User {login}\n{c}\
             Host jump\n    HostName 127.0.0.1\n    Port {tp}\n    User {login}\n    ProxyJump bastion\n{c}\
             Host gatehouse\n    HostName 127.0.0.1\n    Port {gp}\n    User alice:web01\n{c}\
             Host gatehouse-norec\n    HostName 127.0.0.1\n    Port {np}\n    User alice:web01\n{c}",
            tp = target.port,
            bp = bastion.port,
            gp = ports[0],
            np = ports[1],
        );
        std::fs::write(d.join(format!("ssh_config.{tag}")), text).expect("ssh config");
    }
    Setup {
        gw_db: d.join("gw.db"),
        dir,
        target,
        _bastion: bastion,
        gateways,
        gw_pid,
        login,
    }
}

impl Setup {
    fn cfg(&self, cipher: &str) -> PathBuf {
        self.dir.path().join(format!("ssh_config.{cipher}"))
    }

    fn ssh(&self, cipher: &str, host: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(self.cfg(cipher)).arg(host).arg(cmd);
        c
    }

    /// Seconds to run `sh -c script` once.
    fn time_sh(&self, script: &str) -> f64 {
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .expect("sh");
        assert!(status.success(), "benchmark step failed: {script}");
        t.elapsed().as_secs_f64()
    }

    fn bulk(&self, cipher: &str, host: &str, bytes: u64, upload: bool, runs: u64) -> f64 {
        let cfg = self.cfg(cipher);
        let script = if upload {
            format!(
                "head -c {bytes} /dev/zero | ssh -F {} {host} 'cat > /dev/null'",
                cfg.display()
            )
        } else {
            format!(
                "ssh -F {} {host} 'head -c {bytes} /dev/zero' > /dev/null",
                cfg.display()
            )
        };
        let mut rates: Vec<f64> = (0..runs)
            .map(|_| bytes as f64 / self.time_sh(&script) / 1e6)
            .collect();
        median(&mut rates)
    }

    /// `n` downloads of `each` bytes at once through `host`: aggregate
    /// MB/s over the wall time of the slowest.
    fn streams(&self, host: &str, n: u64, each: u64) -> f64 {
        let t = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| {
                self.ssh("aes256gcm", host, &format!("head -c {each} /dev/zero"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("ssh")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("ssh");
            assert!(
                out.status.success(),
                "stream through {host} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (n * each) as f64 / t.elapsed().as_secs_f64() / 1e6
    }

    /// Median wall time of `ssh host true` with the client settings `tag`.
    fn setup_ms(&self, tag: &str, host: &str) -> f64 {
        let mut v: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                let out = self.ssh(tag, host, "true").output().expect("ssh");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        median(&mut v)
    }

    /// Keystroke round trip through a remote pty running `cat` in raw
    /// mode: write one byte, wait for it to come back.
    fn keystroke(&self, host: &str, n: usize) -> (f64, f64) {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(self.cfg("chacha20"))
            .args(["-tt", host, "stty raw -echo; echo ready; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh -tt");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let k = stdout.read(&mut b).expect("read");
            assert!(k > 0, "pty closed");
            seen.extend_from_slice(&b[..k]);
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let byte = b'a' + (i % 26) as u8;
            let t = Instant::now();
            stdin.write_all(&[byte]).expect("write");
            stdin.flush().ok();
            loop {
                let k = stdout.read(&mut b).expect("read");
                assert!(k > 0, "pty closed");
                if b[..k].contains(&byte) {
                    break;
                }
            }
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        (median(&mut samples.clone()), percentile(&mut samples, 0.99))
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// The kernel's clock ticks per second, the unit of /proc/PID/stat's
/// CPU times (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Sessions the recording gateway has started and not yet ended.
fn open_sessions(s: &Setup) -> u64 {
    let out = Command::new(gatehouse_bin())
        .arg("--config")
        .arg(s.dir.path().join("gw.toml"))
        .args([
            "--format",
            "json",
            "audit",
            "query",
            "select count(*) as n from sessions where end_time is null",
        ])
        .output()
        .expect("gatehouse audit query");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["n"].as_u64().unwrap_or(0)
}

/// Idle interactive sessions through the gateway: RSS per session and CPU
/// while idle.
fn idle_sessions(s: &Setup, n: u64) -> (f64, f64) {
    let before = rss_kib(s.gw_pid);
    let mut clients = Vec::new();
    let errs = s.dir.path().join("idle-clients.err");
    // Each session is an ssh client here plus sshd processes on the target:
    // on two cores, starting them faster than they settle overloads the
    // machine, so sessions start in waves and each wave must be open
    // through the gateway before the next one starts.
    const WAVE: u64 = 25;
    let mut open = 0;
    while (clients.len() as u64) < n {
        for _ in 0..WAVE.min(n - clients.len() as u64) {
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&errs)
                .expect("client stderr file");
            let child = Command::new("ssh")
                .arg("-F")
                .arg(s.cfg("chacha20"))
                .args(["-tt", "gatehouse", "exec sleep 600"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("ssh");
            clients.push(child);
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            open = open_sessions(s);
            if open >= clients.len() as u64 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if open < clients.len() as u64 {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    // Every session must really be open, or the per-session figure lies.
    if open != n {
        let e = std::fs::read_to_string(&errs).unwrap_or_default();
        let g = std::fs::read_to_string(s.dir.path().join("gw.log")).unwrap_or_default();
        let head = |t: &str| t.lines().take(12).collect::<Vec<_>>().join("\n");
        eprintln!("clients' stderr:\n{}\ngateway log:\n{}", head(&e), head(&g));
    }
    assert_eq!(
        open, n,
        "only {open} of {n} idle sessions are open through the gateway"
    );
    let rss = rss_kib(s.gw_pid);
    let t0 = cpu_ticks(s.gw_pid);
    std::thread::sleep(Duration::from_secs(10));
    let t1 = cpu_ticks(s.gw_pid);
    let hold = env_u64("GH_BENCH_HOLD", 0);
    if hold > 0 {
        eprintln!(
            "holding {n} idle sessions for {hold} s; gateway pid {} (RSS {rss} KiB)",
            s.gw_pid
        );
        std::thread::sleep(Duration::from_secs(hold));
    }
    for mut c in clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    let per = rss.saturating_sub(before) as f64 / n as f64;
    // Clock ticks are 1/100 s: percent of one core over 10 s.
    let cpu = (t1 - t0) as f64 / 10.0;
    (per, cpu)
}

/// Appends to the audit chain through the store at `url`, as the
/// gateway does.
async fn ingest(url: &str, events: u64) -> (f64, f64, f64) {
    use gatehouse_model::{NewEvent, Outcome, Severity};
    let store = gatehouse_store::Store::open(url).await.expect("store");
    let t = Instant::now();
    for i in 0..events {
        let ev = NewEvent::new("command", Severity::Info, Outcome::Success, "bench")
            .user(format!("user{}", i % 100))
            .details(serde_json::json!({"command": "ls"}));
        store.append(&ev).await.expect("append");
    }
    let sequential = events as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..events / 16 {
                let ev = NewEvent::new("command", Severity::Info, Outcome::Success, "bench")
                    .user(format!("user{}", (i + w) % 100));
                store.append(&ev).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let concurrent = (events / 16 * 16) as f64 / t.elapsed().as_secs_f64();
    // Bulk events in batches of 1000 (see ingest.rs).
    let batched = ingest::timed(&store, ingest::batches()).await;
    (sequential, concurrent, batched)
}

/// A jsonl sink draining 200,000 events already in the store.
async fn sink_throughput() -> f64 {
    use gatehouse_model::{NewEvent, Outcome, Severity};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gatehouse_store::Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .expect("store");
    let total = 200_000u64;
    for _ in 0..total / 1000 {
        let batch: Vec<NewEvent> = (0..1000)
            .map(|i| {
                NewEvent::new("command", Severity::Info, Outcome::Success, "bench")
                    .user(format!("user{i}"))
            })
            .collect();
        store.append_batch(batch).await.expect("append");
    }
    let head = store.head_seq().await.expect("head");
    let cfg = gatehouse_model::SinkConfig {
        name: "bench".into(),
        only_alerts: false,
        kind: gatehouse_model::SinkKind::Jsonl {
            path: dir.path().join("out.jsonl"),
            max_bytes: u64::MAX,
            format: Default::default(),
        },
    };
    let sink = gatehouse_sinks::Sink::new(&cfg).expect("sink");
    let t = Instant::now();
    let task = tokio::spawn(sink.run(store.clone()));
    while store.sink_cursor("bench").await.expect("cursor") < head {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    task.abort();
    rate
}

/// A user-and-time-range query over `rows` events (bulk-loaded).
async fn query_bench(rows: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("q.db");
    let store = gatehouse_store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("store");
    store.close().await;
    let load = format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
         INSERT INTO audit_events (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash)
         SELECT printf('%026d', x), strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + x / 10, 'unixepoch'), 'command', 'info',
                'user' || (x % 1000), '10.0.0.1', 'n1', 's' || (x / 50), 'web01', 'deploy', 0, 'success', NULL,
                '{{\"command\":\"ls\"}}', '', '' FROM c;"
    );
    let status = Command::new("sqlite3")
        .arg(&db)
        .arg(load)
        .status()
        .expect("sqlite3");
    assert!(status.success());
    let store = gatehouse_store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("store");
    let sql = "SELECT time, type, target FROM events WHERE \"user\" = 'user42' AND time >= '2023-11-15T00:00:00Z' AND time < '2023-11-16T00:00:00Z' ORDER BY time";
    let mut v: Vec<f64> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = store.query_readonly(sql).await.expect("query");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(!r.rows.is_empty() || rows < 1_000_000);
    }
    median(&mut v)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("soak") {
        let ok = tokio::task::spawn_blocking(move || soak::run(&args[1..]))
            .await
            .expect("soak");
        std::process::exit(if ok { 0 } else { 1 });
    }
    let bytes = env_u64("GH_BENCH_BYTES", 1 << 30);
    let runs = env_u64("GH_BENCH_RUNS", 3);
    let idle = env_u64("GH_BENCH_IDLE", 1000);
    let events = env_u64("GH_BENCH_EVENTS", 10_000_000);
    let only = std::env::var("GH_BENCH_ONLY").unwrap_or_default();
    let want = |section: &str| only.is_empty() || only.split(',').any(|x| x.trim() == section);
    // Writers on one PostgreSQL chain need no gateway or target.
    if only.trim() == "writers" {
        let (mut table, mut json) = (String::new(), serde_json::Map::new());
        writers::run_all(&mut table, &mut json).await;
        println!("{table}");
        println!("{}", serde_json::Value::Object(json));
        return;
    }
    let s = setup();
    let mut json = serde_json::Map::new();
    let mut table = String::new();
    let row = |table: &mut String, name: &str, d: f64, j: f64, g: f64, unit: &str| {
        table.push_str(&format!(
            "{name:<44} {d:>10.1} {j:>10.1} {g:>10.1} {unit:<6} {:>7.2} {:>7.2}\n",
            g / d,
            g / j
        ));
    };
    table.push_str(&format!(
        "{:<44} {:>10} {:>10} {:>10} {:<6} {:>7} {:>7}\n",
        "measure", "direct", "proxyjump", "gatehouse", "unit", "gh/dir", "gh/pj"
    ));
    // Idle sessions first, on a gateway that has carried no traffic yet:
    // after the bulk sections its allocator holds freed memory that new
    // sessions would reuse, and the per-session figure would come out low.
    if want("idle") {
        let (per_session, cpu) = idle_sessions(&s, idle);
        table.push_str(&format!(
        "{idle} idle sessions: gateway RSS {per_session:.0} KiB/session, CPU while idle {cpu:.1}% of a core\n"
    ));
        json.insert(
            "idle_rss_kib_per_session".into(),
            serde_json::json!(per_session),
        );
        json.insert("idle_cpu_percent".into(), serde_json::json!(cpu));
    }
    for cipher in ["chacha20", "aes256gcm"] {
        if !want("bulk") {
            break;
        }
        for upload in [false, true] {
            let dir = if upload { "upload" } else { "download" };
            let r: Vec<f64> = HOSTS
                .iter()
                .map(|h| s.bulk(cipher, h, bytes, upload, runs))
                .collect();
            let name = format!("bulk {dir} {cipher}");
            row(&mut table, &name, r[0], r[1], r[2], "MB/s");
            json.insert(
                name.replace(' ', "_"),
                serde_json::json!({"direct": r[0], "proxyjump": r[1], "gatehouse": r[2]}),
            );
        }
    }
    if want("setup") {
        for (tag, label, key) in [
            (
                "chacha20",
                "connection setup, default kex (median of 9)",
                "setup_ms",
            ),
            (
                "curve25519",
                "connection setup, curve25519 kex (median of 9)",
                "setup_curve25519_ms",
            ),
        ] {
            let r: Vec<f64> = HOSTS.iter().map(|h| s.setup_ms(tag, h)).collect();
            row(&mut table, label, r[0], r[1], r[2], "ms");
            json.insert(
                key.into(),
                serde_json::json!({"direct": r[0], "proxyjump": r[1], "gatehouse": r[2]}),
            );
        }
    }
    if want("keys") {
        let k: Vec<(f64, f64)> = HOSTS.iter().map(|h| s.keystroke(h, 300)).collect();
        row(
            &mut table,
            "keystroke round trip median",
            k[0].0,
            k[1].0,
            k[2].0,
            "ms",
        );
        row(
            &mut table,
            "keystroke round trip p99",
            k[0].1,
            k[1].1,
            k[2].1,
            "ms",
        );
        json.insert(
            "keystroke_ms".into(),
            serde_json::json!({"direct": k[0], "proxyjump": k[1], "gatehouse": k[2]}),
        );
    }
    if want("recording") {
        // Recording on vs off, same gateway build, same target; the runs
        // alternate on, off, on, off... so that drift in the machine's
        // speed during the section falls on both alike.
        let pty_bytes = (bytes / 16).max(16 << 20);
        let pty_script = |host: &str| {
            format!(
                "ssh -F {} -tt {host} 'head -c {pty_bytes} /dev/urandom | base64 -w 200' > /dev/null",
                s.cfg("chacha20").display()
            )
        };
        let (mut on, mut off, mut pty_on, mut pty_off) = (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            on.push(s.bulk("chacha20", "gatehouse", bytes, false, 1));
            off.push(s.bulk("chacha20", "gatehouse-norec", bytes, false, 1));
        }
        // Each gateway's own CPU time over its pty runs (/proc ticks):
        // steadier than the throughput ratio on a shared 2-core machine,
        // where the client, the target and the gateway take turns.
        let pids = [s.gateways[0].id(), s.gateways[1].id()];
        let mut ticks = [0u64; 2];
        for _ in 0..runs {
            for (k, (host, v)) in [
                ("gatehouse", &mut pty_on),
                ("gatehouse-norec", &mut pty_off),
            ]
            .into_iter()
            .enumerate()
            {
                let before = cpu_ticks(pids[k]);
                v.push(pty_bytes as f64 * 1.35 / s.time_sh(&pty_script(host)) / 1e6);
                ticks[k] += cpu_ticks(pids[k]).saturating_sub(before);
            }
        }
        // CPU ms per MB of terminal output (base64 is 4/3 of the input
        // plus line ends: 1.35).
        let mb = pty_bytes as f64 * 1.35 * runs as f64 / 1e6;
        let tick_ms = 1000.0 / clock_ticks_per_second();
        let cpu = ticks.map(|t| t as f64 * tick_ms / mb);
        let (on, off) = (median(&mut on), median(&mut off));
        let (pty_on, pty_off) = (median(&mut pty_on), median(&mut pty_off));
        table.push_str(&format!(
            "recording on/off, exec stream       {on:>10.1} MB/s vs {off:>8.1} MB/s  ratio {:.3}\n",
            on / off
        ));
        table.push_str(&format!(
        "recording on/off, pty stream        {pty_on:>10.1} MB/s vs {pty_off:>8.1} MB/s  ratio {:.3}\n",
        pty_on / pty_off
    ));
        json.insert("recording_ratio_exec".into(), serde_json::json!(on / off));
        json.insert(
            "recording_ratio_pty".into(),
            serde_json::json!(pty_on / pty_off),
        );
        table.push_str(&format!(
            "recording on/off, pty gateway CPU   {:>10.2} ms/MB vs {:>7.2} ms/MB  ratio {:.3}\n",
            cpu[0],
            cpu[1],
            cpu[0] / cpu[1]
        ));
        json.insert(
            "recording_pty_cpu_ms_per_mb".into(),
            serde_json::json!({"on": cpu[0], "off": cpu[1]}),
        );
    }
    if want("streams") {
        let n = env_u64("GH_BENCH_STREAMS", 100);
        let each = (bytes / 64).max(1 << 20);
        let r: Vec<f64> = HOSTS.iter().map(|h| s.streams(h, n, each)).collect();
        row(
            &mut table,
            &format!("{n} streams at once, aggregate"),
            r[0],
            r[1],
            r[2],
            "MB/s",
        );
        json.insert(
            "streams_aggregate".into(),
            serde_json::json!({"n": n, "bytes_each": each, "direct": r[0], "proxyjump": r[1], "gatehouse": r[2]}),
        );
    }
    if want("burst") {
        burst::run(&s, &mut table, &mut json);
    }
    if want("audit") {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = format!("sqlite://{}/i.db", dir.path().display());
        let (seq, conc, batched) = ingest(&sqlite, 2000).await;
        table.push_str(&format!(
        "audit ingest (SQLite, chain + indexes, fsync per commit): {seq:.0} events/s one writer, {conc:.0} events/s 16 writers (group commit), {batched:.0} events/s in batches of 1000\n"
    ));
        json.insert(
            "ingest_events_per_s".into(),
            serde_json::json!({"sequential": seq, "concurrent16": conc, "batch1000": batched}),
        );
        let name = format!("gh_bench_ingest_{}", std::process::id());
        let (seq, conc, batched) = ingest(&writers::database(&name), 2000).await;
        writers::drop_database(&name);
        table.push_str(&format!(
        "audit ingest (PostgreSQL, same events): {seq:.0} events/s one writer, {conc:.0} events/s 16 writers (group commit), {batched:.0} events/s in batches of 1000\n"
    ));
        json.insert(
            "ingest_postgres_events_per_s".into(),
            serde_json::json!({"sequential": seq, "concurrent16": conc, "batch1000": batched}),
        );
        let sink_rate = sink_throughput().await;
        table.push_str(&format!(
            "sink throughput (jsonl, fsync per batch of 2000): {sink_rate:.0} events/s\n"
        ));
        json.insert("sink_events_per_s".into(), serde_json::json!(sink_rate));
        let q = query_bench(events).await;
        table.push_str(&format!(
            "query by user and day over {events} events: {q:.1} ms\n"
        ));
        json.insert(
            "query_ms".into(),
            serde_json::json!({"rows": events, "ms": q}),
        );
    }
    // Writers on one PostgreSQL chain, only when named (it needs the
    // local PostgreSQL).
    if only.split(',').any(|x| x.trim() == "ingest") {
        ingest::run(env_u64("GH_BENCH_RUNS", 3), &mut table, &mut json).await;
    }
    if only.split(',').any(|x| x.trim() == "writers") {
        writers::run_all(&mut table, &mut json).await;
    }
    // The console's section only when named (it fills a million-session store).
    if only.split(',').any(|x| x.trim() == "console") {
        console::run(&s, &mut table, &mut json).await;
    }
    if only.split(',').any(|x| x.trim() == "nodes") {
        nodes::run(&mut table, &mut json);
    }
    let _ = s.gw_db.exists();
    let _ = s.target.port;
    println!("{table}");
    println!("{}", serde_json::Value::Object(json));
    // SIGTERM, so that a profiler wrapped around a gateway (GH_BENCH_WRAP)
    // sees it exit and writes its report; SIGKILL after 60 s.
    for mut g in s.gateways {
        stop(&mut g, Duration::from_secs(60));
    }
}

/// SIGTERM to `child`, SIGKILL if it has not exited after `grace`.
fn stop(child: &mut std::process::Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
