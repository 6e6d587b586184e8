//! `GH_BENCH_ONLY=console` (run only when named): the web console's
//! targets, measured against the real release `gatehouse serve` on
//! loopback (plain HTTP). See BENCHMARKS.md, "Console".
//!
//! 1. The sessions page. GH_BENCH_CONSOLE_SESSIONS sessions (default
//!    1,000,000; each a `session.start`, two `command` events and a
//!    `session.end`, over 1,000 users, 50 targets and 90 days; the newest
//!    25 still running; 10 spread over the 90 days ran a rare command)
//!    are appended with
//!    `Store::append_batch`, as the gateway appends, to a fresh SQLite
//!    store and to a fresh PostgreSQL database (127.0.0.1:5432, user
//!    postgres). A user with `all_sessions` signs in with password and
//!    TOTP; each filter is fetched GH_BENCH_CONSOLE_REQUESTS times
//!    (default 50) over one kept-alive connection (curl), and the median
//!    and p99 of curl's total time are reported, plus the first request.
//!    Filters with a known answer (the rare command, running sessions,
//!    full pages) are checked for the rows they show.
//! 2. Replay of a big recording. A real asciicast v2 file of
//!    GH_BENCH_CONSOLE_CAST_MIB (default 50) MiB of terminal output, with a
//!    marker and a `command` event at every command, belongs to a session
//!    in the SQLite store; bench/console-player.mjs signs in in headless
//!    Chromium and opens `/sessions/ID` three times (a fresh browser
//!    context each time): navigation start to `playerReady`, to the
//!    first frame painted and to the integrity line saying verified, then
//!    from pressing Play to the player's clock moving. Each backend also
//!    times `Store::open` of the filled store three times.
//! 3. The data path. Bulk transfers (as the `bulk` section, GH_BENCH_BYTES
//!    and GH_BENCH_RUNS) through two recording gateways that differ only
//!    in `admin_listen`, runs alternating between them.
//!
//! The load average (/proc/loadavg) is reported beside each part: the
//! machine may be shared.
//!
//! GH_BENCH_CONSOLE_SKIP (comma-separated: sqlite, pg, player, bulk)
//! leaves parts out; GH_BENCH_CONSOLE_KEEP=1 keeps the stores (the
//! SQLite file's directory and the PostgreSQL database) for a look at
//! the queries afterwards.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_model::{NewEvent, Outcome, Severity};
use gatehouse_testkit as kit;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{env_u64, gatehouse_bin, median, percentile, stop, Setup};

const USERS: u64 = 1000;
const TARGETS: u64 = 50;
const DAY_MS: i64 = 86_400_000;
const SPAN_DAYS: i64 = 90;
/// The newest sessions of the fill have no `session.end`.
const ACTIVE: u64 = 25;
/// Sessions (of any fill size) that ran the rare command.
const RARE_SESSIONS: u64 = 10;
const RARE: &str = "billing_archive";
const PASSWORD: &str = "console bench password";
/// Signs in with curl (part 1).
const VIEWER: &str = "benchweb";
/// Signs in in Chromium (part 2): another user, so that its TOTP code is
/// not the one the viewer just used (each code works once per user).
const PLAYER: &str = "benchplayer";
/// Session events in one `append_batch`.
const BATCH_SESSIONS: u64 = 1000;
/// The text of the recording's first frame, which the player script
/// waits for.
const FIRST_TEXT: &str = "Last login: Mon Nov 30 07:58:12 2026 from 10.1.4.7";

// ---- small helpers -----------------------------------------------------

