//! The record holds under attack and failure: a tampered recording is
//! noticed, a runaway `audit query` cannot take the process down, and a
//! cut-off tail is caught by checkpoints anchored outside the database.
//! Real gateway, real sshd, real SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{gatehouse_bin, stdout, Env};
use gatehouse_testkit as kit;

fn psql(db: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .expect("psql (PostgreSQL must run on 127.0.0.1:5432)")
}

/// A PostgreSQL database of its own, dropped at the end.
struct PgDb {
    name: String,
}

impl PgDb {
    fn create(tag: &str) -> PgDb {
        let name = format!("gh_integrity_{tag}_{}", std::process::id());
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        let out = psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgDb { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `gatehouse --config CONFIG args...` with at most 2 GiB of address
/// space: a query that collects rows without bound dies instead of
/// taking the machine with it.
fn gatehouse_bounded(config: &Path, args: &[&str]) -> (kit::Output, Duration) {
    let mut script = format!(
        "ulimit -v 2097152; exec '{}' --config '{}'",
        gatehouse_bin(),
        config.display()
    );
    for a in args {
        script.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
    }
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let started = Instant::now();
    let out = kit::run(cmd, Duration::from_secs(90)).expect("run gatehouse");
    (out, started.elapsed())
}

const ENDLESS: &str = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) ";

/// Runaway queries on one backend: endless rows are cut at the cap while
/// streaming, endless work is stopped by the statement timeout, VACUUM
/// INTO is refused and creates no file, and the store works afterwards.
fn runaway_queries(config: &Path, dir: &Path) {
    let (out, took) = gatehouse_bounded(
        config,
        &[
            "--format",
            "csv",
            "audit",
            "query",
            &format!("{ENDLESS}SELECT n FROM r"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("truncated at 100000 rows"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // Header and 100000 rows.
    assert_eq!(stdout(&out).lines().count(), 100_001);
    assert!(took < Duration::from_secs(60), "{took:?}");

    let (out, took) = gatehouse_bounded(
        config,
        &[
            "audit",
            "query",
            &format!("{ENDLESS}SELECT count(*) FROM r"),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("audit.query_timeout"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(30), "{took:?}");

    let copy = dir.join("copy.db");
    let (out, _) = gatehouse_bounded(
        config,
        &[
            "audit",
            "query",
            &format!("VACUUM INTO '{}'", copy.display()),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(!copy.exists(), "VACUUM INTO created {}", copy.display());

    let (out, _) = gatehouse_bounded(
        config,
        &[
            "--format",
            "json",
            "audit",
            "query",
            "select count(*) as n from events",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

fn query_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("runaway.toml");
    std::fs::write(
        &path,
        format!("[store]\nurl = \"{url}\"\n\n[audit]\nquery_timeout = \"3s\"\n"),
    )
    .unwrap();
    path
}

#[test]
fn a_runaway_query_is_cut_off_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gatehouse.db").display());
    let config = query_config(dir.path(), &url);
    runaway_queries(&config, dir.path());
}

#[test]
fn a_runaway_query_is_cut_off_on_postgresql() {
    let db = PgDb::create("runaway");
    let dir = tempfile::tempdir().unwrap();
    let config = query_config(dir.path(), &db.url());
    runaway_queries(&config, dir.path());
}

#[test]
fn a_bad_query_timeout_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[audit]\nquery_timeout = \"forever\"\n").unwrap();
    let mut cmd = Command::new(gatehouse_bin());
    cmd.arg("--config").arg(&path).arg("check");
    let out = kit::run(cmd, Duration::from_secs(30)).unwrap();
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("audit.query_timeout"), "{}", out.stderr);
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        // The gateway may hold a write lock for a moment.
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn warnings(o: &kit::Output) -> Vec<&str> {
    o.stderr.lines().filter(|l| l.contains("warning")).collect()
}

#[test]
fn a_tampered_recording_is_noticed_by_show_play_export_and_verify() {
    let env = Env::start();
    // A session still running has no digest yet: reading it is no mismatch.
    let mut running = env.alice().ssh(
        env.port,
        "alice:web01@127.0.0.1",
        &["echo still-running; sleep 4"],
    );
    let mut running = running
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh");
    let live = env.wait_rows("select session_id from sessions where end_time is null");
    let live_id = live[0]["session_id"].as_str().unwrap().to_string();
    let live_cast = env
        .dir
        .path()
        .join("recordings")
        .join(format!("{live_id}.cast"));
    for _ in 0..100 {
        if std::fs::read_to_string(&live_cast)
            .unwrap_or_default()
            .contains("still-running")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.gatehouse(&["sessions", "export", &live_id]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).contains("still-running"));
    assert!(warnings(&out).is_empty(), "{}", out.stderr);
    let _ = running.wait();

    let out = env.ssh("alice:web01@127.0.0.1", &["echo recorded-line"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows(
        "select session_id, recording_id from sessions where end_time is not null and session_id != '' order by start_time desc",
    );
    let sid = rows[0]["session_id"].as_str().unwrap().to_string();
    assert_ne!(sid, live_id, "{rows:?}");
    let rec = rows[0]["recording_id"].as_str().unwrap().to_string();
    let cast = env
        .dir
        .path()
        .join("recordings")
        .join(format!("{rec}.cast"));
    // Untouched: every reader is quiet, verify passes.
    for args in [
        vec!["sessions", "show", sid.as_str()],
        vec!["sessions", "export", sid.as_str()],
    ] {
        let out = env.gatehouse(&args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert!(warnings(&out).is_empty(), "{args:?}: {}", out.stderr);
    }
    let out = env.gatehouse(&["audit", "verify", "--recordings"]);
    assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);
    assert!(
        stdout(&out).contains("recordings match"),
        "{}",
        stdout(&out)
    );

    // One byte changed, same size.
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(text.contains("recorded-line"), "{text}");
    std::fs::write(&cast, text.replace("recorded-line", "recorded-lime")).unwrap();

    for (args, action) in [
        (vec!["sessions", "show", sid.as_str()], "show"),
        (vec!["sessions", "export", sid.as_str()], "export"),
        (
            vec!["sessions", "play", sid.as_str(), "--speed", "100"],
            "play",
        ),
    ] {
        let out = env.gatehouse(&args);
        let w = warnings(&out);
        assert_eq!(w.len(), 1, "{action}: {}", out.stderr);
        assert!(
            w[0].contains(&rec) && w[0].contains("changed") && w[0].contains("restore"),
            "{action}: {}",
            w[0]
        );
        let events = env.query(&format!(
            "select severity, details from events where type = 'recording.tampered' and session_id = '{sid}' order by seq"
        ));
        let last = events.last().expect("a recording.tampered event");
        assert_eq!(last["severity"], "high");
        let details: serde_json::Value =
            serde_json::from_str(last["details"].as_str().unwrap()).unwrap();
        assert_eq!(details["action"], action);
        assert_eq!(details["problem"], "modified");
        assert_eq!(details["recording_id"], rec.as_str());
    }
    // The running session's recording was never reported.
    assert!(env
        .query(&format!(
            "select id from events where type = 'recording.tampered' and session_id = '{live_id}'"
        ))
        .is_empty());

    // verify: the chain is fine, the recording is not.
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", stdout(&out));
    let out = env.gatehouse(&["audit", "verify", "--recordings"]);
    assert_eq!(out.code, Some(1), "{}", stdout(&out));
    let failed = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .count();
    assert_eq!(failed, 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&rec) && stdout(&out).contains("modified"),
        "{}",
        stdout(&out)
    );
    // A removed recording is reported too.
    std::fs::remove_file(&cast).unwrap();
    let out = env.gatehouse(&["--format", "json", "audit", "verify", "--recordings"]);
    assert_eq!(out.code, Some(1), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let problems = v["recordings"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["recording_id"], rec.as_str());
    assert!(
        problems[0]["problem"].as_str().unwrap().contains("missing"),
        "{v}"
    );
}

const ANCHORED: &str = "
[audit]
checkpoint_interval = \"1s\"

[[sinks]]
name = \"file\"
kind = \"jsonl\"
path = \"events.jsonl\"
";

/// A session, a clean stop, then the tail (from the session's start) and
/// the checkpoints after it deleted with `exec`: the chain and the
/// checkpoint table still agree; the anchor file and the jsonl sink's
/// file do not.
fn a_cut_tail_is_caught(env: &mut Env, exec: &dyn Fn(&str)) {
    let out = env.ssh("alice:web01@127.0.0.1", &["echo evidence"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    // Through the env's own config: it may name PostgreSQL.
    let mut ended = false;
    for _ in 0..100 {
        let out = env.gatehouse(&[
            "--format",
            "json",
            "audit",
            "query",
            "select id from events where type = 'session.end'",
        ]);
        if stdout(&out).contains("\"id\"") {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ended, "no session.end\n{}", env.gateway_log());
    assert!(env.stop_gateway().expect("stopped").success());
    let anchor = env.dir.path().join("data").join("audit_anchor.jsonl");
    let sink = env.dir.path().join("events.jsonl");
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);
    assert!(stdout(&out).contains("anchored in"), "{}", stdout(&out));
    // The sink holds the checkpoints too, up to the session's end.
    let end_seq = env.gatehouse(&[
        "--format",
        "json",
        "audit",
        "query",
        "select seq from events where type = 'session.end'",
    ]);
    let end_seq = serde_json::from_slice::<serde_json::Value>(&end_seq.stdout).unwrap()[0]["seq"]
        .as_i64()
        .unwrap();
    let sink_seqs: Vec<i64> = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "audit.checkpoint")
        .filter_map(|v| v["details"]["seq"].as_i64())
        .collect();
    assert!(
        sink_seqs.iter().any(|s| *s >= end_seq),
        "{sink_seqs:?} < {end_seq}"
    );

    let start_seq = env.gatehouse(&[
        "--format",
        "json",
        "audit",
        "query",
        "select seq from events where type = 'session.start'",
    ]);
    let start_seq = serde_json::from_slice::<serde_json::Value>(&start_seq.stdout).unwrap()[0]
        ["seq"]
        .as_i64()
        .unwrap();
    exec(&format!(
        "DELETE FROM audit_events WHERE seq >= {start_seq}"
    ));
    exec(&format!(
        "DELETE FROM audit_checkpoints WHERE seq >= {start_seq}"
    ));
    // Without the anchor, nothing in the database tells.
    let moved = env.dir.path().join("anchor.moved");
    std::fs::rename(&anchor, &moved).unwrap();
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", stdout(&out));
    std::fs::rename(&moved, &anchor).unwrap();
    // With it, verify fails and names what is missing.
    let last = start_seq - 1;
    for file in [&anchor, &sink] {
        let out = env.gatehouse(&["audit", "verify", "--anchor", &file.display().to_string()]);
        assert_eq!(out.code, Some(1), "{}", stdout(&out));
        assert!(
            stdout(&out).contains(&format!("the chain ends at seq {last}"))
                && stdout(&out).contains("missing")
                && stdout(&out).contains(&format!("events {start_seq}..=")),
            "{}",
            stdout(&out)
        );
    }
    // The configured anchor file is checked without being named.
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(1), "{}", stdout(&out));
}

#[test]
fn a_cut_tail_is_caught_by_the_anchors_on_sqlite() {
    let mut env = Env::start_with(ANCHORED);
    let db = env.dir.path().join("gatehouse.db");
    a_cut_tail_is_caught(&mut env, &|sql| {
        sqlite3(&db, sql);
    });
}

#[test]
fn a_cut_tail_is_caught_by_the_anchors_on_postgresql() {
    let pg = PgDb::create("anchor");
    let mut env = Env::start_with(ANCHORED);
    env.stop_gateway();
    // A fresh start on PostgreSQL: no sink lines of the SQLite run (nor
    // its anchors: use_store).
    let _ = std::fs::remove_file(env.dir.path().join("events.jsonl"));
    env.use_store(&pg.url());
    env.spawn_gateway();
    let name = pg.name.clone();
    a_cut_tail_is_caught(&mut env, &|sql| {
        let out = psql(&name, sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}
