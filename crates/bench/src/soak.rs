//! `gatehouse-bench soak [--short]` (or `bench/soak.sh`): many mixed
//! sessions through one recording gateway to a real sshd for a bounded
//! time, with the gateway's RSS, file descriptors and threads sampled
//! throughout, then a check that the gateway went back to where it was
//! and that the audit trail holds every session completely.
//!
//! The mix, all real OpenSSH clients on loopback:
//! - typing: `ssh -tt` to the login shell, lines typed a key at a time
//!   with pauses, each checked in the `commands` view;
//! - scp: uploads and downloads of 1–4 MiB, half in legacy mode (`-O`,
//!   `scp` events), half in SFTP mode (`sftp.*` events);
//! - forward: `ssh -L` to a local TCP echo server, several connections
//!   carrying random bytes (`port_forward.open` / `close`);
//! - sftp: batch put, rename, get, rm (`sftp.*` events).
//!
//! Sizes (environment): GH_SOAK_SESSIONS (default 300; 30 with --short),
//! GH_SOAK_SECONDS (load window, default 600; 45), GH_SOAK_CONCURRENCY
//! (default 80; 20), GH_SOAK_SETTLE (seconds between the end of the load
//! and the "after" sample, default 30; 15), GH_SOAK_SEED, GH_SOAK_OUT (a
//! directory to keep samples.csv, events.json and the gateway log in; on
//! failure they are kept in the temp dir regardless).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_testkit::{self as kit, Sshd};

use super::{bench_login, env_u64, gatehouse_bin, open_to_login, rss_kib};

/// After the load has ended and settled, the gateway may hold at most
/// this many more file descriptors than before it (see BENCHMARKS.md,
/// "Soak"): every session holds at least two sockets and a recording
/// file, so a leak of even a few sessions' worth shows.
const MAX_EXTRA_FDS: u64 = 4;
/// ... and no more sockets than before (the listener): every one left
/// over is a user or target connection not closed.
const MAX_EXTRA_SOCKETS: u64 = 0;
/// ... and at most this many more threads (tokio's blocking pool lets an
/// idle thread go after 10 s; the settle time is longer).
const MAX_EXTRA_THREADS: u64 = 2;
/// ... and at most this much more RSS, in KiB: 100 KiB per session run,
/// at least 8 MiB. glibc keeps freed memory in its arenas, up to about the
/// peak working set (which scales with the sessions open at once, not
/// with the sessions run); a leak of each session's state (≥ 140 KiB for
/// an idle one, see "Idle memory profile") scales with the sessions run
/// and would exceed the bound. Smaller leaks show only in the samples
/// (see BENCHMARKS.md, "Soak").
fn max_extra_rss_kib(n: usize) -> u64 {
    (n as u64 * 100).max(8 * 1024)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Typing,
    ScpUp,
    ScpDown,
    Forward,
    Sftp,
}

impl Kind {
    fn name(self, legacy: bool) -> &'static str {
        match (self, legacy) {
            (Kind::Typing, _) => "typing",
            (Kind::ScpUp, true) => "scp-O upload",
            (Kind::ScpUp, false) => "scp upload",
            (Kind::ScpDown, true) => "scp-O download",
            (Kind::ScpDown, false) => "scp download",
            (Kind::Forward, _) => "forward",
            (Kind::Sftp, _) => "sftp batch",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    id: usize,
    kind: Kind,
    /// scp in legacy mode (`-O`).
    legacy: bool,
    /// Offset of the start from the start of the load.
    start: Duration,
    /// How long typing and forward sessions last.
    budget: Duration,
    seed: u64,
}

/// xorshift64*: deterministic plans without another dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// lo..=hi
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn tag(id: usize) -> String {
    format!("soak{id:04}")
}

/// What the trail must show for one session that ran.
#[derive(Debug)]
enum Expect {
    Typing {
        lines: Vec<String>,
    },
    Scp {
        upload: bool,
        legacy: bool,
        size: u64,
    },
    Forward {
        command: String,
        sizes: Vec<u64>,
    },
    Sftp {
        size: u64,
    },
}

struct Outcome {
    plan: Plan,
    result: Result<Expect, String>,
    secs: f64,
}

struct Ctx {
    ssh_config: PathBuf,
    /// Directory on the target (same machine) the login writes to.
    remote: PathBuf,
    /// The driver's own files.
    local: PathBuf,
    echo_port: u16,
    /// Local ports for `ssh -L`, one per session: 20000 + id.
    forward_base: u16,
}

impl Ctx {
    fn ssh(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-F").arg(&self.ssh_config).env("TERM", "xterm");
        c
    }

    fn stderr_file(&self, id: usize) -> std::fs::File {
        std::fs::File::create(self.local.join(format!("{}.err", tag(id)))).expect("stderr file")
    }