/// splitmix64: the fill's reproducible "random" numbers.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rnd(i: u64, salt: u64) -> u64 {
    mix(i ^ mix(salt.wrapping_mul(0x1000_0000_01B3)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Unix milliseconds as the store writes times (RFC 3339, UTC, ms).
fn rfc3339(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).expect("time in range");
    gatehouse_model::event::format_time(t)
}

/// A ULID (as the gateway's session ids) for time `ms`.
fn ulid(ms: i64, rand: u64) -> String {
    let random = (u128::from(mix(rand)) << 16) | u128::from(rand & 0xFFFF);
    ulid::Ulid::from_parts(ms as u64, random).to_string()
}

fn hex64(seed: u64) -> String {
    (0..4).map(|k| format!("{:016x}", mix(seed + k))).collect()
}

/// The TOTP code of a base32 secret now (the gateway's own TOTP code).
fn totp(secret_b32: &str) -> String {
    let secret = gatehouse_auth::totp::base32_decode(secret_b32).expect("base32 TOTP secret");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    gatehouse_auth::totp::code(&secret, now)
}

fn stats(v: &[f64]) -> Value {
    let mut a = v.to_vec();
    let mut b = v.to_vec();
    json!({"median": median(&mut a), "p99": percentile(&mut b, 0.99),
           "min": v.iter().cloned().fold(f64::MAX, f64::min),
           "max": v.iter().cloned().fold(0.0, f64::max), "n": v.len()})
}

/// The load average (1, 5, 15 min) now: the machine is shared, and
/// every figure is reported next to the load it was measured under.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn skip(part: &str) -> bool {
    std::env::var("GH_BENCH_CONSOLE_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|x| x.trim() == part)
}

fn keep() -> bool {
    std::env::var("GH_BENCH_CONSOLE_KEEP").is_ok_and(|v| v == "1")
}

// ---- the fill ----------------------------------------------------------

const COMMANDS: [&str; 24] = [
    "ls -la /var/log",
    "sudo systemctl status nginx",
    "tail -n 200 /var/log/syslog",
    "df -h",
    "free -m",
    "uptime",
    "journalctl -u app --since today",
    "docker ps",
    "git -C /srv/app pull",
    "kubectl get pods -n prod",
    "top -b -n 1",
    "cat /etc/os-release",
    "du -sh /srv/data",
    "ps aux --sort=-%mem",
    "grep -c ERROR /var/log/app/app.log",
    "sudo apt-get update",
    "vim /etc/nginx/conf.d/site.conf",
    "ss -tlnp",
    "sudo systemctl restart app",
    "ls /srv/releases",
    "tail -f /var/log/nginx/access.log",
    "psql -c 'select count(*) from jobs'",
    "curl -s localhost:8080/healthz",
    "less /var/log/app/worker.log",
];

/// The one address user `u` connects from.
fn source_ip(u: u64) -> String {
    format!("10.{}.{}.{}", u / 250, u % 250, 1 + rnd(u, 5) % 250)
}

/// What the fill looks like: `n` sessions ending `end_ms`.
struct Fill {
    n: u64,
    end_ms: i64,
}

impl Fill {
    fn rare(&self, i: u64) -> bool {
        let every = (self.n / RARE_SESSIONS).max(1);
        i % every == every / 2
    }

    fn command(&self, i: u64, k: u64) -> String {
        if k == 1 && self.rare(i) {
            return format!("pg_dump --schema-only {RARE} > /tmp/schema-{i}.sql");
        }
        let c = COMMANDS[(rnd(i, 10 + k) % COMMANDS.len() as u64) as usize];
        match rnd(i, 20 + k) % 4 {
            0 => format!("{c} | head -n {}", 10 + rnd(i, 30 + k) % 90),
            _ => c.to_string(),
        }
    }

    /// Session `i`'s events, in the order the gateway writes them.
    fn session(&self, i: u64) -> Vec<NewEvent> {
        let span = SPAN_DAYS * DAY_MS;
        let start =
            self.end_ms - span + (i128::from(i) * i128::from(span) / i128::from(self.n)) as i64;
        let u = rnd(i, 2) % USERS;
        let user = format!("user{u}");
        let target = format!("web{:02}", rnd(i, 3) % TARGETS + 1);
        let login = ["deploy", "root", "ubuntu", "app"][(rnd(i, 4) % 4) as usize];
        let ip = source_ip(u);
        let node = if i.is_multiple_of(2) { "gw-a" } else { "gw-b" };
        let id = ulid(start, i);
        let dur = 5_000 + (rnd(i, 6) % 1_800_000) as i64;
        let mfa = rnd(u, 7).is_multiple_of(3);
        let ev = |kind: &str, t: i64, details: Value| {
            let mut e = NewEvent::new(kind, Severity::Info, Outcome::Success, node)
                .user(user.as_str())
                .source_ip(ip.as_str())
                .session(id.as_str())
                .target(target.as_str())
                .login(login)
                .mfa(mfa)
                .details(details);
            e.time = rfc3339(t);
            e
        };
        let mut out = vec![ev(
            "session.start",
            start,
            json!({"address": format!("{target}.prod.internal:22"), "rule": "role ops: allow targets {env=prod} logins [*]"}),
        )];
        for k in 1..=2u64 {
            let t = start + dur * (k as i64) / 3;
            out.push(ev(
                "command",
                t,
                json!({"command": self.command(i, k), "source": "interactive"}),
            ));
        }
        if i + ACTIVE < self.n {
            let sha = hex64(rnd(i, 8));
            let exit = [0, 0, 0, 1, 130][(rnd(i, 12) % 5) as usize];
            let bytes = 2_000 + rnd(i, 9) % 5_000_000;
            out.push(ev(
                "session.end",
                start + dur,
                json!({
                    "duration_ms": dur,
                    "bytes_in": 300 + rnd(i, 11) % 40_000,
                    "bytes_out": bytes,
                    "exit_status": exit,
                    "start_time": rfc3339(start),
                    "recording_id": id,
                    "recording_sha256": sha,
                    "recordings": [{"id": id, "sha256": sha, "bytes": bytes + 400}],
                }),
            ));
        }
        out
    }
}

/// Appends `n` sessions to the store at `url`; the seconds it took.
async fn fill(url: &str, n: u64, end_ms: i64) -> f64 {
    let store = gatehouse_store::Store::open(url).await.expect("open store");
    let f = Fill { n, end_ms };
    let t = Instant::now();
    let mut pending: Option<tokio::task::JoinHandle<()>> = None;
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEvent> = (i..(i + BATCH_SESSIONS).min(n))
            .flat_map(|k| f.session(k))
            .collect();
        i += BATCH_SESSIONS;
        // Built while the previous batch commits; one batch in flight
        // keeps the chain in the order the batches were made.
        if let Some(p) = pending.take() {
            p.await.expect("append task");
        }
        let s = store.clone();
        pending = Some(tokio::spawn(async move {
            s.append_batch(batch).await.expect("append batch");
        }));
        if i % 100_000 == 0 {
            eprintln!(
                "console: {i} of {n} sessions in {:.0} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(p) = pending {
        p.await.expect("append task");
    }
    let secs = t.elapsed().as_secs_f64();
    store.close().await;
    secs
}

// ---- the recording -----------------------------------------------------

/// A recording written for part 2.
struct Cast {
    path: PathBuf,
    sha256: String,
    bytes: u64,
    duration: f64,
    /// (time, command) of every marker.
    markers: Vec<(f64, String)>,
    events: u64,
}

fn log_line(r: u64, t: f64) -> String {
    const LEVELS: [&str; 4] = ["INFO ", "INFO ", "\x1b[33mWARN\x1b[0m ", "DEBUG"];
    const WHAT: [&str; 5] = [
        "processed job",
        "GET /api/v2/orders",
        "cache miss for key session",
        "flushed batch",
        "connection from pool",
    ];
    format!(
        "\x1b[2m2026-11-30T08:{:02}:{:06.3}Z\x1b[0m {} app.worker[{}]: {} {} in {} ms\r\n",
        (t / 60.0) as u64 % 60,
        t % 60.0,
        LEVELS[(r % 4) as usize],
        1000 + r % 9000,
        WHAT[(r / 7 % 5) as usize],
        r % 1_000_000,
        r % 250
    )
}

fn listing_line(r: u64) -> String {
    format!(
        "-rw-r--r-- 1 app  app  {:>9} Nov {:>2} {:02}:{:02} \x1b[01;34mrelease-{:06x}\x1b[0m/build-{}.tar.gz\r\n",
        r % 100_000_000,
        1 + r % 30,
        r % 24,
        r % 60,
        r & 0xFF_FFFF,
        r % 977
    )
}

/// Writes an asciicast v2 recording of about `target` bytes at `path`: a
/// shell session of commands typed a key at a time (each with a marker),
/// each followed by a burst of log or listing output in pty-sized chunks.
fn write_cast(path: &Path, target: u64, id: &str) -> Cast {
    let file = std::fs::File::create(path).expect("create cast");
    let mut out = BufWriter::new(file);
    let header = json!({"version": 2, "width": 160, "height": 45, "timestamp": (now_ms() / 1000) - 7200,
        "title": format!("user7@web07 {id}"), "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "gatehouse": {"session_id": id, "user": "user7", "target": "web07", "login": "deploy"}});
    let mut bytes = 0u64;
    let mut events = 0u64;
    let mut digest = Sha256::new();
    // The lines written (header included), their bytes and digest.
    let mut write = |out: &mut BufWriter<std::fs::File>, line: String| -> u64 {
        for part in [line.as_bytes(), b"\n"] {
            out.write_all(part).expect("write cast");
            digest.update(part);
        }
        bytes += line.len() as u64 + 1;
        events += 1;
        bytes
    };
    write(&mut out, header.to_string());
    let ev = |t: f64, code: &str, data: &str| {
        serde_json::to_string(&((t * 1e6).round() / 1e6, code, data)).expect("json")
    };
    let prompt = "\x1b[01;32mdeploy@web07\x1b[00m:\x1b[01;34m/srv/app\x1b[00m$ ";
    write(
        &mut out,
        ev(
            0.0,
            "o",
            &format!(
                "Linux web07 6.1.0-27-amd64 #1 SMP Debian x86_64\r\n\r\n{FIRST_TEXT}\r\n{prompt}"
            ),
        ),
    );
    let mut t: f64 = 0.4;
    let mut markers = Vec::new();
    let mut k = 0u64;
    let mut size = 0;
    while size < target {
        k += 1;
        let cmd = format!(
            "{} # step {k}",
            COMMANDS[(rnd(k, 1) % COMMANDS.len() as u64) as usize]
        );
        for ch in cmd.chars() {
            t += 0.05 + (rnd(k, t.to_bits()) % 130) as f64 / 1000.0;
            write(&mut out, ev(t, "o", &ch.to_string()));
        }
        t += 0.2;
        markers.push((t, cmd.clone()));
        write(&mut out, ev(t, "m", &cmd));
        write(&mut out, ev(t, "o", "\r\n"));
        // 20–200 KiB of output in chunks of up to 4 KiB.
        let burst = 20_000 + rnd(k, 2) % 180_000;
        let mut written = 0;
        let mut r = rnd(k, 3);
        while written < burst {
            let mut chunk = String::new();
            let size = 256 + (r % 3840) as usize;
            while chunk.len() < size {
                r = mix(r);
                chunk.push_str(&if k.is_multiple_of(3) {
                    listing_line(r)
                } else {
                    log_line(r, t)
                });
            }
            t += 0.002 + (r % 25) as f64 / 1000.0;
            written += chunk.len() as u64;
            write(&mut out, ev(t, "o", &chunk));
        }
        t += 1.0 + (rnd(k, 4) % 15_000) as f64 / 1000.0;
        size = write(&mut out, ev(t, "o", prompt));
    }
    out.flush().expect("flush cast");
    drop(out);
    let sha256 = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Cast {
        path: path.to_path_buf(),
        sha256,
        bytes,
        duration: t,
        markers,
        events,
    }
}

/// Writes the recording and its session (start, a command per marker,
/// end with the recording's digest) to the store; the session id.
async fn recorded_session(url: &str, rec_dir: &Path, mib: u64) -> (String, Cast) {
    std::fs::create_dir_all(rec_dir).expect("recordings dir");
    let id = ulid(now_ms(), 7_777_777);
    let t = Instant::now();
    let cast = write_cast(&rec_dir.join(format!("{id}.cast")), mib << 20, &id);
    eprintln!(
        "console: wrote {} ({} bytes, {} events, {} markers, {:.0} s long) in {:.1} s",
        cast.path.display(),
        cast.bytes,
        cast.events,
        cast.markers.len(),
        cast.duration,
        t.elapsed().as_secs_f64()
    );
    let start = now_ms() - (cast.duration * 1000.0) as i64 - 600_000;
    let ev = |kind: &str, at: i64, details: Value| {
        let mut e = NewEvent::new(kind, Severity::Info, Outcome::Success, "gw-a")
            .user("user7")
            .source_ip("10.0.7.9")
            .session(id.as_str())
            .target("web07")
            .login("deploy")
            .mfa(true)
            .details(details);
        e.time = rfc3339(at);
        e
    };
    let mut evs = vec![ev(
        "session.start",
        start,
        json!({"address": "web07.prod.internal:22"}),
    )];
    for (mt, c) in &cast.markers {
        evs.push(ev(
            "command",
            start + (mt * 1000.0) as i64,
            json!({"command": c, "source": "interactive"}),
        ));
    }
    let dur = (cast.duration * 1000.0) as i64 + 500;
    evs.push(ev(
        "session.end",
        start + dur,
        json!({"duration_ms": dur, "bytes_in": 20_000, "bytes_out": cast.bytes, "exit_status": 0,
               "start_time": rfc3339(start), "recording_id": id, "recording_sha256": cast.sha256,
               "recordings": [{"id": id, "sha256": cast.sha256, "bytes": cast.bytes}]}),
    ));
    let store = gatehouse_store::Store::open(url).await.expect("open store");
    store
        .append_batch(evs)
        .await
        .expect("append recording session");
    store.close().await;
    (id, cast)
}

// ---- the gateway -------------------------------------------------------

fn hash_password() -> String {
    gatehouse_auth::password::hash(PASSWORD).expect("hash the benchmark password")
}

/// A console gateway's config: the fill's users and targets, and the two
/// benchmark users with `all_sessions` (which needs TOTP).
fn console_config(dir: &Path, name: &str, store: &str, admin: u16, hash: &str) -> PathBuf {
    let mut c = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nhost_key = \"host_ed25519\"\nnode = \"bench-console\"\n\
         [upstream]\nkey = \"client_ed25519\"\n[store]\nurl = \"{store}\"\n[recording]\ndir = \"{}\"\n\
         [[roles]]\nname = \"ops\"\nallow = [{{ targets = {{}}, logins = [\"*\"] }}]\n\
         [[roles]]\nname = \"reviewer\"\nconsole = [\"all_sessions\"]\n",
        kit::free_port(),
        dir.join("console-recordings").display(),
    );
    for t in 1..=TARGETS {
        c.push_str(&format!(
            "[[targets]]\nname = \"web{t:02}\"\naddress = \"10.20.0.{t}:22\"\ntofu = true\n"
        ));
    }
    for u in 0..USERS {
        c.push_str(&format!(
            "[[users]]\nname = \"user{u}\"\nroles = [\"ops\"]\n"
        ));
    }
    for u in [VIEWER, PLAYER] {
        c.push_str(&format!(
            "[[users]]\nname = \"{u}\"\nroles = [\"reviewer\"]\npassword_hash = \"{hash}\"\n"
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, c).expect("write console config");
    path
}

fn enrol(cfg: &Path, user: &str) -> String {
    let out = Command::new(gatehouse_bin())
        .arg("--config")
        .arg(cfg)
        .args(["--format", "json", "users", "totp-enroll", user])
        .output()
        .expect("totp-enroll");
    assert!(
        out.status.success(),
        "totp-enroll {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("totp-enroll json");
    v["secret"].as_str().expect("secret").to_string()
}

/// A running `gatehouse serve`, stopped when dropped (also when a
/// check fails and the run unwinds).
struct Serving(Child);

impl Serving {
    /// `gatehouse serve --config cfg`, its stderr in `log`.
    fn start(cfg: &Path, log: &Path) -> Serving {
        let log = std::fs::File::create(log).expect("log");
        let child = Command::new(gatehouse_bin())
            .args(["serve", "--config"])
            .arg(cfg)
            .env("GATEHOUSE_LOG", "warn")
            .stderr(log)
            .spawn()
            .expect("gatehouse serve");
        Serving(child)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        stop(&mut self.0, Duration::from_secs(30));
    }
}

/// Starts `gatehouse serve`; waits for the console port. The gateway and
/// the seconds until the port answered.
fn serve(cfg: &Path, admin: u16) -> (Serving, f64) {
    let t = Instant::now();
    let serving = Serving::start(cfg, &cfg.with_extension("log"));
    kit::wait_for_port(admin, Duration::from_secs(300)).expect("console port");
    (serving, t.elapsed().as_secs_f64())
}

// ---- HTTP (curl) -------------------------------------------------------

/// Signs in; the cookie header value.
fn sign_in(port: u16, user: &str, secret: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "60", "-H"])
        .arg(format!("Origin: http://127.0.0.1:{port}"))
        .args(["--data-urlencode", &format!("user={user}")])
        .args(["--data-urlencode", &format!("password={PASSWORD}")])
        .args(["--data-urlencode", &format!("code={}", totp(secret))])
        .arg(format!("http://127.0.0.1:{port}/signin"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().split(';').next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("sign-in of {user} failed:\n{text}"))
}

/// One GET: (status, seconds, body).
fn get(port: u16, cookie: &str, path: &str) -> (u16, f64, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "300",
            "-H",
            &format!("Cookie: {cookie}"),
        ])
        .args(["-w", "\n%{http_code} %{time_total}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut w = tail.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = w.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    (status, secs, body.to_string())
}

/// `n` GETs of `path` over one kept-alive connection: milliseconds each.
fn get_n(port: u16, cookie: &str, path: &str, n: u64) -> Vec<f64> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--max-time",
        "600",
        "-H",
        &format!("Cookie: {cookie}"),
    ])
    .args(["-w", "%{http_code} %{time_total} %{num_connects}\n"]);
    for _ in 0..n {
        c.args(["-o", "/dev/null", &url]);
    }
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut connects = 0;
    let v: Vec<f64> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.first(), Some(&"200"), "GET {path}: {l}");
            connects += f.get(2).and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
            f[1].parse::<f64>().expect("time_total") * 1000.0
        })
        .collect();
    assert_eq!(v.len() as u64, n, "GET {path}: {text}");
    assert!(
        connects <= 1,
        "curl did not keep the connection: {connects} connects"
    );
    v
}

