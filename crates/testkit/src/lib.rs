//! Real OpenSSH programs for Gatehouse's tests: an `sshd` target on an
//! ephemeral loopback port with its own config, host key and
//! authorized_keys in a temp dir; command lines for `ssh`, `scp`, `sftp`
//! and `rsync`; and tmux for tests that need a real terminal.
//!
//! Nothing here is a mock. When a program is missing, the call fails with
//! a message naming the Debian package to install.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod oidc;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

/// Spawns `program`, turning "not found" into an instruction.
fn spawn(cmd: &mut Command, package: &str) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        let program = cmd.get_program().to_string_lossy().to_string();
        if e.kind() == std::io::ErrorKind::NotFound {
            err(format!(
                "{program} is not installed: apt-get install {package}"
            ))
        } else {
            err(format!("cannot start {program}: {e}"))
        }
    })
}

/// A key pair made with the real `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA... comment`, trimmed.
    pub public_line: String,
}

/// `ssh-keygen -t ed25519 -N '' -f DIR/NAME`.
pub fn keygen(dir: &Path, name: &str) -> Result<KeyPair> {
    let private = dir.join(name);
    let out = spawn(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "openssh-client",
    )?
    .wait_with_output()?;
    if !out.status.success() {
        return Err(err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let public_line = std::fs::read_to_string(dir.join(format!("{name}.pub")))?
        .trim()
        .to_string();
    Ok(KeyPair {
        private,
        public_line,
    })
}

/// The OS user running the tests: the login the target sshd accepts.
pub fn current_login() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_string())
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(err(format!(
        "nothing listens on 127.0.0.1:{port} after {timeout:?}"
    )))
}

/// A real sshd target.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `SHA256:...` as `ssh-keygen -l` prints it.
    pub host_key_fingerprint: String,
    pub host_public_line: String,
    child: Child,
}

const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    pub fn start(authorized_keys: &[String]) -> Result<Sshd> {
        Sshd::start_with(authorized_keys, "")
    }

    /// Starts sshd with `extra_config` lines appended to its config.
    pub fn start_with(authorized_keys: &[String], extra_config: &str) -> Result<Sshd> {
        if !Path::new(SSHD).exists() {
            return Err(err(format!(
                "{SSHD} is not installed: apt-get install openssh-server"
            )));
        }
        let dir = tempfile::tempdir()?;
        let host = keygen(dir.path(), "host_ed25519")?;
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.path().join("host_ed25519.pub"))
            .output()?;
        let host_key_fingerprint = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| err("ssh-keygen -l printed no fingerprint"))?
            .to_string();
        let ak = dir.path().join("authorized_keys");
        std::fs::write(&ak, authorized_keys.join("\n") + "\n")?;
        set_mode(&ak, 0o600)?;
        // sshd needs its privilege separation directory when run as root.
        if current_login() == "root" {
            let _ = std::fs::create_dir_all("/run/sshd");
            let _ = set_mode(Path::new("/run/sshd"), 0o755);
        }
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             Subsystem sftp internal-sftp\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             AcceptEnv LANG LC_* GH_TEST_*\n\
             PermitUserEnvironment no\n\
             LogLevel VERBOSE\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             {extra_config}\n"
        );
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("sshd.log"))?;
        let child = spawn(
            Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            "openssh-server",
        )?;
        let mut sshd = Sshd {
            port,
            dir,
            host_key_fingerprint,
            host_public_line: host.public_line,
            child,
        };
        if let Err(e) = wait_for_port(port, Duration::from_secs(10)) {
            let _ = sshd.child.kill();
            return Err(err(format!("sshd did not start ({e}):\n{}", sshd.log())));
        }
        Ok(sshd)
    }

    /// sshd's own log (it runs with `-e`).
    /// The listening sshd's process id (its sessions are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_public_line)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Command lines for the real OpenSSH clients with options that make them
/// deterministic in tests (no config files, no prompts, no known_hosts).
#[derive(Debug, Clone)]
pub struct Client {
    pub key: PathBuf,
    /// `-o User=...`: how scp, sftp and rsync name a Gatehouse target,
    /// since they would read the `:` of `alice:web01@gw:path` as the
    /// host/path separator.
    pub user: Option<String>,
}

impl Client {
    pub fn new(key: &Path) -> Client {
        Client {
            key: key.to_path_buf(),
            user: None,
        }
    }

    /// The same client with `-o User=USER`.
    pub fn with_user(&self, user: &str) -> Client {
        Client {
            key: self.key.clone(),
            user: Some(user.to_string()),
        }
    }

    pub fn opts(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(self.key.display().to_string());
        if let Some(user) = &self.user {
            v.push("-o".into());
            v.push(format!("User={user}"));
        }
        v
    }

