//! `GH_BENCH_ONLY=burst`: bursts of new sessions, as an Ansible run with
//! many forks makes them. For each burst size (`GH_BENCH_BURST`, default
//! `60,120,200,300`), that many `ssh host true` start at once (the
//! curve25519 client settings, so every leg speaks the same key exchange)
//! against direct OpenSSH, a gateway on SQLite and a gateway on
//! PostgreSQL, both with the startup limits raised as for Ansible with
//! many forks, and a gateway on SQLite with the default `max_startups`,
//! `per_source_max_startups` and `per_source_queue` (connections over a
//! source's share wait for a place), all in front of the same sshd target. A session is admitted
//! when its `ssh` exits 0 within the window (`GH_BENCH_BURST_WINDOW`,
//! default 60 s); p50 and p99 are over the admitted sessions' wall times.
//! Each gateway's `/metrics` is read before and after its burst: the
//! slowest store write in that burst (the upper bound of the highest
//! histogram bucket that moved) is the figure for "no store-pool wait
//! over 1 s", since every gating event is one such write.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit as kit;

use crate::{env_u64, gatehouse_bin, percentile, stop, write_gateway_config, Setup};

/// One gateway started for the burst: its process, SSH port and metrics.
struct Gateway {
    child: Child,
    port: u16,
    admin: u16,
    /// The PostgreSQL database it uses, dropped with it.
    pg_db: Option<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(20));
        if let Some(db) = &self.pg_db {
            let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

fn psql(sql: &str) -> bool {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-qAt", "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A recording gateway named `name` on a fresh store (`pg`: a new
/// PostgreSQL database; otherwise SQLite), with `/metrics` on an admin
/// port.
/// `defaults`: the gateway keeps its default startup limits (the
/// setup's config raises them).
fn start_gateway(s: &Setup, name: &str, pg: bool, defaults: bool) -> Gateway {
    let d = s.dir.path();
    let user_pub = std::fs::read_to_string(d.join("user.pub")).expect("user.pub");
    let port = kit::free_port();
    let admin = kit::free_port();
    let path = write_gateway_config(d, name, port, &s.target, &s.login, user_pub.trim(), true);
    let mut cfg = std::fs::read_to_string(&path).expect("gateway config");
    cfg = cfg.replacen(
        "[server]\n",
        &format!("[server]\nadmin_listen = \"127.0.0.1:{admin}\"\n"),
        1,
    );
    if defaults {
        cfg = cfg
            .lines()
            .filter(|l| {
                !l.starts_with("max_startups =") && !l.starts_with("per_source_max_startups =")
            })
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let pg_db = pg.then(|| format!("gh_bench_burst_{}", std::process::id()));
    if let Some(db) = &pg_db {
        let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        assert!(
            psql(&format!("CREATE DATABASE {db}")),
            "CREATE DATABASE {db} failed: is PostgreSQL running on 127.0.0.1:5432 (user postgres)?"
        );
        cfg = cfg.replace(
            &format!("url = \"sqlite://{name}.db\""),
            &format!("url = \"postgres://postgres@127.0.0.1:5432/{db}\""),
        );
    }
    std::fs::write(&path, cfg).expect("gateway config");
    let log = std::fs::File::create(d.join(format!("{name}.log"))).expect("log");
    let child = Command::new(gatehouse_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("GATEHOUSE_LOG", "warn")
        .stderr(log)
        .spawn()
        .expect("start gatehouse");
    let gw = Gateway {
        child,
        port,
        admin,
        pg_db,
    };
    kit::wait_for_port(port, Duration::from_secs(30)).expect("gateway listening");
    kit::wait_for_port(admin, Duration::from_secs(10)).expect("admin listening");
    gw
}

/// The curve25519 client settings plus a `Host` block for each burst
/// gateway.
fn client_config(s: &Setup, gateways: &[(&str, &Gateway)]) -> std::path::PathBuf {
    let base = std::fs::read_to_string(s.cfg("curve25519")).expect("ssh config");
    // The block of the setup's gateway is the template: same user, same
    // options, another port.
    let start = base.find("Host gatehouse\n").expect("Host gatehouse block");
    let rest = &base[start..];
    let end = rest[1..].find("Host ").map(|i| i + 1).unwrap_or(rest.len());
    let block = &rest[..end];
    let port_line = block
        .lines()
        .find(|l| l.trim_start().starts_with("Port "))
        .expect("Port line")
        .to_string();
    let mut text = base.clone();
    for (host, gw) in gateways {
        text.push_str(
            &block
                .replacen("Host gatehouse\n", &format!("Host {host}\n"), 1)
                .replacen(&port_line, &format!("    Port {}", gw.port), 1),
        );
    }
    let path = s.dir.path().join("ssh_config.burst");
    std::fs::write(&path, text).expect("ssh config");
    path
}

/// The cumulative buckets of the store's write and commit histograms
/// (`gatehouse_store_write_seconds`, `gatehouse_store_commit_seconds`).
fn write_buckets(admin: u16) -> [Vec<(f64, u64)>; 2] {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    [
        "gatehouse_store_write_seconds",
        "gatehouse_store_commit_seconds",
    ]
    .map(|name| {
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, count.trim().parse().ok()?))
            })
            .collect()
    })
}

/// The smallest bucket bound that holds every write between `before` and
/// `after` (cumulative buckets): the slowest write was at most this.
fn slowest_write(before: &[(f64, u64)], after: &[(f64, u64)]) -> f64 {
    let total = |v: &[(f64, u64)]| v.last().map(|b| b.1).unwrap_or(0);
    let moved = total(after).saturating_sub(total(before));
    after
        .iter()
        .zip(before.iter().map(|b| b.1).chain(std::iter::repeat(0)))
        .find(|((_, a), b)| a.saturating_sub(*b) >= moved)
        .map(|((bound, _), _)| *bound)
        .unwrap_or(f64::INFINITY)
}

/// What one burst gave: admitted sessions, p50 and p99 of their wall
/// times (ms), and the first error a refused client printed.
struct Outcome {
    admitted: usize,
    p50: f64,
    p99: f64,
    first_error: String,
}

/// `n` × `ssh -F cfg host true` started at once; each has `window` to
/// exit 0.
fn burst(cfg: &Path, host: &str, n: usize, window: Duration, errs: &Path) -> Outcome {
    let started = Instant::now();
    let mut running: Vec<Option<(Child, Instant, usize)>> = (0..n)
        .map(|i| {
            let err = std::fs::File::create(errs.join(format!("{host}-{n}-{i}.err")))
                .expect("stderr file");
            let child = Command::new("ssh")
                .arg("-F")
                .arg(cfg)
                .args(["-o", "ConnectTimeout=60", host, "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("ssh");
            Some((child, Instant::now(), i))
        })
        .collect();
    let mut times = Vec::new();
    let mut first_error = String::new();
    while running.iter().any(Option::is_some) && started.elapsed() < window {
        for slot in running.iter_mut() {
            let Some((child, t, i)) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                if status.success() {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                } else if first_error.is_empty() {
                    first_error = std::fs::read_to_string(errs.join(format!("{host}-{n}-{i}.err")))
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string();
                }
                *slot = None;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (mut child, _, _) in running.into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
        if first_error.is_empty() {
            first_error = format!("still running after {window:?}");
        }
    }
    let admitted = times.len();
    let (p50, p99) = if times.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
    };
    Outcome {
        admitted,
        p50,
        p99,
        first_error,
    }
}

/// A pause between bursts, so that the sshd and gateway processes of one
/// burst have exited before the next starts.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

pub(crate) fn run(
    s: &Setup,
    table: &mut String,
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let sizes: Vec<usize> = std::env::var("GH_BENCH_BURST")
        .unwrap_or_else(|_| "60,120,200,300".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(env_u64("GH_BENCH_BURST_WINDOW", 60));
    let sqlite = start_gateway(s, "burst-sqlite", false, false);
    let pg = start_gateway(s, "burst-pg", true, false);
    let defaults = start_gateway(s, "burst-defaults", false, true);
    let cfg = client_config(
        s,
        &[
            ("gh-sqlite", &sqlite),
            ("gh-pg", &pg),
            ("gh-defaults", &defaults),
        ],
    );
    let errs = s.dir.path().join("burst-errors");
    std::fs::create_dir_all(&errs).expect("errors dir");
    table.push_str(&format!(
        "burst of `ssh host true` at once, admitted within {}s, p50/p99 ms of the admitted, slowest store write:\n",
        window.as_secs()
    ));
    let mut results = Vec::new();
    for &n in &sizes {
        for (host, gw) in [
            ("direct", None),
            ("gh-sqlite", Some(&sqlite)),
            ("gh-pg", Some(&pg)),
            ("gh-defaults", Some(&defaults)),
        ] {
            let before = gw.map(|g| write_buckets(g.admin));
            let o = burst(&cfg, host, n, window, &errs);
            // The slowest write, and the slowest commit (the rest of a
            // write is waiting for its commit or for a CPU).
            let slowest = match (gw, before) {
                (Some(g), Some(b)) => {
                    let after = write_buckets(g.admin);
                    Some([0, 1].map(|k| slowest_write(&b[k], &after[k])))
                }
                _ => None,
            };
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load = load.split_whitespace().next().unwrap_or("?").to_string();
            table.push_str(&format!(
                "  {n:>4} {host:<10} admitted {:>4}/{n:<4} p50 {:>8.0} ms  p99 {:>8.0} ms{}  (load {load}){}\n",
                o.admitted,
                o.p50,
                o.p99,
                slowest.map(|[w, c]| format!("  store write <= {w} s, commit <= {c} s")).unwrap_or_default(),
                if o.admitted < n { format!("  first refusal: {}", o.first_error) } else { String::new() },
            ));
            results.push(serde_json::json!({
                "n": n, "path": host, "admitted": o.admitted, "p50_ms": o.p50, "p99_ms": o.p99,
                "slowest_store_write_s": slowest.map(|s| s[0]), "slowest_store_commit_s": slowest.map(|s| s[1]),
                "load": load, "first_error": o.first_error,
            }));
            settle();
        }
    }
    // Commits the gateways logged as slow (over 0.5 s), for the reader.
    for name in ["burst-sqlite", "burst-pg", "burst-defaults"] {
        let log =
            std::fs::read_to_string(s.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let slow: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("slow audit commit"))
            .collect();
        table.push_str(&format!("  {name}: {} slow commits logged\n", slow.len()));
        for l in slow.iter().take(5) {
            table.push_str(&format!("    {l}\n"));
        }
    }
    json.insert("burst".into(), serde_json::Value::Array(results));
}