/// Sessions on a full page of the console's list.
const PAGE_ROWS: usize = 50;

/// Rows on a sessions page.
fn rows(body: &str) -> usize {
    body.matches("<td><a href=\"/sessions/").count()
}

/// The `Older sessions` link of a page.
fn older(body: &str) -> Option<String> {
    let rest = body.split("id=\"older\" href=\"").nth(1)?;
    Some(rest.split('"').next()?.replace("&amp;", "&"))
}

// ---- part 1 ------------------------------------------------------------

/// Each filter's first request (ms), rows shown, and the timed requests.
struct Measured {
    label: String,
    path: String,
    first_ms: f64,
    rows: usize,
    times: Vec<f64>,
}

/// Each filter of the sessions page over `sessions` sessions: the first
/// request, then `n` more over one connection.
fn measure_pages(port: u16, cookie: &str, end_ms: i64, sessions: u64, n: u64) -> Vec<Measured> {
    let since = rfc3339(end_ms - 30 * DAY_MS);
    let (day0, day1) = (rfc3339(end_ms - 60 * DAY_MS), rfc3339(end_ms - 59 * DAY_MS));
    let full = PAGE_ROWS.min(sessions as usize);
    // (label, path, rows the page must show when known): a fast answer
    // that shows the wrong rows would measure nothing.
    let mut pages: Vec<(String, String, Option<usize>)> = vec![
        ("unfiltered".into(), "/sessions".into(), Some(full)),
        ("user=user42".into(), "/sessions?user=user42".into(), None),
        (
            "target=web07 & since=30 days back".into(),
            format!("/sessions?target=web07&since={since}"),
            None,
        ),
        (
            "since & until: one day, 60 days back".into(),
            format!("/sessions?since={day0}&until={day1}"),
            None,
        ),
        (
            "login=root & source=user42's address".into(),
            format!("/sessions?login=root&source_ip={}", source_ip(42)),
            None,
        ),
        (
            format!("command={RARE} ({RARE_SESSIONS} sessions)"),
            format!("/sessions?command={RARE}"),
            Some(RARE_SESSIONS.min(sessions) as usize),
        ),
        (
            "command=nginx (common)".into(),
            "/sessions?command=nginx".into(),
            None,
        ),
        (
            format!("active=1 ({ACTIVE} running)"),
            "/sessions?active=1".into(),
            Some(ACTIVE.min(sessions) as usize),
        ),
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < pages.len() {
        let (label, path, want) = pages[i].clone();
        let (status, secs, body) = get(port, cookie, &path);
        assert_eq!(status, 200, "GET {path}: {status}\n{body}");
        if let Some(want) = want {
            assert_eq!(rows(&body), want, "GET {path}: rows shown");
        }
        if i == 0 && sessions > PAGE_ROWS as u64 {
            let next = older(&body).expect("an Older sessions link on the first page");
            let second = PAGE_ROWS.min(sessions as usize - PAGE_ROWS);
            pages.push(("second page (before= cursor)".into(), next, Some(second)));
        }
        let times = get_n(port, cookie, &path, n);
        eprintln!(
            "console: {label}: {} rows, first {:.1} ms, median {:.1} ms",
            rows(&body),
            secs * 1000.0,
            median(&mut times.clone())
        );
        out.push(Measured {
            label,
            path,
            first_ms: secs * 1000.0,
            rows: rows(&body),
            times,
        });
        i += 1;
    }
    out
}

/// Fills, serves, signs in and measures one backend.
struct Backend {
    name: &'static str,
    url: String,
    sessions: u64,
    fill_s: f64,
    /// PostgreSQL: the VACUUM ANALYZE after the fill.
    analyze_s: f64,
    start_s: f64,
    /// `Store::open` of the filled store, three times (ms): what every
    /// `gatehouse` command pays before its work.
    open_ms: Vec<f64>,
    size: u64,
    pages: Vec<Measured>,
    /// The load average before and after the pages were measured.
    load: (String, String),
}

async fn backend(
    name: &'static str,
    url: String,
    dir: &Path,
    hash: &str,
    n: u64,
    player: bool,
) -> (Backend, Option<Value>) {
    let end_ms = now_ms() - 3 * 3_600_000;
    eprintln!("console: filling {name} with {n} sessions");
    let fill_s = fill(&url, n, end_ms).await;
    eprintln!("console: {name} filled in {fill_s:.0} s");
    // What autovacuum would do soon after such a load (it is off on some
    // servers, this project's among them): statistics (without them
    // PostgreSQL's plans scan every event of a type per row), and the
    // dead rows of `active_sessions` (a row in and out per session: a
    // million dead rows make the `active` filter read 7,000 pages for 25
    // live rows, 150 ms a page on this machine).
    // GH_BENCH_CONSOLE_PG_VACUUM=0 measures the table as the fill left it.
    let analyze_s = if url.starts_with("postgres") {
        let t = Instant::now();
        let vacuum = std::env::var("GH_BENCH_CONSOLE_PG_VACUUM").map_or(true, |v| v != "0");
        psql_db(&url, if vacuum { "VACUUM ANALYZE" } else { "ANALYZE" });
        t.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let mut open_ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let store = gatehouse_store::Store::open(&url)
            .await
            .expect("open store");
        open_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        store.close().await;
    }
    eprintln!("console: {name}: Store::open {open_ms:.0?} ms");
    let admin = kit::free_port();
    let cfg = console_config(dir, &format!("console-{name}"), &url, admin, hash);
    let recorded = if player {
        Some(
            recorded_session(
                &url,
                &dir.join("console-recordings"),
                env_u64("GH_BENCH_CONSOLE_CAST_MIB", 50),
            )
            .await,
        )
    } else {
        None
    };
    let viewer = enrol(&cfg, VIEWER);
    let player_secret = enrol(&cfg, PLAYER);
    let (child, start_s) = serve(&cfg, admin);
    let cookie = sign_in(admin, VIEWER, &viewer);
    let load_before = load();
    let pages = measure_pages(
        admin,
        &cookie,
        end_ms,
        n,
        env_u64("GH_BENCH_CONSOLE_REQUESTS", 50),
    );
    let load_after = load();
    let played = recorded.map(|(id, cast)| play(admin, &id, &player_secret, &cast));
    drop(child);
    let size = store_size(&url, dir);
    let b = Backend {
        name,
        url,
        sessions: n,
        fill_s,
        analyze_s,
        start_s,
        open_ms,
        size,
        pages,
        load: (load_before, load_after),
    };
    (b, played)
}

fn store_size(url: &str, dir: &Path) -> u64 {
    if url.starts_with("sqlite:") {
        ["console.db", "console.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    } else {
        let db = url.rsplit('/').next().unwrap_or("");
        psql(&format!("SELECT pg_database_size('{db}')"))
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

fn psql(sql: &str) -> String {
    psql_db("postgres", sql)
}

/// `sql` in database `db` (a name, or the store URL ending in one).
fn psql_db(db: &str, sql: &str) -> String {
    let db = db.rsplit('/').next().unwrap_or(db);
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

// ---- part 2 ------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs bench/console-player.mjs; its JSON lines.
fn play(port: u16, id: &str, secret: &str, cast: &Cast) -> Value {
    let root = repo_root();
    let load_before = load();
    let want = env_u64("GH_BENCH_CONSOLE_PLAYER_RUNS", 3);
    let out = Command::new("node")
        .arg(root.join("bench/console-player.mjs"))
        .current_dir(&root)
        .env("GH_URL", format!("http://127.0.0.1:{port}"))
        .env("GH_USER", PLAYER)
        .env("GH_PASSWORD", PASSWORD)
        .env("GH_TOTP", secret)
        .env("GH_SESSION", id)
        .env("GH_FIRST_TEXT", FIRST_TEXT)
        .env("GH_RUNS", want.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("node bench/console-player.mjs (bash scripts/browser-deps.sh installs it)");
    assert!(out.status.success(), "console-player.mjs failed");
    let runs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        runs.len() as u64,
        want,
        "console-player.mjs: one line a run"
    );
    json!({"cast_bytes": cast.bytes, "cast_events": cast.events, "markers": cast.markers.len(),
           "cast_seconds": cast.duration, "runs": runs, "load": [load_before, load()]})
}

// ---- part 3 ------------------------------------------------------------

/// Two recording gateways, with and without `admin_listen`, on the
/// bulk section's target: every run's MB/s of each, per row.
fn data_path(s: &Setup, bytes: u64, runs: u64) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    let d = s.dir.path();
    let login = super::bench_login();
    let user_pub = std::fs::read_to_string(d.join("user.pub")).expect("user.pub");
    let mut gateways = Vec::new();
    let mut hosts = String::new();
    for (name, admin) in [("gwplain", false), ("gwadmin", true)] {
        let port = kit::free_port();
        let cfg =
            super::write_gateway_config(d, name, port, &s.target, &login, user_pub.trim(), true);
        let admin_port = kit::free_port();
        if admin {
            let text = std::fs::read_to_string(&cfg).expect("config");
            let text = text.replacen(
                "[server]\n",
                &format!("[server]\nadmin_listen = \"127.0.0.1:{admin_port}\"\n"),
                1,
            );
            std::fs::write(&cfg, text).expect("config");
        }
        let child = Serving::start(&cfg, &d.join(format!("{name}.log")));
        kit::wait_for_port(port, Duration::from_secs(20)).expect("gateway");
        if admin {
            kit::wait_for_port(admin_port, Duration::from_secs(20)).expect("admin port");
        }
        gateways.push(child);
        hosts.push_str(&format!("{name} {port}\n"));
    }
    // The gateways as hosts of the bulk section's client configs: a copy
    // of its `gatehouse` host with another port.
    for tag in ["chacha20", "aes256gcm"] {
        let path = s.cfg(tag);
        let text = std::fs::read_to_string(&path).expect("ssh config");
        let block = text
            .split("Host ")
            .find(|b| b.starts_with("gatehouse\n"))
            .expect("gatehouse host");
        let mut extra = String::new();
        for l in hosts.lines() {
            let (name, port) = l.split_once(' ').expect("host");
            let b = block.replacen("gatehouse\n", &format!("{name}\n"), 1);
            let b: Vec<String> = b
                .lines()
                .map(|x| {
                    if x.trim_start().starts_with("Port ") {
                        format!("    Port {port}")
                    } else {
                        x.to_string()
                    }
                })
                .collect();
            extra.push_str(&format!("Host {}\n", b.join("\n")));
        }
        std::fs::write(&path, format!("{text}{extra}")).expect("ssh config");
    }
    let mut out = Vec::new();
    for cipher in ["chacha20", "aes256gcm"] {
        for upload in [false, true] {
            let (mut plain, mut admin) = (Vec::new(), Vec::new());
            for r in 0..runs {
                // Alternating which goes first, so that neither always
                // follows the other.
                let order = if r % 2 == 0 {
                    ["gwplain", "gwadmin"]
                } else {
                    ["gwadmin", "gwplain"]
                };
                for h in order {
                    let v = s.bulk(cipher, h, bytes, upload, 1);
                    if h == "gwplain" {
                        plain.push(v)
                    } else {
                        admin.push(v)
                    }
                }
            }
            let name = format!(
                "bulk {} {cipher}",
                if upload { "upload" } else { "download" }
            );
            out.push((name, plain, admin));
        }
    }
    drop(gateways);
    out
}

// ---- the section -------------------------------------------------------

fn page_rows(table: &mut String, backends: &[Backend]) {
    table.push_str(&format!(
        "{:<44} {:>6} {:>22} {:>22}\n",
        "console /sessions (ms: first, median, p99)",
        "rows",
        backends.first().map(|b| b.name).unwrap_or(""),
        backends.get(1).map(|b| b.name).unwrap_or("")
    ));
    let Some(first) = backends.first() else {
        return;
    };
    for (i, p) in first.pages.iter().enumerate() {
        let cell = |b: &Backend| {
            b.pages
                .get(i)
                .map(|m| {
                    let (mut a, mut c) = (m.times.clone(), m.times.clone());
                    format!(
                        "{:.1} {:.1} {:.1}",
                        m.first_ms,
                        median(&mut a),
                        percentile(&mut c, 0.99)
                    )
                })
                .unwrap_or_default()
        };
        table.push_str(&format!(
            "  {:<42} {:>6} {:>22} {:>22}\n",
            p.label,
            p.rows,
            cell(first),
            backends.get(1).map(cell).unwrap_or_default()
        ));
    }
    for b in backends {
        table.push_str(&format!(
            "  {}: filled in {:.0} s ({:.0} events/s){}, store {:.0} MiB, gateway up in {:.1} s, Store::open {} ms\n",
            b.name,
            b.fill_s,
            (b.sessions * 4) as f64 / b.fill_s,
            if b.analyze_s > 0.0 {
                format!(", VACUUM ANALYZE {:.0} s", b.analyze_s)
            } else {
                String::new()
            },
            b.size as f64 / 1048576.0,
            b.start_s,
            b.open_ms
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        table.push_str(&format!(
            "  {}: load average before / after the pages: {} / {}\n",
            b.name, b.load.0, b.load.1
        ));
    }
}

fn backend_json(b: &Backend) -> Value {
    let pages: Map<String, Value> = b
        .pages
        .iter()
        .map(|m| {
            (
                m.label.clone(),
                json!({"path": m.path, "rows": m.rows, "first_ms": m.first_ms, "ms": stats(&m.times)}),
            )
        })
        .collect();
    json!({"fill_s": b.fill_s, "analyze_s": b.analyze_s, "store_bytes": b.size, "gateway_start_s": b.start_s, "store_open_ms": b.open_ms, "pages": pages,
           "url": b.url, "load": [b.load.0, b.load.1]})
}

/// Runs parts 1–3 and adds their rows and JSON.
pub async fn run(s: &Setup, table: &mut String, json_out: &mut Map<String, Value>) {
    let n = env_u64("GH_BENCH_CONSOLE_SESSIONS", 1_000_000);
    let dir = tempfile::Builder::new()
        .prefix("gh-console-bench")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    for f in ["host_ed25519", "client_ed25519"] {
        std::fs::copy(s.dir.path().join(f), d.join(f)).expect("copy key");
    }
    let hash = hash_password();
    let mut backends = Vec::new();
    let mut played = None;
    if !skip("sqlite") {
        let url = format!("sqlite://{}/console.db", d.display());
        let (b, p) = backend("SQLite", url, d, &hash, n, !skip("player")).await;
        backends.push(b);
        played = p;
    }
    let mut pg_db = None;
    if !skip("pg") {
        let db = format!("gh_console_bench_{}", std::process::id());
        psql(&format!("CREATE DATABASE {db}"));
        let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
        let (b, _) = backend("PostgreSQL", url, d, &hash, n, false).await;
        backends.push(b);
        pg_db = Some(db);
    }
    json_out.insert("console_sessions".into(), json!(n));
    if !backends.is_empty() {
        page_rows(table, &backends);
        for b in &backends {
            json_out.insert(
                format!("console_pages_{}", b.name.to_lowercase()),
                backend_json(b),
            );
        }
    }
    if let Some(p) = played {
        let runs = p["runs"].as_array().cloned().unwrap_or_default();
        let ready: Vec<f64> = runs.iter().filter_map(|r| r["ready_ms"].as_f64()).collect();
        let frame: Vec<f64> = runs.iter().filter_map(|r| r["frame_ms"].as_f64()).collect();
        let verified: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["verified_ms"].as_f64())
            .collect();
        // From pressing Play to the player's clock moving.
        let play: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(r["play_ms"].as_f64()? - r["play_pressed_ms"].as_f64()?))
            .collect();
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.push_str(&format!(
            "console replay of a {:.1} MiB recording ({} events) in Chromium: playerReady {} ms, first frame {} ms, integrity verified {} ms, then Play to moving {} ms (load {})\n",
            p["cast_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            p["cast_events"],
            list(&ready),
            list(&frame),
            list(&verified),
            list(&play),
            p["load"][0].as_str().unwrap_or("")
        ));
        json_out.insert("console_player".into(), p);
    }
    if !skip("bulk") {
        let bytes = env_u64("GH_BENCH_BYTES", 1 << 30);
        let runs = env_u64("GH_BENCH_RUNS", 3);
        let load_before = load();
        let rows = data_path(s, bytes, runs);
        let load_after = load();
        table.push_str(&format!(
            "console data path ({} MiB a run, median of {runs}; load average before / after: {load_before} / {load_after})\n",
            bytes >> 20
        ));
        let mut j = Map::new();
        j.insert("load".into(), json!([load_before, load_after]));
        for (name, plain_runs, admin_runs) in rows {
            let plain = median(&mut plain_runs.clone());
            let admin = median(&mut admin_runs.clone());
            table.push_str(&format!(
                "{name:<32} without console {plain:>7.1} MB/s, with {admin:>7.1} MB/s, ratio {:.3}\n",
                admin / plain
            ));
            j.insert(
                name.replace(' ', "_"),
                json!({"without": plain, "with": admin, "ratio": admin / plain,
                       "runs_without": plain_runs, "runs_with": admin_runs}),
            );
        }
        json_out.insert("console_data_path".into(), Value::Object(j));
    }
    if keep() {
        eprintln!(
            "console: kept {} and PostgreSQL database {:?}",
            dir.keep().display(),
            pg_db
        );
    } else if let Some(db) = pg_db {
        psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fill has what the pages' checks count on: the rare command in
    /// exactly RARE_SESSIONS sessions, ACTIVE sessions without an end,
    /// starts (and ids) in time order over the span.
    #[test]
    fn the_fill_is_what_the_pages_expect() {
        let f = Fill {
            n: 2000,
            end_ms: 1_796_040_000_000,
        };
        let all: Vec<Vec<NewEvent>> = (0..f.n).map(|i| f.session(i)).collect();
        let ran = |evs: &[NewEvent], text: &str| {
            evs.iter().any(|e| {
                e.details["command"]
                    .as_str()
                    .is_some_and(|c| c.contains(text))
            })
        };
        assert_eq!(
            all.iter().filter(|e| ran(e, RARE)).count() as u64,
            RARE_SESSIONS
        );
        assert!(all.iter().filter(|e| ran(e, "nginx")).count() > 100);
        let running = all
            .iter()
            .filter(|evs| !evs.iter().any(|e| e.kind == "session.end"))
            .count() as u64;
        assert_eq!(running, ACTIVE);
        for w in all.windows(2) {
            assert!(w[0][0].time < w[1][0].time);
            assert!(w[0][0].session_id < w[1][0].session_id);
        }
        assert!(all[0][0].time >= rfc3339(f.end_ms - SPAN_DAYS * DAY_MS));
        for evs in &all {
            assert_eq!(evs[0].kind, "session.start");
            assert!(evs.windows(2).all(|w| w[0].time <= w[1].time));
        }
        assert_eq!(rfc3339(1_796_040_000_123), "2026-11-30T12:00:00.123Z");
    }
}
