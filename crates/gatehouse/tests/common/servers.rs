//! The real servers a multi-node test runs beside the gateway: a database
//! of its own on the local PostgreSQL, s3s-fs (an S3-protocol server that
//! checks SigV4), HAProxy, and more gateway processes. Each is stopped
//! (and the database dropped) when its value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit as kit;

/// The longest a server is waited for.
const W: Duration = Duration::from_secs(30);

pub fn psql(db: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
        .output()
        .expect("psql (PostgreSQL must run on 127.0.0.1:5432)")
}

/// A database of its own, dropped at the end.
pub struct Database(pub String);

impl Database {
    /// `tag` names the test file: the tests of a file run in parallel,
    /// and so do the test binaries.
    pub fn create(tag: &str) -> Database {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gh_{tag}_{}_{n}", std::process::id());
        let _ = psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        let out = psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Database(name)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}

/// A gateway process, killed when the value is dropped.
pub struct Node {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub port: u16,
}

impl Node {
    /// `gatehouse serve --config CONFIG` with `envs`, its log in `log`;
    /// returns once `port` accepts connections.
    pub fn spawn(config: &Path, log: &Path, port: u16, envs: &[(String, String)]) -> Node {
        let file = std::fs::File::create(log).expect("log");
        let child = Command::new(super::gatehouse_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("GATEHOUSE_LOG", "info,russh=warn")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn gateway");
        let node = Node {
            child: Some(child),
            log: log.to_path_buf(),
            port,
        };
        if let Err(e) = kit::wait_for_port(port, Duration::from_secs(20)) {
            panic!("gateway did not start: {e}\n{}", node.log());
        }
        node
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then waits (bounded) for the process to exit; true when
    /// it exited with success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + W;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `kill -9`: nothing of the process's shutdown runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub const S3_KEY: &str = "gatehouse-test";
pub const S3_SECRET: &str = "s3cret-key-for-tests";

fn s3s_fs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/s3s/bin/s3s-fs");
    let home = std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"));
    [Ok(root), home]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .expect("s3s-fs is not installed: run scripts/deps.sh")
}

/// s3s-fs on a free port with one bucket, `bucket`, under `root`,
/// accepting requests signed with [`S3_KEY`] / [`S3_SECRET`].
pub struct S3 {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
}

impl S3 {
    pub fn start(root: PathBuf) -> S3 {
        std::fs::create_dir_all(root.join("bucket")).expect("bucket dir");
        let port = kit::free_port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        kit::wait_for_port(port, W).expect("s3s-fs listens");
        S3 { child, port, root }
    }

    /// The environment a gateway (or CLI) needs to use this server with
    /// `secret`.
    pub fn env(&self, secret: &str) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The chunk objects of recording `id` under `bucket/rec`, as s3s-fs
    /// stores them.
    pub fn chunks(&self, id: &str) -> Vec<PathBuf> {
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

    /// Recording `id` as a reader of the bucket sees it: its chunks in
    /// order.
    pub fn recording(&self, id: &str) -> Vec<u8> {
        self.chunks(id)
            .iter()
            .flat_map(|p| std::fs::read(p).expect("read chunk"))
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy (Debian's package, installed by scripts/deps.sh) running
/// `sections` after a TCP-mode `defaults`; returns once every port of
/// `ports` listens.
pub struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(sections: &str, ports: &[u16]) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("HAProxy is not installed: apt-get install haproxy (scripts/deps.sh does)");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{sections}"
            ),
        )
        .expect("write haproxy.cfg");
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        for port in ports {
            kit::wait_for_port(*port, Duration::from_secs(10)).expect("haproxy listens");
        }
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gatehouse --config CONFIG --format json args...` and parses it.
pub fn json(config: &Path, args: &[&str]) -> serde_json::Value {
    json_with(config, &[], args)
}

/// [`json`] with environment variables (an S3 bucket's, say).
pub fn json_with(config: &Path, envs: &[(String, String)], args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(super::gatehouse_bin());
    cmd.arg("--config")
        .arg(config)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .args(["--format", "json"])
        .args(args);
    let out = kit::run(cmd, super::T).expect("run gatehouse");
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `gatehouse nodes` as (name → row).
pub fn nodes(config: &Path) -> Rows {
    json(config, &["nodes"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n["name"].as_str().unwrap_or_default().to_string(), n))
        .collect()
}

/// Polls `gatehouse nodes` until `done` holds for the rows.
pub fn wait_nodes(
    config: &Path,
    what: &str,
    logs: &dyn Fn() -> String,
    done: impl Fn(&Rows) -> bool,
) -> Rows {
    let deadline = Instant::now() + W;
    loop {
        let rows = nodes(config);
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {rows:#?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `audit query` until it returns at least one row.
pub fn wait_rows(config: &Path, sql: &str, logs: &dyn Fn() -> String) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + W;
    loop {
        let rows = json(config, &["audit", "query", sql])
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !rows.is_empty() {
            return rows;
        }
        assert!(Instant::now() < deadline, "no rows for {sql}\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub type Rows = std::collections::BTreeMap<String, serde_json::Value>;

/// `key` of `node`'s row (null when the node is not listed).
pub fn field(rows: &Rows, node: &str, key: &str) -> serde_json::Value {
    rows.get(node)
        .map(|n| n[key].clone())
        .unwrap_or(serde_json::Value::Null)
}

pub fn state(rows: &Rows, node: &str) -> String {
    field(rows, node, "state")
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

/// Node A's config (the Env's) on PostgreSQL as `node-a`, and node B's
/// beside it: its own port, recordings and anchor file.
pub fn configure(env: &super::Env, url: &str, port_b: u16) -> PathBuf {
    let text = super::on_store(
        &std::fs::read_to_string(&env.config_path).expect("read config"),
        url,
    );
    let a = text.replace("node = \"test-node\"", "node = \"node-a\"")
        + "\n[audit]\nanchor_file = \"anchor-a.jsonl\"\n";
    std::fs::write(&env.config_path, a).expect("write config a");
    let b = text
        .replace("node = \"test-node\"", "node = \"node-b\"")
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", env.port),
            &format!("listen = \"127.0.0.1:{port_b}\""),
        )
        .replace("dir = \"recordings\"", "dir = \"recordings-b\"")
        + "\n[audit]\nanchor_file = \"anchor-b.jsonl\"\n";
    let path = env.dir.path().join("node-b.toml");
    std::fs::write(&path, b).expect("write config b");
    path
}

/// Waits for `child` to exit (the session it runs was ended).
pub fn ended(child: &mut Child, what: &str, logs: &dyn Fn() -> String) {
    let start = Instant::now();
    while start.elapsed() < W {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("{what} still runs\n{}", logs());
}