    fn stderr_of(&self, id: usize) -> String {
        let s = std::fs::read_to_string(self.local.join(format!("{}.err", tag(id))))
            .unwrap_or_default();
        s.trim().lines().take(5).collect::<Vec<_>>().join(" | ")
    }
}

/// Waits for `child` at most `timeout`; kills it after.
fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {timeout:?}; killed"));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// A child's stdout collected by a thread.
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn start(mut out: impl Read + Send + 'static) -> Collected {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(k) = out.read(&mut chunk) {
                if k == 0 {
                    break;
                }
                b.lock().expect("lock").extend_from_slice(&chunk[..k]);
            }
        });
        Collected(buf)
    }

    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// Waits until `needle` appears after byte `from`.
    fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let b = self.0.lock().expect("lock");
                let tail = &b[from.min(b.len())..];
                if tail.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let t = String::from_utf8_lossy(&b[b.len().saturating_sub(200)..]);
                    return Err(format!(
                        "no {needle:?} after {timeout:?}; output ends {t:?}"
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const PAYLOADS: [&str; 10] = [
    "uname -a",
    "ls -la /",
    "seq 1 2000",
    "id",
    "date",
    "head -n 3 /etc/os-release",
    "true",
    "pwd",
    "echo $HOME",
    "ls /usr/bin | wc -l",
];

fn typing(ctx: &Ctx, p: &Plan, rng: &mut Rng) -> Result<Expect, String> {
    let t = tag(p.id);
    let n = rng.range(5, 10) as usize;
    let lines: Vec<String> = (0..n)
        .map(|k| {
            let payload = PAYLOADS[rng.range(0, PAYLOADS.len() as u64 - 1) as usize];
            format!("{payload}; echo {t}-{k}-$((40+2))")
        })
        .collect();
    let chars: usize = lines.iter().map(|l| l.len() + 1).sum();
    // A fifth of the session is typing (at most 40 ms a key), the rest
    // pauses between lines.
    let key = (p.budget.mul_f64(0.2) / chars as u32).min(Duration::from_millis(40));
    let pause = p.budget.mul_f64(0.8) / n as u32;
    let mut child = ctx
        .ssh("ssh")
        .args(["-tt", "gatehouse"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(ctx.stderr_file(p.id))
        .spawn()
        .map_err(|e| format!("ssh: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let out = Collected::start(child.stdout.take().expect("stdout"));
    let mut run = || -> Result<(), String> {
        out.wait_for(0, "$ ", Duration::from_secs(60))?;
        for (k, line) in lines.iter().enumerate() {
            std::thread::sleep(pause);
            let mark = out.len();
            for b in line.bytes().chain(std::iter::once(b'\r')) {
                stdin.write_all(&[b]).map_err(|e| format!("type: {e}"))?;
                std::thread::sleep(key);
            }
            out.wait_for(mark, &format!("{t}-{k}-42"), Duration::from_secs(60))?;
        }
        stdin
            .write_all(b"exit\r")
            .map_err(|e| format!("type: {e}"))?;
        Ok(())
    };
    let typed = run();
    let mut lines = lines;
    lines.push("exit".into());
    if typed.is_err() {
        let _ = child.kill();
    }
    let status = wait_child(&mut child, Duration::from_secs(60));
    drop(stdin);
    typed?;
    let status = status?;
    if !status.success() {
        return Err(format!("ssh -tt exited {status}: {}", ctx.stderr_of(p.id)));
    }
    Ok(Expect::Typing { lines })
}

fn scp(ctx: &Ctx, p: &Plan, rng: &mut Rng, upload: bool) -> Result<Expect, String> {
    let t = tag(p.id);
    let size = rng.range(1 << 20, 4 << 20);
    let data = rng.bytes(size as usize);
    let remote = ctx.remote.join(format!("{t}.bin"));
    let local = ctx.local.join(format!("{t}.bin"));
    if upload {
        std::fs::write(&local, &data).map_err(|e| e.to_string())?;
    } else {
        std::fs::write(&remote, &data).map_err(|e| e.to_string())?;
    }
    let remote_arg = format!("gatehouse:{}", remote.display());
    let mut c = ctx.ssh("scp");
    c.arg("-q");
    if p.legacy {
        c.arg("-O");
    }
    if upload {
        c.arg(&local).arg(&remote_arg);
    } else {
        c.arg(&remote_arg).arg(&local);
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(ctx.stderr_file(p.id))
        .spawn()
        .map_err(|e| format!("scp: {e}"))?;
    let status = wait_child(&mut child, Duration::from_secs(120))?;
    if !status.success() {
        return Err(format!("scp exited {status}: {}", ctx.stderr_of(p.id)));
    }
    let got = std::fs::read(if upload { &remote } else { &local }).map_err(|e| e.to_string())?;
    if got != data {
        return Err(format!(
            "copy differs ({} bytes, {} expected)",
            got.len(),
            data.len()
        ));
    }
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_file(&remote);
    Ok(Expect::Scp {
        upload,
        legacy: p.legacy,
        size,
    })
}

fn echo_round(port: u16, data: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect -L: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let back = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            for chunk in data.chunks(16 * 1024) {
                w.write_all(chunk)?;
            }
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::with_capacity(data.len());
        let r = s.read_to_end(&mut back);
        let w = writer.join().expect("writer");
        r.and(w).map(|_| back)
    })
    .map_err(|e| format!("through -L: {e}"))?;
    if back != data {
        return Err(format!(
            "echo through the forward differs ({} of {} bytes)",
            back.len(),
            data.len()
        ));
    }
    Ok(())
}

fn forward(ctx: &Ctx, p: &Plan, rng: &mut Rng) -> Result<Expect, String> {
    let t = tag(p.id);
    let lport = ctx.forward_base + p.id as u16;
    let command = format!("echo {t}-fwd-ready; read x; echo {t}-fwd-bye");
    let mut child = ctx
        .ssh("ssh")
        .args(["-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("{lport}:127.0.0.1:{}", ctx.echo_port))
        .arg("gatehouse")
        .arg(&command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(ctx.stderr_file(p.id))
        .spawn()
        .map_err(|e| format!("ssh -L: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let out = Collected::start(child.stdout.take().expect("stdout"));
    let m = rng.range(2, 5) as usize;
    let sizes: Vec<u64> = (0..m).map(|_| rng.range(1, 1 << 20)).collect();
    let pause = p.budget / m as u32;
    let mut run = || -> Result<(), String> {
        out.wait_for(0, &format!("{t}-fwd-ready"), Duration::from_secs(60))?;
        for &size in &sizes {
            std::thread::sleep(pause);
            echo_round(lport, &rng.bytes(size as usize))?;
        }
        stdin
            .write_all(b"done\n")
            .map_err(|e| format!("stdin: {e}"))?;
        out.wait_for(0, &format!("{t}-fwd-bye"), Duration::from_secs(60))
    };
    let r = run();
    if r.is_err() {
        let _ = child.kill();
    }
    drop(stdin);
    let status = wait_child(&mut child, Duration::from_secs(60));
    r.map_err(|e| format!("{e}; ssh: {}", ctx.stderr_of(p.id)))?;
    let status = status?;
    if !status.success() {
        return Err(format!("ssh -L exited {status}: {}", ctx.stderr_of(p.id)));
    }
    Ok(Expect::Forward { command, sizes })
}

fn sftp(ctx: &Ctx, p: &Plan, rng: &mut Rng) -> Result<Expect, String> {
    let t = tag(p.id);
    let size = rng.range(1 << 20, 4 << 20);
    let data = rng.bytes(size as usize);
    let local = ctx.local.join(format!("{t}.bin"));
    let back = ctx.local.join(format!("{t}-back.bin"));
    std::fs::write(&local, &data).map_err(|e| e.to_string())?;
    let r = ctx.remote.display();
    let batch = format!(
        "put {l} {r}/{t}-a.bin\nrename {r}/{t}-a.bin {r}/{t}-b.bin\nget {r}/{t}-b.bin {b}\nrm {r}/{t}-b.bin\n",
        l = local.display(),
        b = back.display()
    );
    let batch_file = ctx.local.join(format!("{t}.batch"));
    std::fs::write(&batch_file, batch).map_err(|e| e.to_string())?;
    let mut child = ctx
        .ssh("sftp")
        .arg("-q")
        .arg("-b")
        .arg(&batch_file)
        .arg("gatehouse")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(ctx.stderr_file(p.id))
        .spawn()
        .map_err(|e| format!("sftp: {e}"))?;
    let status = wait_child(&mut child, Duration::from_secs(120))?;
    if !status.success() {
        return Err(format!("sftp exited {status}: {}", ctx.stderr_of(p.id)));
    }
    let got = std::fs::read(&back).map_err(|e| e.to_string())?;
    if got != data {
        return Err("sftp get differs from what was put".into());
    }
    if ctx.remote.join(format!("{t}-b.bin")).exists() {
        return Err("sftp rm left the file".into());
    }
    for f in [&local, &back, &batch_file] {
        let _ = std::fs::remove_file(f);
    }
    Ok(Expect::Sftp { size })
}

fn run_session(ctx: &Ctx, p: Plan) -> Outcome {
    let t = Instant::now();
    let mut rng = Rng::new(p.seed);
    let result = match p.kind {
        Kind::Typing => typing(ctx, &p, &mut rng),
        Kind::ScpUp => scp(ctx, &p, &mut rng, true),
        Kind::ScpDown => scp(ctx, &p, &mut rng, false),
        Kind::Forward => forward(ctx, &p, &mut rng),
        Kind::Sftp => sftp(ctx, &p, &mut rng),
    };
    Outcome {
        plan: p,
        result,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// 40 % typing, 20 % scp (up and down, legacy and SFTP mode), 20 %
/// forwards, 20 % sftp batches; starts spread evenly over the first 80 %
/// of the window, typing and forwards lasting 15–40 % and 5–20 % of it,
/// cut so that every session ends inside the window.
fn plans(n: usize, window: Duration, seed: u64) -> Vec<Plan> {
    let mut rng = Rng::new(seed);
    let spread = window.mul_f64(0.8);
    (0..n)
        .map(|id| {
            let kind = match id % 10 {
                0 | 2 | 5 | 7 => Kind::Typing,
                1 => Kind::ScpUp,
                6 => Kind::ScpDown,
                3 | 8 => Kind::Forward,
                _ => Kind::Sftp,
            };
            let start = spread.mul_f64(id as f64 / n as f64);
            let frac = match kind {
                Kind::Typing => 0.15 + 0.25 * rng.unit(),
                Kind::Forward => 0.05 + 0.15 * rng.unit(),
                _ => 0.0,
            };
            let left = window.saturating_sub(start).mul_f64(0.9);
            Plan {
                id,
                kind,
                legacy: (id / 10) % 2 == 0,
                start,
                budget: window.mul_f64(frac).min(left),
                seed: rng.next(),
            }
        })
        .collect()
}

#[derive(Clone, Copy, Default, Debug)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
    sockets: u64,
    threads: u64,
    /// Sessions open in the `sessions` view (u64::MAX: query failed).
    active: u64,
    /// Sessions the driver has running.
    inflight: usize,
    /// The target sshd's children (one per open connection).
    target_conns: u64,
}

fn proc_status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> (u64, u64) {
    let mut all = 0;
    let mut sockets = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            all += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    (all, sockets)
}

fn children_of(pid: u32) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(p) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if proc_status_field(p, "PPid:") == pid as u64 {
                n += 1;
            }
        }
    }
    n
}

struct Gateway {
    child: Child,
    view: GwView,
    log: PathBuf,
}

/// What the sampler needs: the process and its config (for queries).
#[derive(Clone)]
struct GwView {
    pid: u32,
    config: PathBuf,
}

impl GwView {
    fn query(&self, sql: &str) -> Result<Vec<serde_json::Value>, String> {
        let out = Command::new(gatehouse_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--format", "json", "audit", "query", sql])
            .output()
            .map_err(|e| format!("gatehouse audit query: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "gatehouse audit query failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("query output: {e}"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    fn active(&self) -> u64 {
        self.query("select count(*) as n from sessions where active = 1")
            .ok()
            .and_then(|r| r.first().and_then(|x| x["n"].as_u64()))
            .unwrap_or(u64::MAX)
    }

    fn sample(&self, t0: Instant, inflight: usize, target_pid: u32) -> Sample {
        let (fds, sockets) = fds(self.pid);
        Sample {
            t: t0.elapsed().as_secs_f64(),
            rss_kib: rss_kib(self.pid),
            fds,
            sockets,
            threads: proc_status_field(self.pid, "Threads:"),
            active: self.active(),
            inflight,
            target_conns: children_of(target_pid),
        }
    }
}

fn start_gateway(d: &Path, target: &Sshd, login: &str, user_pub: &str) -> Gateway {
    let port = kit::free_port();
    // per_source_max_startups: every client comes from 127.0.0.1, and up
    // to GH_SOAK_CONCURRENCY of them may be in their handshake at once.
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
host_key = "host_ed25519"
max_startups = 1000
per_source_max_startups = 1000
max_connections_per_user = 1000
[upstream]
key = "client_ed25519"
[store]
url = "sqlite://soak.db"
[recording]
dir = "soak-recordings"
enabled = true
[[targets]]
name = "web01"
address = "{addr}"
host_key = "{fp}"
default_login = "{login}"
[[roles]]
name = "all"
port_forwarding = true
allow = [{{ targets = {{}}, logins = ["*"] }}]
[[users]]
name = "alice"
keys = ["{user_pub}"]
roles = ["all"]
"#,
        addr = target.address(),
        fp = target.host_key_fingerprint,
    );
    let config = d.join("soak.toml");
    std::fs::write(&config, cfg).expect("write gateway config");
    let log = d.join("gateway.log");
    let child = Command::new(gatehouse_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("GATEHOUSE_LOG", "warn")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start gatehouse (build it: cargo build --release -p gatehouse)");
    kit::wait_for_port(port, Duration::from_secs(20)).expect("gateway listening");
    let text = format!(
        "Host gatehouse\n    HostName 127.0.0.1\n    Port {port}\n    User alice:web01\n    IdentityFile {key}\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
        key = d.join("user").display()
    );
    std::fs::write(d.join("ssh_config"), text).expect("ssh config");
    Gateway {
        view: GwView {
            pid: child.id(),
            config,
        },
        child,
        log,
    }
}

fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("echo listener");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Every event of the run, with the driver sessions it names.
struct Trail {
    /// session_id → (type, result, details) in order.
    by_session: BTreeMap<String, Vec<(String, String, serde_json::Value)>>,
    /// tag → session ids whose events name it.
    by_tag: HashMap<String, Vec<String>>,
    /// session_id → interactive/exec commands (commands view).
    commands: HashMap<String, Vec<(String, String)>>,
    type_counts: BTreeMap<String, u64>,
}

fn tags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("soak") {
        let s = i + pos + 4;
        if s + 4 <= b.len()
            && b[s..s + 4].iter().all(u8::is_ascii_digit)
            && b.get(s + 4).is_none_or(|c| !c.is_ascii_digit())
        {
            let t = text[s - 4..s + 4].to_string();
            if !out.contains(&t) {
                out.push(t);
            }
        }
        i = s;
    }
    out
}

fn load_trail(gw: &GwView) -> Result<(Trail, Vec<serde_json::Value>), String> {
    let rows =
        gw.query("select seq, session_id, type, result, reason, details from events order by seq")?;
    let mut by_session: BTreeMap<String, Vec<(String, String, serde_json::Value)>> =
        BTreeMap::new();
    let mut type_counts = BTreeMap::new();
    for r in &rows {
        let ty = r["type"].as_str().unwrap_or("").to_string();
        *type_counts.entry(ty.clone()).or_insert(0) += 1;
        let Some(sid) = r["session_id"].as_str() else {
            continue;
        };
        let details = match &r["details"] {
            serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
            v => v.clone(),
        };
        by_session.entry(sid.to_string()).or_default().push((
            ty,
            r["result"].as_str().unwrap_or("").to_string(),
            details,
        ));
    }
    let mut by_tag: HashMap<String, Vec<String>> = HashMap::new();
    for (sid, evs) in &by_session {
        let mut tags = Vec::new();
        for (_, _, d) in evs {
            for t in tags_in(&d.to_string()) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        for t in tags {
            by_tag.entry(t).or_default().push(sid.clone());
        }
    }
    let mut commands: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in gw.query("select session_id, command, source from commands order by time, id")? {
        if let Some(sid) = r["session_id"].as_str() {
            commands.entry(sid.to_string()).or_default().push((
                r["command"].as_str().unwrap_or("").to_string(),
                r["source"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    Ok((
        Trail {
            by_session,
            by_tag,
            commands,
            type_counts,
        },
        rows,
    ))
}

/// What is missing from the trail for one session that ran.
fn check_session(trail: &Trail, o: &Outcome, expect: &Expect) -> Vec<String> {
    let t = tag(o.plan.id);
    let mut bad = Vec::new();
    let sids = trail.by_tag.get(&t).cloned().unwrap_or_default();
    let sid = match sids.as_slice() {
        [one] => one.clone(),
        [] => return vec!["no event names it".into()],
        many => return vec![format!("named by {} sessions: {many:?}", many.len())],
    };
    let evs = &trail.by_session[&sid];
    let count = |ty: &str| evs.iter().filter(|e| e.0 == ty).count();
    let with = |ty: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        evs.iter().any(|e| e.0 == ty && e.1 == "success" && f(&e.2))
    };
    for ty in ["session.start", "session.end"] {
        if count(ty) != 1 {
            bad.push(format!("{} {ty} events in {sid}", count(ty)));
        }
    }
    let path_has =
        |d: &serde_json::Value, s: &str| d["path"].as_str().is_some_and(|p| p.contains(s));
    match expect {
        Expect::Typing { lines } => {
            let got: Vec<&str> = trail
                .commands
                .get(&sid)
                .map(|v| {
                    v.iter()
                        .filter(|c| c.1 == "interactive")
                        .map(|c| c.0.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let want: Vec<&str> = lines.iter().map(String::as_str).collect();
            if got != want {
                let missing: Vec<&&str> = want.iter().filter(|l| !got.contains(l)).collect();
                let extra: Vec<&&str> = got.iter().filter(|l| !want.contains(l)).collect();
                bad.push(format!(
                    "commands view: {} of {} typed lines; missing {missing:?}, unexpected {extra:?}",
                    got.len(),
                    want.len()
                ));
            }
        }
        Expect::Scp {
            upload,
            legacy: true,
            size,
        } => {
            let dir = if *upload { "upload" } else { "download" };
            if !with("scp", &|d| {
                d["direction"] == dir && d["size"].as_u64() == Some(*size) && path_has(d, &t)
            }) {
                bad.push(format!("no scp event ({dir}, {size} bytes)"));
            }
        }
        Expect::Scp {
            upload,
            legacy: false,
            size,
        } => {
            let field = if *upload {
                "bytes_written"
            } else {
                "bytes_read"
            };
            if !with("sftp.close", &|d| {
                d[field].as_u64() == Some(*size) && path_has(d, &t)
            }) {
                bad.push(format!("no sftp.close with {field} = {size}"));
            }
        }
        Expect::Sftp { size } => {
            let a = format!("{t}-a.bin");
            let b = format!("{t}-b.bin");
            if !with("sftp.close", &|d| {
                d["bytes_written"].as_u64() == Some(*size) && path_has(d, &a)
            }) {
                bad.push(format!("no sftp.close of the put ({size} bytes written)"));
            }
            if !with("sftp.rename", &|d| {
                path_has(d, &a) && d["target_path"].as_str().is_some_and(|p| p.contains(&b))
            }) {
                bad.push("no sftp.rename".into());
            }
            if !with("sftp.close", &|d| {
                d["bytes_read"].as_u64() == Some(*size) && path_has(d, &b)
            }) {
                bad.push(format!("no sftp.close of the get ({size} bytes read)"));
            }
            if !with("sftp.remove", &|d| path_has(d, &b)) {
                bad.push("no sftp.remove".into());
            }
        }
        Expect::Forward { command, sizes } => {
            let cmds = trail.commands.get(&sid).cloned().unwrap_or_default();
            if !cmds.iter().any(|c| c.0 == *command && c.1 == "exec") {
                bad.push(format!("commands view lacks {command:?}"));
            }
            let opens = count("port_forward.open");
            let closes: Vec<&serde_json::Value> = evs
                .iter()
                .filter(|e| e.0 == "port_forward.close")
                .map(|e| &e.2)
                .collect();
            let ok_closes = evs
                .iter()
                .filter(|e| e.0 == "port_forward.close" && e.1 == "success")
                .count();
            if opens != sizes.len() || ok_closes != sizes.len() || closes.len() != sizes.len() {
                bad.push(format!(
                    "{} connections: {opens} port_forward.open, {} port_forward.close ({ok_closes} success)",
                    sizes.len(),
                    closes.len()
                ));
            }
            let total: u64 = sizes.iter().sum();
            let sum = |f: &str| closes.iter().filter_map(|d| d[f].as_u64()).sum::<u64>();
            if closes.len() == sizes.len()
                && (sum("bytes_in") != total || sum("bytes_out") != total)
            {
                bad.push(format!(
                    "port_forward.close bytes in/out {}/{} for {total} echoed",
                    sum("bytes_in"),
                    sum("bytes_out")
                ));
            }
        }
    }
    bad
}

fn verify(gw: &GwView) -> Result<String, String> {
    let out = Command::new(gatehouse_bin())
        .arg("--config")
        .arg(&gw.config)
        .args(["audit", "verify", "--recordings"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim().to_string())
    } else {
        Err(text.trim().to_string())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the soak; true when everything held.
pub fn run(args: &[String]) -> bool {
    let short = args.iter().any(|a| a == "--short");
    let n = env_u64("GH_SOAK_SESSIONS", if short { 30 } else { 300 }) as usize;
    let window = Duration::from_secs(env_u64("GH_SOAK_SECONDS", if short { 45 } else { 600 }));
    let cap = env_u64("GH_SOAK_CONCURRENCY", if short { 20 } else { 80 }) as usize;
    let settle = Duration::from_secs(env_u64("GH_SOAK_SETTLE", if short { 15 } else { 30 }));
    let seed = env_u64("GH_SOAK_SEED", 20261130);
    let every = Duration::from_secs(if short { 1 } else { 2 });
    assert!(n <= 9000, "GH_SOAK_SESSIONS is at most 9000");
    let wall = Instant::now();

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let user = kit::keygen(d, "user").expect("keygen");
    let upstream = kit::keygen(d, "client_ed25519").expect("keygen");
    kit::keygen(d, "host_ed25519").expect("keygen");
    let login = bench_login();
    let target = Sshd::start(std::slice::from_ref(&upstream.public_line)).expect("target sshd");
    open_to_login(&target);
    let target_pid = target.pid();
    let gw = start_gateway(d, &target, &login, &user.public_line);
    // A directory on the target the login may write to (the target is
    // this machine), outside the temp dir, which only root may enter.
    let remote = PathBuf::from(format!("/tmp/gatehouse-soak-{}", std::process::id()));
    std::fs::create_dir_all(&remote).expect("remote dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&remote, std::fs::Permissions::from_mode(0o777))
            .expect("chmod remote dir");
    }
    let local = d.join("work");
    std::fs::create_dir(&local).expect("work dir");
    // Local forward ports 20000 + id, below Linux's ephemeral range, so
    // that no client's own connection takes one.
    let forward_base = 20000u16;
    for p in plans(n + 5, window, seed)
        .iter()
        .filter(|p| p.kind == Kind::Forward)
    {
        TcpListener::bind(("127.0.0.1", forward_base + p.id as u16))
            .unwrap_or_else(|e| panic!("port {} is taken: {e}", forward_base + p.id as u16));
    }
    let ctx = Arc::new(Ctx {
        ssh_config: d.join("ssh_config"),
        remote: remote.clone(),
        local,
        echo_port: echo_server(),
        forward_base,
    });

    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let fresh = gw.view.sample(t0, 0, target_pid);

    // Warm-up: one session of each kind (ids n..n+5), so that what the
    // gateway sets up once (store connections, thread pools, the
    // recording directory) is in the baseline, not counted as growth.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let warm_kinds = [
        (Kind::Typing, false),
        (Kind::ScpUp, true),
        (Kind::ScpDown, false),
        (Kind::Forward, false),
        (Kind::Sftp, false),
    ];
    std::thread::scope(|s| {
        let hs: Vec<_> = warm_kinds
            .iter()
            .enumerate()
            .map(|(k, &(kind, legacy))| {
                let ctx = ctx.clone();
                s.spawn(move || {
                    run_session(
                        &ctx,
                        Plan {
                            id: n + k,
                            kind,
                            legacy,
                            start: Duration::ZERO,
                            budget: Duration::from_secs(3),
                            seed: seed ^ (k as u64 + 1),
                        },
                    )
                })
            })
            .collect();
        for h in hs {
            outcomes.push(h.join().expect("warm-up session"));
        }
    });
    std::thread::sleep(Duration::from_secs(12));
    let before = gw.view.sample(t0, 0, target_pid);

    // The sampler.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(vec![fresh, before]));
    let stop = Arc::new(AtomicBool::new(false));
    let inflight = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let samples = samples.clone();
        let stop = stop.clone();
        let inflight = inflight.clone();
        let view = gw.view.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let next = Instant::now() + every;
                let s = view.sample(t0, inflight.load(Ordering::Relaxed), target_pid);
                samples.lock().expect("lock").push(s);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };

    println!(
        "soak: {n} sessions over {}s, at most {cap} at once; gateway pid {}; seed {seed}",
        window.as_secs(),
        gw.view.pid
    );
    let load_start = Instant::now();
    let load_t0 = t0.elapsed().as_secs_f64();
    let mut handles = Vec::new();
    let mut peak_inflight = 0;
    for p in plans(n, window, seed) {
        if let Some(wait) = p.start.checked_sub(load_start.elapsed()) {
            std::thread::sleep(wait);
        }
        while inflight.load(Ordering::SeqCst) >= cap {
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
        peak_inflight = peak_inflight.max(now);
        let ctx = ctx.clone();
        let inflight = inflight.clone();
        handles.push(std::thread::spawn(move || {
            let o = run_session(&ctx, p);
            if let Err(e) = &o.result {
                eprintln!("session {} ({}): {e}", tag(p.id), p.kind.name(p.legacy));
            }
            inflight.fetch_sub(1, Ordering::SeqCst);
            o
        }));
    }
    for h in handles {
        outcomes.push(h.join().expect("session thread"));
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let load_t1 = t0.elapsed().as_secs_f64();
    println!(
        "soak: load done in {load_secs:.0}s; settling {}s",
        settle.as_secs()
    );
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let after = gw.view.sample(t0, 0, target_pid);
    let samples = {
        let mut s = samples.lock().expect("lock").clone();
        s.push(after);
        s
    };
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= load_t0 && s.t <= load_t1)
        .collect();
    let peak = Sample {
        t: 0.0,
        rss_kib: during.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        fds: during.iter().map(|s| s.fds).max().unwrap_or(0),
        sockets: during.iter().map(|s| s.sockets).max().unwrap_or(0),
        threads: during.iter().map(|s| s.threads).max().unwrap_or(0),
        active: during
            .iter()
            .map(|s| s.active)
            .filter(|&a| a != u64::MAX)
            .max()
            .unwrap_or(0),
        inflight: peak_inflight,
        target_conns: during.iter().map(|s| s.target_conns).max().unwrap_or(0),
    };

    // Completeness.
    let mut failures: Vec<String> = Vec::new();
    let mut by_kind: BTreeMap<&str, (u64, u64, f64)> = BTreeMap::new();
    for o in &outcomes {
        let e = by_kind
            .entry(o.plan.kind.name(o.plan.legacy))
            .or_insert((0, 0, 0.0));
        e.0 += 1;
        e.2 += o.secs;
        if o.result.is_ok() {
            e.1 += 1;
        }
        if let Err(err) = &o.result {
            failures.push(format!(
                "{} ({}) failed on the client side: {err}",
                tag(o.plan.id),
                o.plan.kind.name(o.plan.legacy)
            ));
        }
    }
    let (trail, rows) = match load_trail(&gw.view) {
        Ok(t) => t,
        Err(e) => {
            failures.push(e);
            (
                Trail {
                    by_session: BTreeMap::new(),
                    by_tag: HashMap::new(),
                    commands: HashMap::new(),
                    type_counts: BTreeMap::new(),
                },
                Vec::new(),
            )
        }
    };
    let mut incomplete_by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for o in &outcomes {
        if let Ok(expect) = &o.result {
            let bad = check_session(&trail, o, expect);
            if !bad.is_empty() {
                *incomplete_by_kind
                    .entry(o.plan.kind.name(o.plan.legacy))
                    .or_insert(0) += 1;
                failures.push(format!(
                    "{} ({}): {}",
                    tag(o.plan.id),
                    o.plan.kind.name(o.plan.legacy),
                    bad.join("; ")
                ));
            }
        }
    }
    let total = outcomes.len() as u64;
    let starts = trail.type_counts.get("session.start").copied().unwrap_or(0);
    let ends = trail.type_counts.get("session.end").copied().unwrap_or(0);
    if starts != total || ends != total {
        failures.push(format!(
            "{total} sessions ran; the trail holds {starts} session.start and {ends} session.end"
        ));
    }
    let unnamed: Vec<&String> = trail
        .by_session
        .iter()
        .filter(|(_, evs)| {
            !evs.iter()
                .any(|(_, _, d)| !tags_in(&d.to_string()).is_empty())
        })
        .map(|(sid, _)| sid)
        .collect();
    if !unnamed.is_empty() {
        failures.push(format!(
            "{} sessions in the trail name no driver session: {:?}",
            unnamed.len(),
            unnamed.iter().take(5).collect::<Vec<_>>()
        ));
    }
    for bad in [
        "recording.failed",
        "session.killed",
        "target.unreachable",
        "auth.failure",
        "access.denied",
        "source.flood",
        "gateway.recovered",
    ] {
        if let Some(c) = trail.type_counts.get(bad) {
            failures.push(format!("{c} {bad} events"));
        }
    }
    let verified = verify(&gw.view);
    if let Err(e) = &verified {
        failures.push(format!("gatehouse audit verify --recordings failed: {e}"));
    }

    // Flat after the load.
    let rss_growth = peak.rss_kib.saturating_sub(before.rss_kib);
    let rss_limit = max_extra_rss_kib(n);
    let limits = [
        ("RSS KiB", after.rss_kib, before.rss_kib, rss_limit),
        ("fds", after.fds, before.fds, MAX_EXTRA_FDS),
        ("sockets", after.sockets, before.sockets, MAX_EXTRA_SOCKETS),
        ("threads", after.threads, before.threads, MAX_EXTRA_THREADS),
    ];
    for (what, a, b, extra) in limits {
        if a > b + extra {
            failures.push(format!(
                "{what} after the load {a} > before {b} + {extra} allowed"
            ));
        }
    }
    if after.active != 0 {
        failures.push(format!(
            "{} sessions still active in the sessions view after the load",
            after.active
        ));
    }
    if after.target_conns != 0 {
        failures.push(format!(
            "{} connections still open at the target after the load",
            after.target_conns
        ));
    }
    let gw_log = std::fs::read_to_string(&gw.log).unwrap_or_default();
    let log_lines: Vec<&str> = gw_log.lines().collect();

    // Report.
    let row = |name: &str, s: &Sample| {
        format!(
            "{name:<22} {:>9.1} {:>6} {:>8} {:>8} {:>7} {:>9}\n",
            mib(s.rss_kib),
            s.fds,
            s.sockets,
            s.threads,
            if s.active == u64::MAX {
                "?".to_string()
            } else {
                s.active.to_string()
            },
            s.target_conns
        )
    };
    let mut report = format!(
        "{:<22} {:>9} {:>6} {:>8} {:>8} {:>7} {:>9}\n",
        "gateway", "RSS MiB", "fds", "sockets", "threads", "active", "target"
    );
    report.push_str(&row("fresh (no traffic)", &fresh));
    report.push_str(&row("before (after warm-up)", &before));
    report.push_str(&row("peak during the load", &peak));
    report.push_str(&row(
        &format!("{}s after the load", settle.as_secs()),
        &after,
    ));
    report.push_str(&format!(
        "after - before: RSS {:+.1} MiB ({:.1} KiB per session run; peak - before {:.1} MiB); allowed RSS {:.1} MiB, fds {MAX_EXTRA_FDS}, sockets {MAX_EXTRA_SOCKETS}, threads {MAX_EXTRA_THREADS}\n",
        (after.rss_kib as f64 - before.rss_kib as f64) / 1024.0,
        (after.rss_kib as f64 - before.rss_kib as f64) / n as f64,
        mib(rss_growth),
        mib(rss_limit),
    ));
    report.push_str(&format!(
        "driver: {} sessions (+5 warm-up), peak {peak_inflight} at once, load {load_secs:.0}s\n",
        n
    ));
    for (k, (count, ok, secs)) in &by_kind {
        report.push_str(&format!(
            "  {k:<15} {count:>4} ran, {ok:>4} ok on the client, {:>6.1}s mean, {} incomplete in the trail\n",
            secs / *count as f64,
            incomplete_by_kind.get(k).copied().unwrap_or(0)
        ));
    }
    report.push_str(&format!(
        "trail: {} events: {}\n",
        rows.len(),
        trail
            .type_counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.push_str(&format!(
        "audit verify --recordings: {}\n",
        match &verified {
            Ok(t) | Err(t) => t.lines().last().unwrap_or(""),
        }
    ));
    report.push_str(&format!(
        "gateway log: {} lines at warn or above{}\n",
        log_lines.len(),
        if log_lines.is_empty() {
            String::new()
        } else {
            format!(
                ", first: {}",
                log_lines
                    .iter()
                    .take(3)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" / ")
            )
        }
    ));
    report.push_str(&format!("wall time {:.0}s\n", wall.elapsed().as_secs_f64()));
    println!("{report}");
    let json = serde_json::json!({
        "sessions": n, "window_s": window.as_secs(), "concurrency_cap": cap,
        "peak_inflight": peak_inflight, "load_s": load_secs, "settle_s": settle.as_secs(),
        "fresh": sample_json(&fresh), "before": sample_json(&before),
        "peak": sample_json(&peak), "after": sample_json(&after),
        "events": rows.len(), "failures": failures.len(),
        "wall_s": wall.elapsed().as_secs_f64(),
    });
    println!("{json}");

    // Keep the evidence.
    let csv: String = std::iter::once(
        "t_s,rss_kib,fds,sockets,threads,active,inflight,target_conns\n".to_string(),
    )
    .chain(samples.iter().map(|s| {
        format!(
            "{:.1},{},{},{},{},{},{},{}\n",
            s.t,
            s.rss_kib,
            s.fds,
            s.sockets,
            s.threads,
            if s.active == u64::MAX {
                -1
            } else {
                s.active as i64
            },
            s.inflight,
            s.target_conns
        )
    }))
    .collect();
    let _ = std::fs::write(d.join("samples.csv"), &csv);
    let _ = std::fs::write(
        d.join("events.json"),
        serde_json::Value::Array(rows).to_string(),
    );
    let _ = std::fs::write(d.join("report.txt"), &report);
    if let Ok(out) = std::env::var("GH_SOAK_OUT") {
        let out = PathBuf::from(out);
        let _ = std::fs::create_dir_all(&out);
        for f in ["samples.csv", "events.json", "report.txt", "gateway.log"] {
            let _ = std::fs::copy(d.join(f), out.join(f));
        }
        println!(
            "soak: samples, events and the gateway log in {}",
            out.display()
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &gw.view.pid.to_string()])
        .status();
    let mut child = gw.child;
    let _ = wait_child(&mut child, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&remote);
    drop(target);

    if failures.is_empty() {
        println!("soak: OK");
        true
    } else {
        for f in failures.iter().take(50) {
            eprintln!("soak: {f}");
        }
        if failures.len() > 50 {
            eprintln!("soak: ... and {} more", failures.len() - 50);
        }
        let kept = dir.keep();
        eprintln!(
            "soak: FAILED ({} problems); evidence kept in {}",
            failures.len(),
            kept.display()
        );
        false
    }
}

fn sample_json(s: &Sample) -> serde_json::Value {
    serde_json::json!({
        "rss_kib": s.rss_kib, "fds": s.fds, "sockets": s.sockets, "threads": s.threads,
        "active": s.active, "target_conns": s.target_conns,
    })
}
