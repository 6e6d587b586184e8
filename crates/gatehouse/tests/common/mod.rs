//! A real sshd target and a real gateway process for each test.

#![allow(dead_code)]

pub mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse_testkit::{self as kit, Client, KeyPair, Sshd};

pub const T: Duration = Duration::from_secs(60);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sshd: Sshd,
    pub alice: KeyPair,
    pub bob: KeyPair,
    pub login: String,
    pub port: u16,
    pub config_path: PathBuf,
    pub gateway: Option<Child>,
    /// Environment variables for the gateway and `gatehouse` commands
    /// (set with [`Env::restart_with_env`]).
    pub extra_env: Vec<(String, String)>,
}

pub fn gatehouse_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// The config every test starts from: targets on the real sshd (pinned,
/// TOFU, down, wrong key), a `dev` role for alice, bob without roles.
pub fn base_config(
    env_dir: &Path,
    port: u16,
    sshd: &Sshd,
    login: &str,
    alice: &str,
    bob: &str,
    extra: &str,
) -> String {
    let closed = kit::free_port();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
host_key = "host_ed25519"
node = "test-node"

[upstream]
key = "client_ed25519"
connect_timeout = "5s"

[store]
url = "sqlite://{db}"

[recording]
dir = "recordings"

[[targets]]
name = "web01"
address = "{addr}"
labels = {{ env = "test", team = "web" }}
host_key = "{fp}"
default_login = "{login}"

[[targets]]
name = "tofu01"
address = "{addr}"
labels = {{ env = "test" }}
tofu = true
default_login = "{login}"

[[targets]]
name = "down01"
address = "127.0.0.1:{closed}"
labels = {{ env = "test" }}
tofu = true
default_login = "{login}"

[[targets]]
name = "evil01"
address = "{addr}"
labels = {{ env = "test" }}
host_key = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
default_login = "{login}"

[[targets]]
name = "prod01"
address = "{addr}"
labels = {{ env = "prod" }}
host_key = "{fp}"
default_login = "{login}"

[[roles]]
name = "dev"
allow = [{{ targets = {{ env = "test" }}, logins = ["{login}"] }}]
deny = [{{ commands = ["^rm -rf /"] }}]
port_forwarding = true

[[users]]
name = "alice"
keys = ["{alice}"]
roles = ["dev"]

[[users]]
name = "bob"
keys = ["{bob}"]
roles = []
{extra}
"#,
        db = env_dir.join("gatehouse.db").display(),
        addr = sshd.address(),
        fp = sshd.host_key_fingerprint,
    )
}

impl Env {
    pub fn start() -> Env {
        Env::start_with("")
    }

    /// `extra` is appended to the config (more roles, users, sections).
    pub fn start_with(extra: &str) -> Env {
        Env::start_full(extra, "")
    }

    /// As [`Env::start_with`], with `upstream_extra` lines added to the
    /// `[upstream]` section.
    pub fn start_full(extra: &str, upstream_extra: &str) -> Env {
        Env::start_all(extra, upstream_extra, "")
    }

    /// As [`Env::start_with`], with `server_extra` lines added to the
    /// `[server]` section (limits, grace time).
    pub fn start_server(server_extra: &str, extra: &str) -> Env {
        Env::start_all(extra, "", server_extra)
    }

    fn start_all(extra: &str, upstream_extra: &str, server_extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = kit::keygen(dir.path(), "client_ed25519").expect("keygen");
        kit::keygen(dir.path(), "host_ed25519").expect("keygen");
        let alice = kit::keygen(dir.path(), "alice").expect("keygen");
        let bob = kit::keygen(dir.path(), "bob").expect("keygen");
        let sshd = Sshd::start(std::slice::from_ref(&upstream.public_line)).expect("start sshd");
        let login = kit::current_login();
        let port = kit::free_port();
        let config = base_config(
            dir.path(),
            port,
            &sshd,
            &login,
            &alice.public_line,
            &bob.public_line,
            extra,
        )
        .replace(
            "connect_timeout = \"5s\"\n",
            &format!("connect_timeout = \"5s\"\n{upstream_extra}\n"),
        )
        .replace(
            "node = \"test-node\"\n",
            &format!("node = \"test-node\"\n{server_extra}\n"),
        );
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut env = Env {
            dir,
            sshd,
            alice,
            bob,
            login,
            port,
            config_path,
            gateway: None,
            extra_env: Vec::new(),
        };
        env.spawn_gateway();
        env
    }

    pub fn spawn_gateway(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("gateway.log")).expect("log");
        let child = Command::new(gatehouse_bin())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("GATEHOUSE_LOG", "info,russh=warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        self.gateway = Some(child);
        if let Err(e) = kit::wait_for_port(self.port, Duration::from_secs(20)) {
            panic!("gateway did not start: {e}\n{}", self.gateway_log());
        }
    }

    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("gateway running").id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.gateway_pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn client(&self, key: &KeyPair) -> Client {
        Client::new(&key.private)
    }

