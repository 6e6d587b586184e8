//! Recordings in object storage: a real S3-protocol server (s3s-fs,
//! installed by scripts/deps.sh, checking SigV4 against its access key),
//! a real interactive session through tmux, chunks visible while the
//! session runs, export and `audit verify --recordings` reading them back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stdout, Env};
use gatehouse_testkit::{self as kit, Tmux};

const W: Duration = Duration::from_secs(20);
const KEY: &str = "gatehouse-test";
const SECRET: &str = "s3cret-key-for-tests";

fn s3s_fs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/s3s/bin/s3s-fs");
    let home = std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"));
    [Ok(root), home]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .expect("s3s-fs is not installed: run scripts/deps.sh")
}

/// s3s-fs on a free port with one bucket, `bucket`, under `root`.
struct S3 {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl S3 {
    fn start(root: PathBuf) -> S3 {
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let port = kit::free_port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        kit::wait_for_port(port, W).expect("s3s-fs listens");
        S3 { child, port, root }
    }

    /// The chunk objects of recording `id`, as s3s-fs stores them.
    fn chunks(&self, id: &str) -> Vec<PathBuf> {
        let dir = self.root.join("bucket/rec").join(format!("{id}.cast"));
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
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    env.restart_with_env(&[
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ]);
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
