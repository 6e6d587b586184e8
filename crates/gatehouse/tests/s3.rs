//! Recordings in object storage: a real S3-protocol server (s3s-fs,
//! installed by scripts/deps.sh, checking SigV4 against its access key),
//! a real interactive session through tmux, chunks visible while the
//! session runs, export and `audit verify --recordings` reading them back.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::servers::{S3, S3_SECRET};
use common::{stdout, Env};
use gatehouse_testkit::Tmux;

const W: Duration = Duration::from_secs(20);
const SECRET: &str = S3_SECRET;

/// A gateway whose `[recording]` names the bucket, with `secret`.
fn gateway(s3: &S3, secret: &str) -> Env {
    let mut env = Env::start();
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    let config = config.replacen(
        "dir = \"recordings\"\n",
        "dir = \"recordings\"\nurl = \"s3://bucket/rec\"\n",
        1,
    );
    assert!(config.contains("s3://bucket/rec"));
    std::fs::write(&env.config_path, config).unwrap();
    let vars = s3.env(secret);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.restart_with_env(&vars);
    env
}

fn type_and_wait(tmux: &Tmux, text: &str, expect: &str) {
    tmux.send_literal(text).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for(expect, W).expect("screen");
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_session_is_recorded_into_the_bucket_as_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path().join("s3"));
    let env = gateway(&s3, SECRET);
    let opts = env.alice().opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} alice:web01@127.0.0.1 'PS1=\"gh$ \" exec bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", W).expect("prompt");
    let sid = env.wait_rows("select session_id from sessions")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The header is stored as the session starts…
    assert_eq!(
        s3.chunks(&sid).len(),
        1,
        "header chunk: {}",
        env.gateway_log()
    );
    type_and_wait(&tmux, "echo s3-$((6*7))", "s3-42");
    std::thread::sleep(Duration::from_millis(2200));
    type_and_wait(&tmux, "echo again-$((2*3))", "again-6");
    // … and what follows within about two seconds, before the session ends.
    let start = Instant::now();
    while s3.chunks(&sid).len() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let running = s3.chunks(&sid);
    assert!(running.len() >= 2, "chunks while running: {running:?}");
    let so_far: String = running
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(so_far.contains("s3-42"), "{so_far}");

    tmux.send_literal("exit").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    let rows = env.wait_rows(&format!(
        "select recording_sha256 from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let sha = rows[0]["recording_sha256"]
        .as_str()
        .expect("digest")
        .to_string();

    let out_path = env.dir.path().join("export.cast");
    let out = env.gatehouse(&["sessions", "export", &sid, "-o", out_path.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(sha256_of(&out_path), sha, "export differs from session.end");
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(text.contains("again-6"));
    assert!(s3.chunks(&sid).len() > running.len(), "last chunk stored");

    let out = env.gatehouse(&["audit", "verify", "--recordings"]);
    assert_eq!(out.code, Some(0), "{}\n{}", stdout(&out), out.stderr);
    // Nothing went to the local directory.
    assert!(!env
        .dir
        .path()
        .join("recordings")
        .join(format!("{sid}.cast"))
        .exists());
}

#[test]
fn a_wrong_secret_refuses_the_session_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3::start(tmp.path().join("s3"));
    let env = gateway(&s3, "not-the-secret");
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "ran"]);
    assert!(!stdout(&out).contains("ran"), "ran without a recording");
    let line: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("recording is required"))
        .collect();
    assert_eq!(line.len(), 1, "stderr: {}", out.stderr);
    assert!(
        line[0].contains("s3://bucket/rec/") && line[0].contains("403"),
        "{}",
        line[0]
    );
    let rows = env.wait_rows("SELECT reason FROM events WHERE type = 'recording.failed'");
    assert!(rows[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("s3://bucket/rec/"));
}