    pub fn alice(&self) -> Client {
        self.client(&self.alice)
    }

    /// `ssh -p PORT DEST args...` as alice, returning the output.
    pub fn ssh(&self, dest: &str, args: &[&str]) -> kit::Output {
        kit::run(self.alice().ssh(self.port, dest, args), T).expect("run ssh")
    }

    /// Runs `gatehouse --config CONFIG args...`.
    pub fn gatehouse(&self, args: &[&str]) -> kit::Output {
        let mut cmd = Command::new(gatehouse_bin());
        cmd.arg("--config").arg(&self.config_path).args(args);
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        kit::run(cmd, T).expect("run gatehouse")
    }

    /// `audit query` as JSON rows.
    pub fn query(&self, sql: &str) -> Vec<serde_json::Value> {
        // A config of its own, so that tests can break the gateway's.
        let query_config = self.dir.path().join("query.toml");
        if !query_config.exists() {
            let url = format!(
                "sqlite://{}",
                self.dir.path().join("gatehouse.db").display()
            );
            std::fs::write(&query_config, format!("[store]\nurl = \"{url}\"\n"))
                .expect("write query.toml");
        }
        let mut cmd = Command::new(gatehouse_bin());
        cmd.arg("--config")
            .arg(&query_config)
            .args(["--format", "json", "audit", "query", sql]);
        let out = kit::run(cmd, T).expect("run gatehouse audit query");
        assert_eq!(out.code, Some(0), "query failed: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Polls the audit trail until `sql` returns at least one row
    /// (events after a session ends are written asynchronously).
    pub fn wait_rows(&self, sql: &str) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let rows = self.query(sql);
            if !rows.is_empty() {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no rows for {sql}\n{}", self.gateway_log());
    }

    /// Targets `web02`..`webNN` (`n` in all with web01), each on a real
    /// sshd of its own that trusts the gateway's upstream key, pinned and
    /// labelled like web01 so alice's `dev` role reaches them; the gateway
    /// is restarted with them. Returns the new sshds in order.
    pub fn add_web_targets(&mut self, n: usize) -> Vec<Sshd> {
        let names: Vec<String> = (2..=n).map(|i| format!("web{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.add_targets(&names, "")
    }

    /// Targets named `names`, as [`Env::add_web_targets`] makes them, on
    /// sshds with `sshd_extra` lines in their config.
    pub fn add_targets(&mut self, names: &[&str], sshd_extra: &str) -> Vec<Sshd> {
        let upstream = std::fs::read_to_string(self.dir.path().join("client_ed25519.pub"))
            .expect("upstream key")
            .trim()
            .to_string();
        let mut sshds = Vec::new();
        let mut text = String::new();
        for name in names {
            let sshd =
                Sshd::start_with(std::slice::from_ref(&upstream), sshd_extra).expect("start sshd");
            text.push_str(&format!(
                "\n[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nlabels = {{ env = \"test\", team = \"web\" }}\nhost_key = \"{}\"\ndefault_login = \"{}\"\n",
                sshd.address(),
                sshd.host_key_fingerprint,
                self.login
            ));
            sshds.push(sshd);
        }
        let mut config = std::fs::read_to_string(&self.config_path).expect("read config");
        config.push_str(&text);
        std::fs::write(&self.config_path, config).expect("write config");
        self.stop_gateway();
        self.spawn_gateway();
        sshds
    }

    /// Restarts the gateway with these environment variables, which
    /// [`Env::gatehouse`] then passes too.
    pub fn restart_with_env(&mut self, vars: &[(&str, &str)]) {
        self.extra_env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.stop_gateway();
        self.spawn_gateway();
    }

    /// Switches the config (the gateway's and the CLI's, and
    /// [`Env::query`]'s) to the store at `url`; takes effect at the
    /// gateway's next start. The anchor file goes: its checkpoints are of
    /// the old store's chain.
    pub fn use_store(&self, url: &str) {
        let _ = std::fs::remove_file(self.dir.path().join("data").join("audit_anchor.jsonl"));
        std::fs::write(
            self.dir.path().join("query.toml"),
            format!("[store]\nurl = \"{url}\"\n"),
        )
        .expect("write query.toml");
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, on_store(&text, url)).expect("write config");
    }

    pub fn stop_gateway(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.gateway.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn stdout(o: &kit::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A TCP connection to the gateway's `port` from `source`, another
/// loopback address than the 127.0.0.1 every other client of a test
/// uses.
pub fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: std::net::SocketAddr = format!("{source}:0").parse().expect("source address");
    sock.bind(&from.into()).expect("bind to the source address");
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .expect("gateway address");
    sock.connect(&to.into()).expect("connect to the gateway");
    sock.into()
}

/// A config's text with its SQLite `[store] url` replaced by `url`.
pub fn on_store(config: &str, url: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("url = \"sqlite://") {
                format!("url = \"{url}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