    pub fn ssh(&self, port: u16, destination: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts())
            .args(["-p", &port.to_string()])
            .arg(destination)
            .args(args);
        c
    }

    pub fn scp(&self, port: u16, args: &[&str]) -> Command {
        let mut c = Command::new("scp");
        c.args(self.opts())
            .args(["-P", &port.to_string()])
            .args(args);
        c
    }

    /// `sftp -b BATCH`; the returned file must outlive the command.
    pub fn sftp_batch(
        &self,
        port: u16,
        destination: &str,
        batch: &str,
    ) -> (Command, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file for the sftp batch");
        file.write_all(batch.as_bytes())
            .expect("write the sftp batch");
        let mut c = Command::new("sftp");
        c.args(self.opts())
            .args(["-P", &port.to_string(), "-b"])
            .arg(file.path())
            .arg(destination);
        (c, file)
    }

    pub fn rsync(&self, port: u16, args: &[&str]) -> Command {
        let mut c = Command::new("rsync");
        let ssh = format!("ssh {} -p {port}", self.opts().join(" "));
        c.arg("-e").arg(ssh).args(args);
        c
    }
}

/// What a finished program printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` with stdin closed, capturing its output; kills it after
/// `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Result<Output> {
    run_with_input(cmd, &[], timeout)
}

/// Runs `cmd`, writing `input` to its stdin and then closing it.
pub fn run_with_input(mut cmd: Command, input: &[u8], timeout: Duration) -> Result<Output> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = spawn(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "openssh-client",
    )?;
    let mut stdin = child.stdin.take().ok_or_else(|| err("no stdin"))?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().ok_or_else(|| err("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| err("no stderr"))?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("{name} did not finish within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).to_string();
    Ok(Output {
        code: status.code(),
        status,
        stdout,
        stderr,
    })
}

static TMUX_SEQ: AtomicU64 = AtomicU64::new(0);

/// A detached tmux session (120x40) running one command: a real terminal.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(command: &str) -> Result<Tmux> {
        let socket = format!(
            "gh-test-{}-{}",
            std::process::id(),
            TMUX_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let t = Tmux { socket };
        let out = spawn(
            Command::new("tmux")
                .args(["-L", &t.socket, "-f", "/dev/null"])
                .args(["new-session", "-d", "-s", "main", "-x", "120", "-y", "40"])
                .arg(command)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            "tmux",
        )?
        .wait_with_output()?;
        if !out.status.success() {
            return Err(err(format!(
                "tmux new-session failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // Keep the pane after the command exits so the last screen can be read.
        let _ = t.tmux(&["set-option", "-t", "main", "remain-on-exit", "on"]);
        Ok(t)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "tmux {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `send-keys` with tmux key names (`Enter`, `Up`, `C-c`, ...).
    pub fn send_keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.tmux(&args).map(|_| ())
    }

    /// Types `text` literally.
    pub fn send_literal(&self, text: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "main", "-l", text])
            .map(|_| ())
    }

    pub fn capture(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "main"])
    }

    /// Resizes the window, as a user resizing their terminal would.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.tmux(&[
            "resize-window",
            "-t",
            "main",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ])
        .map(|_| ())
    }

    /// Polls the screen until it contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.capture()?;
            if last.contains(needle) {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err(format!(
            "{needle:?} did not appear within {timeout:?}; screen:\n{last}"
        )))
    }

    pub fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", "main"]).is_ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_sshd_runs_commands_with_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let key = keygen(dir.path(), "user").unwrap();
        let sshd = Sshd::start(std::slice::from_ref(&key.public_line)).unwrap();
        assert!(sshd.host_key_fingerprint.starts_with("SHA256:"));
        let c = Client::new(&key.private);
        let dest = format!("{}@127.0.0.1", current_login());
        let out = run(
            c.ssh(sshd.port, &dest, &["echo", "hi"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, sshd.log());
        assert_eq!(out.stdout, b"hi\n");
        let out = run(
            c.ssh(sshd.port, &dest, &["exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.code, Some(3));
        let out = run_with_input(
            c.ssh(sshd.port, &dest, &["cat"]),
            b"piped",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.stdout, b"piped");
    }

    #[test]
    fn tmux_shows_what_a_program_prints() {
        let t = Tmux::start("sh").unwrap();
        t.send_literal("echo tmux-$((20+22))").unwrap();
        t.send_keys(&["Enter"]).unwrap();
        let screen = t.wait_for("tmux-42", Duration::from_secs(10)).unwrap();
        assert!(screen.contains("tmux-42"));
        assert!(t.alive());
    }
}
