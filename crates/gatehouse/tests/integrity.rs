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

/// Switches the env's config (and its query config) to `url`.
fn use_store(env: &Env, url: &str) {
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let text = text
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
    std::fs::write(&env.config_path, text).unwrap();
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
