//! Clients other than OpenSSH through the gateway, each against a real
//! sshd target: paramiko and asyncssh (Python scripts under
//! `tests/interop/`, run with the venv `scripts/deps.sh` makes in
//! `target/interop-venv`), Dropbear's `dbclient`, PuTTY's `plink`, `psftp`
//! and `pscp`, and `lftp` over `sftp://`. Every client checks the
//! gateway's host key (known_hosts, `-hostkey`), never a prompt.
//!
//! What a client cannot do is left out rather than faked: plink and psftp
//! take one `-i` key (more only through Pageant), so "several keys" runs
//! with paramiko, asyncssh and dbclient; pscp has no rename or remove, so
//! it only uploads and downloads; key + TOTP runs with the two libraries
//! (plink and dbclient would need the code typed into a terminal); several
//! channels on one connection runs with asyncssh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, T};
use gatehouse_testkit::{self as kit, KeyPair};

/// The interpreter of the venv with paramiko and asyncssh.
fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/interop-venv/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/deps.sh` (it makes the venv with paramiko and asyncssh)",
        p.display()
    );
    p
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// `[127.0.0.1]:PORT <gateway host key>` in a file of its own.
fn known_hosts(env: &Env) -> PathBuf {
    let path = env.dir.path().join("gateway_known_hosts");
    if !path.exists() {
        let public = std::fs::read_to_string(env.dir.path().join("host_ed25519.pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
        std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {blob}\n", env.port)).unwrap();
    }
    path
}

/// The gateway's host key as `SHA256:...`.
fn host_fingerprint(env: &Env) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(env.dir.path().join("host_ed25519.pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// Who logs in and how.
#[derive(Clone)]
struct Login<'a> {
    user: &'a str,
    keys: Vec<&'a Path>,
    password: Option<&'a str>,
}

fn key_login<'a>(user: &'a str, key: &'a KeyPair) -> Login<'a> {
    Login {
        user,
        keys: vec![key.private.as_path()],
        password: None,
    }
}

/// Runs `tests/interop/{lib}_client.py` and returns the JSON it prints.
fn py(env: &Env, lib: &str, login: &Login, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(script(&format!("{lib}_client.py")))
        .args(["--port", &env.port.to_string(), "--user", login.user])
        .arg("--known-hosts")
        .arg(known_hosts(env));
    for k in &login.keys {
        cmd.arg("--key").arg(k);
    }
    if let Some(p) = login.password {
        cmd.args(["--password", p]);
    }
    cmd.args(args);
    let out =
        kit::run(cmd, T).unwrap_or_else(|e| panic!("{lib} {args:?}: {e}\n{}", env.gateway_log()));
    assert_eq!(
        out.code,
        Some(0),
        "{lib} {args:?} failed:\n{}\n{}",
        out.stderr,
        env.gateway_log()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{lib}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `key.ppk` for plink, psftp and pscp (`puttygen KEY -O private`).
fn ppk(key: &Path) -> PathBuf {
    let out = key.with_extension("ppk");
    if !out.exists() {
        let o = Command::new("puttygen")
            .arg(key)
            .args(["-O", "private", "-o"])
            .arg(&out)
            .output()
            .expect("puttygen (apt-get install putty-tools)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out
}

/// The key in Dropbear's format (`dropbearconvert openssh dropbear`).
fn dropbear_key(key: &Path) -> PathBuf {
    let out = key.with_extension("dropbear");
    if !out.exists() {
        let o = Command::new("dropbearconvert")
            .args(["openssh", "dropbear"])
            .arg(key)
            .arg(&out)
            .output()
            .expect("dropbearconvert (apt-get install dropbear-bin)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out
}

/// `plink -ssh -batch` to the gateway as `user`, pinned to its host key.
fn plink(env: &Env, user: &str, auth: &[&str]) -> Command {
    let mut cmd = Command::new("plink");
    cmd.args(["-ssh", "-batch", "-noagent", "-P", &env.port.to_string()])
        .args(["-hostkey", &host_fingerprint(env)])
        .args(["-l", user])
        .args(auth);
    cmd
}

/// `plink`'s key arguments.
fn ppk_args(key: &Path) -> Vec<String> {
    vec!["-i".into(), ppk(key).display().to_string()]
}

/// `dbclient` to the gateway as `user`. Its HOME holds a known_hosts with
/// the gateway's key, so the host key is checked, not accepted (Dropbear
/// 2022.83 matches the host name alone, without `[host]:port`; an unknown
/// key is a prompt on /dev/tty, which fails without a terminal).
fn dbclient(env: &Env, user: &str, keys: &[&Path]) -> Command {
    let home = env.dir.path().join("dbhome");
    if !home.join(".ssh/known_hosts").exists() {
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let line = std::fs::read_to_string(known_hosts(env))
            .unwrap()
            .replace(&format!("[127.0.0.1]:{} ", env.port), "127.0.0.1 ");
        std::fs::write(home.join(".ssh/known_hosts"), line).unwrap();
    }
    let mut cmd = Command::new("dbclient");
    cmd.env("HOME", &home).env_remove("SSH_AUTH_SOCK").args([
        "-p",
        &env.port.to_string(),
        "-l",
        user,
    ]);
    for k in keys {
        cmd.arg("-i").arg(dropbear_key(k));
    }
    cmd
}

/// `SHA256:...` of a public key file.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn pub_of(key: &KeyPair) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.private.display()))
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// Runs `cmd` (stdin from `stdin` when given) and expects it to finish.
fn run(mut cmd: Command, stdin: Option<&Path>, what: &str) -> kit::Output {
    match stdin {
        Some(path) => {
            // kit::run closes stdin; stream the file instead.
            cmd.stdin(std::fs::File::open(path).unwrap())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
            let o = wait_output(child, what);
            kit::Output {
                code: o.status.code(),
                status: o.status,
                stdout: o.stdout,
                stderr: String::from_utf8_lossy(&o.stderr).to_string(),
            }
        }
        None => kit::run(cmd, T).unwrap_or_else(|e| panic!("{what}: {e}")),
    }
}

/// `wait_with_output` with the suite's timeout.
fn wait_output(child: std::process::Child, what: &str) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(T) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} did not finish within {T:?}");
        }
    }
}

/// A TCP echo server on 127.0.0.1; returns its port.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut r = stream;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

/// The session whose exec command is exactly `command`.
fn session_of_command(env: &Env, command: &str) -> String {
    let rows = env.wait_rows(&format!(
        "select session_id from commands where command = '{}'",
        command.replace('\'', "''")
    ));
    rows[0]["session_id"].as_str().unwrap().to_string()
}

/// Polls until `sql` returns at least `n` rows.
fn wait_count(env: &Env, sql: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let rows = env.query(sql);
        if rows.len() >= n {
            return rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("fewer than {n} rows for {sql}: {:?}", env.query(sql));
}

fn ended(env: &Env, session: &str) -> serde_json::Value {
    env.wait_rows(&format!(
        "select exit_status, bytes_in, bytes_out, user, target from sessions \
         where session_id = '{session}' and end_time is not null"
    ))[0]
        .clone()
}

const TWENTY_MB: usize = 20 * 1024 * 1024;

#[test]
fn exec_with_exit_status_and_20_mb_of_stdin() {
    let env = Env::start();
    let data = env.dir.path().join("stdin.bin");
    std::fs::write(&data, pattern(TWENTY_MB, 3)).unwrap();
    let want = sha256_file(&data);
    // The target checksums what reached it and exits 3; the comment tells
    // the clients' sessions apart in the audit trail.
    let command = |client: &str| format!("sha256sum | cut -d' ' -f1; exit 3 # {client}");
    let check = |client: &str, stdout: &str, exit: i64| {
        assert_eq!(stdout.trim(), want, "{client}: checksum on the target");
        assert_eq!(exit, 3, "{client}: exit status");
        let session = session_of_command(&env, &command(client));
        let row = ended(&env, &session);
        assert_eq!(row["exit_status"], 3, "{client}: {row}");
        assert_eq!(row["user"], "alice");
        assert_eq!(row["target"], "web01");
        assert!(
            row["bytes_in"].as_u64().unwrap() >= TWENTY_MB as u64,
            "{client}: {row}"
        );
    };

    for lib in ["paramiko", "asyncssh"] {
        let r = py(
            &env,
            lib,
            &key_login("alice:web01", &env.alice),
            &[
                "exec",
                "--command",
                &command(lib),
                "--stdin",
                data.to_str().unwrap(),
            ],
        );
        check(
            lib,
            r["stdout"].as_str().unwrap(),
            r["exit"].as_i64().unwrap(),
        );
    }

    let mut cmd = plink(&env, "alice:web01", &[]);
    cmd.args(ppk_args(&env.alice.private))
        .args(["-T", "127.0.0.1", &command("plink")]);
    let out = run(cmd, Some(&data), "plink");
    assert!(out.code.is_some(), "{}", out.stderr);
    check(
        "plink",
        &String::from_utf8_lossy(&out.stdout),
        out.code.unwrap().into(),
    );

    let mut cmd = dbclient(&env, "alice:web01", &[&env.alice.private]);
    cmd.args(["-T", "127.0.0.1", &command("dbclient")]);
    let out = run(cmd, Some(&data), "dbclient");
    assert!(out.code.is_some(), "{}", out.stderr);
    check(
        "dbclient",
        &String::from_utf8_lossy(&out.stdout),
        out.code.unwrap().into(),
    );
}

#[test]
fn several_keys_offered_before_the_right_one() {
    let env = Env::start();
    let stranger = kit::keygen(env.dir.path(), "stranger").unwrap();
    let other = kit::keygen(env.dir.path(), "other").unwrap();
    let alice_fp = fingerprint(&pub_of(&env.alice));
    let keys = vec![
        stranger.private.as_path(),
        other.private.as_path(),
        env.alice.private.as_path(),
    ];
    let login = Login {
        user: "alice:web01",
        keys: keys.clone(),
        password: None,
    };
    // paramiko's key_filename tries each key in turn, each after a
    // SERVICE_REQUEST "ssh-userauth" of its own (vendor/README.md).
    for lib in ["paramiko", "asyncssh"] {
        let r = py(
            &env,
            lib,
            &login,
            &["exec", "--command", &format!("echo keys-{lib}")],
        );
        assert_eq!(r["stdout"], format!("keys-{lib}\n"), "{r}");
        assert_eq!(r["exit"], 0);
    }
    // dbclient: one -i per key, tried in order.
    let mut cmd = dbclient(&env, "alice:web01", &keys);
    cmd.args(["-T", "127.0.0.1", "echo keys-dbclient"]);
    let out = run(cmd, None, "dbclient");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "keys-dbclient\n");
    // plink takes one -i (more keys only through Pageant): not applicable.

    let rows =
        env.wait_rows("select details from events where type = 'auth.success' and user = 'alice'");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        let d: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["method"], "publickey", "{d}");
        assert_eq!(d["key"], alice_fp, "{d}");
    }
    for lib in ["paramiko", "asyncssh", "dbclient"] {
        let session = session_of_command(&env, &format!("echo keys-{lib}"));
        assert_eq!(ended(&env, &session)["exit_status"], 0);
    }
}

/// SFTP events under `dir` (the client's own remote directory), in order,
/// without the open/stat noise that differs between clients.
fn sftp_ops(env: &Env, dir: &Path, want: usize) -> Vec<(String, serde_json::Value)> {
    let sql = format!(
        "select type, details from events where type in ('sftp.close', 'sftp.rename', 'sftp.remove') \
         and json_extract(details, '$.path') like '{}/%' order by seq",
        dir.display()
    );
    for _ in 0..100 {
        let rows = env.query(&sql);
        if rows.len() >= want {
            return rows
                .iter()
                .map(|r| {
                    (
                        r["type"].as_str().unwrap().to_string(),
                        serde_json::from_str(r["details"].as_str().unwrap()).unwrap(),
                    )
                })
                .collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "fewer than {want} sftp events under {}: {:?}",
        dir.display(),
        env.query(&sql)
    );
}

/// Upload a.bin, rename it to b.bin, download it, remove it: the file came
/// back whole and the trail holds each step with the right sizes.
fn check_sftp(env: &Env, client: &str, dir: &Path, data: &[u8], back: &Path) {
    assert_eq!(
        std::fs::read(back).unwrap(),
        data,
        "{client}: download differs"
    );
    assert!(
        !dir.join("a.bin").exists() && !dir.join("b.bin").exists(),
        "{client}: left files"
    );
    let ops = sftp_ops(env, dir, 4);
    let a = format!("{}/a.bin", dir.display());
    let b = format!("{}/b.bin", dir.display());
    let kinds: Vec<&str> = ops.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["sftp.close", "sftp.rename", "sftp.close", "sftp.remove"],
        "{client}: {ops:?}"
    );
    let n = data.len() as u64;
    assert_eq!(ops[0].1["path"], a, "{client}");
    assert_eq!(ops[0].1["mode"], "write", "{client}");
    assert_eq!(ops[0].1["bytes_written"], n, "{client}");
    assert_eq!(ops[1].1["target_path"], b, "{client}");
    assert_eq!(ops[2].1["path"], b, "{client}");
    assert_eq!(ops[2].1["bytes_read"], n, "{client}");
    assert_eq!(ops[3].1["path"], b, "{client}");
    for (kind, d) in &ops {
        assert_eq!(d["status"], 0, "{client}: {kind} {d}");
    }
}

#[test]
fn sftp_put_rename_get_remove() {
    let env = Env::start();
    let d = env.dir.path();
    let data = pattern(1024 * 1024 + 77, 9);
    let local = d.join("local.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = |client: &str| {
        let r = d.join("remote").join(client);
        std::fs::create_dir_all(&r).unwrap();
        r
    };
    let back = |client: &str| d.join(format!("back-{client}.bin"));

    for lib in ["paramiko", "asyncssh"] {
        let r = py(
            &env,
            lib,
            &key_login("alice:web01", &env.alice),
            &[
                "sftp",
                "--local",
                local.to_str().unwrap(),
                "--remote-dir",
                remote(lib).to_str().unwrap(),
                "--back",
                back(lib).to_str().unwrap(),
            ],
        );
        assert_eq!(r["listing"], serde_json::json!(["b.bin"]), "{lib}: {r}");
        assert_eq!(r["after"], serde_json::json!([]), "{lib}: {r}");
        check_sftp(&env, lib, &remote(lib), &data, &back(lib));
    }

    // psftp: a batch file; `mv` is its rename.
    let r = remote("psftp");
    let batch = d.join("psftp.batch");
    std::fs::write(
        &batch,
        format!(
            "put {l} {r}/a.bin\nmv {r}/a.bin {r}/b.bin\nget {r}/b.bin {b}\nrm {r}/b.bin\n",
            l = local.display(),
            r = r.display(),
            b = back("psftp").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("psftp");
    cmd.args(["-batch", "-noagent", "-bc", "-P", &env.port.to_string()])
        .args(["-hostkey", &host_fingerprint(&env), "-l", "alice:web01"])
        .arg("-i")
        .arg(ppk(&env.alice.private))
        .arg("-b")
        .arg(&batch)
        .arg("127.0.0.1");
    let out = run(cmd, None, "psftp");
    assert_eq!(
        out.code,
        Some(0),
        "psftp: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("rm {}/b.bin: OK", r.display())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    check_sftp(&env, "psftp", &r, &data, &back("psftp"));

    // lftp's sftp:// runs OpenSSH's ssh as its transport and speaks SFTP
    // itself.
    let r = remote("lftp");
    let script = format!(
        "set sftp:connect-program 'ssh -a -x -F /dev/null -i {key} -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh}'; set net:max-retries 1; \
         open -u 'alice:web01,' sftp://127.0.0.1:{port}; put {l} -o {r}/a.bin; mv {r}/a.bin {r}/b.bin; \
         get {r}/b.bin -o {b}; rm {r}/b.bin",
        key = env.alice.private.display(),
        kh = known_hosts(&env).display(),
        port = env.port,
        l = local.display(),
        r = r.display(),
        b = back("lftp").display()
    );
    let mut cmd = Command::new("lftp");
    cmd.args(["-c", &script]);
    let out = run(cmd, None, "lftp");
    assert_eq!(
        out.code,
        Some(0),
        "lftp: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    check_sftp(&env, "lftp", &r, &data, &back("lftp"));

    // pscp (SFTP protocol): upload and download only; it has no rename
    // or remove.
    let r = remote("pscp");
    let pscp = |args: &[String]| {
        let mut cmd = Command::new("pscp");
        cmd.args([
            "-batch",
            "-noagent",
            "-q",
            "-sftp",
            "-P",
            &env.port.to_string(),
        ])
        .args(["-hostkey", &host_fingerprint(&env), "-l", "alice:web01"])
        .arg("-i")
        .arg(ppk(&env.alice.private))
        .args(args);
        let out = run(cmd, None, "pscp");
        assert_eq!(out.code, Some(0), "pscp {args:?}: {}", out.stderr);
    };
    pscp(&[
        local.display().to_string(),
        format!("127.0.0.1:{}/a.bin", r.display()),
    ]);
    pscp(&[
        format!("127.0.0.1:{}/a.bin", r.display()),
        back("pscp").display().to_string(),
    ]);
    assert_eq!(std::fs::read(back("pscp")).unwrap(), data);
    let ops = sftp_ops(&env, &r, 2);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0].1["bytes_written"], data.len() as u64, "{ops:?}");
    assert_eq!(ops[1].1["bytes_read"], data.len() as u64, "{ops:?}");
}

/// A typed line shows up in the `commands` view as an interactive command
/// of that client's session.
fn check_typed_line(env: &Env, client: &str, line: &str) {
    let rows = env.wait_rows(&format!(
        "select c.session_id, c.user, c.target from commands c \
         where c.source = 'interactive' and c.command = '{line}'"
    ));
    assert_eq!(rows.len(), 1, "{client}: {rows:?}");
    assert_eq!(rows[0]["user"], "alice", "{client}");
    assert_eq!(rows[0]["target"], "web01", "{client}");
    let session = rows[0]["session_id"].as_str().unwrap();
    let row = ended(env, session);
    assert_eq!(row["exit_status"], 0, "{client}: {row}");
}

/// Waits for a shell prompt (`$` or `#`) at the end of the screen.
fn wait_prompt(tmux: &kit::Tmux) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let screen = tmux.capture().unwrap();
        let last = screen.trim_end().lines().last().unwrap_or("");
        if last.ends_with('$') || last.ends_with('#') {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no prompt:\n{screen}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn pty_shell_typed_line_lands_in_commands() {
    let env = Env::start();
    for lib in ["paramiko", "asyncssh"] {
        let line = format!("echo {lib}-$((6*7))");
        let r = py(
            &env,
            lib,
            &key_login("alice:web01", &env.alice),
            &["shell", "--line", &line, "--expect", &format!("{lib}-42")],
        );
        assert!(
            r["output"].as_str().unwrap().contains(&format!("{lib}-42")),
            "{r}"
        );
        assert_eq!(r["exit"], 0, "{r}");
        check_typed_line(&env, lib, &line);
    }

    // dbclient and plink in a real terminal (tmux).
    let _ = dbclient(&env, "alice:web01", &[&env.alice.private]);
    let dbclient_cmd = format!(
        "env HOME={} dbclient -p {} -l alice:web01 -i {} 127.0.0.1",
        env.dir.path().join("dbhome").display(),
        env.port,
        dropbear_key(&env.alice.private).display()
    );
    let plink_cmd = format!(
        "plink -ssh -noagent -t -P {} -hostkey {} -l alice:web01 -i {} 127.0.0.1",
        env.port,
        host_fingerprint(&env),
        ppk(&env.alice.private).display()
    );
    for (client, cmd) in [("dbclient", dbclient_cmd), ("plink", plink_cmd)] {
        let tmux = kit::Tmux::start(&cmd).unwrap();
        if client == "plink" {
            // PuTTY's anti-spoofing pause after authentication in a
            // terminal.
            tmux.wait_for("Press Return to begin session", T).unwrap();
            tmux.send_keys(&["Enter"]).unwrap();
        }
        let line = format!("echo {client}-$((6*7))");
        wait_prompt(&tmux);
        tmux.send_literal(&line).unwrap();
        tmux.send_keys(&["Enter"]).unwrap();
        tmux.wait_for(&format!("\n{client}-42"), T).unwrap();
        tmux.send_literal("exit").unwrap();
        tmux.send_keys(&["Enter"]).unwrap();
        check_typed_line(&env, client, &line);
    }
}

#[test]
fn local_port_forwarding() {
    let env = Env::start();
    let echo = echo_server();
    let check = |client: &str, n: usize| {
        let rows = wait_count(
            &env,
            "select details from events where type = 'port_forward.close' and user = 'alice' \
             and target = 'web01' order by seq",
            n,
        );
        let d: serde_json::Value =
            serde_json::from_str(rows[n - 1]["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["host"], "127.0.0.1", "{client}: {d}");
        assert_eq!(d["port"], echo, "{client}: {d}");
        let payload = format!("through-{client}");
        assert_eq!(d["bytes_in"], payload.len(), "{client}: {d}");
        assert_eq!(d["bytes_out"], payload.len(), "{client}: {d}");
    };
    for (n, lib) in ["paramiko", "asyncssh"].into_iter().enumerate() {
        let payload = format!("through-{lib}");
        let r = py(
            &env,
            lib,
            &key_login("alice:web01", &env.alice),
            &[
                "forward",
                "--to-port",
                &echo.to_string(),
                "--payload",
                &payload,
            ],
        );
        assert_eq!(r["echo"], payload, "{lib}: {r}");
        check(lib, n + 1);
    }

    // plink -L and dbclient -L: a local listener, one connection through it.
    let through = |client: &str, mut cmd: Command, n: usize| {
        let local = kit::free_port();
        let spec = format!("127.0.0.1:{local}:127.0.0.1:{echo}");
        cmd.args(["-N", "-L", &spec, "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        // Not kit::wait_for_port: each probe would be a forward of its own.
        let deadline = std::time::Instant::now() + T;
        let mut s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", local)) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("{client}: {e}\n{}", env.gateway_log())
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        let payload = format!("through-{client}");
        s.set_read_timeout(Some(T)).unwrap();
        std::io::Write::write_all(&mut s, payload.as_bytes()).unwrap();
        let mut got = vec![0u8; payload.len()];
        std::io::Read::read_exact(&mut s, &mut got).unwrap();
        drop(s);
        assert_eq!(String::from_utf8_lossy(&got), payload, "{client}");
        // The forwarded connection's close is audited while the client
        // still runs.
        check(client, n);
        let _ = child.kill();
        let _ = child.wait();
    };
    let mut cmd = plink(&env, "alice:web01", &[]);
    cmd.args(ppk_args(&env.alice.private));
    through("plink", cmd, 3);
    through(
        "dbclient",
        dbclient(&env, "alice:web01", &[&env.alice.private]),
        4,
    );
    let rows = env.query("select result from events where type = 'port_forward.open'");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["result"] == "success"), "{rows:?}");
}
const MFA: &str = r#"
[[roles]]
name = "secure"
allow = [{ targets = { env = "test" }, logins = ["*"] }]
require_mfa = true
"#;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Enrols `user` for TOTP and returns the secret.
fn enrol(env: &Env, user: &str) -> Vec<u8> {
    let out = env.gatehouse(&["--format", "json", "users", "totp-enroll", user]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    gatehouse_auth::totp::base32_decode(v["secret"].as_str().unwrap()).unwrap()
}

#[test]
fn key_then_totp() {
    // One user per client: a code is good once per time step.
    let keys = tempfile::tempdir().unwrap();
    let carol = kit::keygen(keys.path(), "carol").unwrap();
    let dave = kit::keygen(keys.path(), "dave").unwrap();
    let env = Env::start_with(&format!(
        "{MFA}\n[[users]]\nname = \"carol\"\nkeys = [\"{}\"]\nroles = [\"secure\"]\n\n\
         [[users]]\nname = \"dave\"\nkeys = [\"{}\"]\nroles = [\"secure\"]\n",
        carol.public_line, dave.public_line
    ));
    for (lib, user, key) in [("paramiko", "carol", &carol), ("asyncssh", "dave", &dave)] {
        let secret = enrol(&env, user);
        let target = format!("{user}:web01");
        // The key alone is not enough.
        let mut cmd = Command::new(python());
        cmd.arg(script(&format!("{lib}_client.py")))
            .args(["--port", &env.port.to_string(), "--user", &target])
            .arg("--known-hosts")
            .arg(known_hosts(&env))
            .arg("--key")
            .arg(&key.private)
            .args(["exec", "--command", "echo no"]);
        let out = kit::run(cmd, T).unwrap();
        assert_ne!(out.code, Some(0), "{lib}: key alone let {user} in");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("no"));

        let code = gatehouse_auth::totp::code(&secret, now());
        let r = py(
            &env,
            lib,
            &key_login(&target, key),
            &[
                "mfa",
                "--code",
                &code,
                "--command",
                &format!("echo mfa-{lib}"),
            ],
        );
        assert_eq!(r["stdout"], format!("mfa-{lib}\n"), "{lib}: {r}");
        assert_eq!(r["exit"], 0, "{lib}: {r}");
        assert_eq!(r["prompts"].as_array().map(Vec::len), Some(1), "{lib}: {r}");
        if lib == "paramiko" {
            // The key was a partial success; the code completed it.
            assert_eq!(
                r["after_key"],
                serde_json::json!(["keyboard-interactive"]),
                "{r}"
            );
            assert_eq!(r["after_code"], serde_json::json!([]), "{r}");
        }
        let rows = env.wait_rows(&format!(
            "select mfa, details from events where type = 'auth.success' and user = '{user}'"
        ));
        assert_eq!(rows.len(), 1, "{lib}: {rows:?}");
        assert_eq!(rows[0]["mfa"], 1, "{lib}");
        let d: serde_json::Value =
            serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["method"], "publickey+totp", "{lib}: {d}");
        assert_eq!(d["key"], fingerprint(&pub_of(key)), "{lib}: {d}");
        let session = session_of_command(&env, &format!("echo mfa-{lib}"));
        let row = env.wait_rows(&format!(
            "select mfa, user from sessions where session_id = '{session}' and end_time is not null"
        ));
        assert_eq!(row[0]["mfa"], 1, "{lib}");
        assert_eq!(row[0]["user"], user, "{lib}");
    }
}

/// `users hash-password` with the password on stdin.
fn hash_password(password: &str) -> String {
    let out = kit::run_with_input(
        {
            let mut c = Command::new(common::gatehouse_bin());
            c.args(["users", "hash-password"]);
            c
        },
        password.as_bytes(),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn password_login() {
    const PASSWORD: &str = "correct horse interop";
    let hash = hash_password(PASSWORD);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let env = Env::start_with(&format!(
        "\n[[users]]\nname = \"pat\"\nkeys = []\npassword_hash = \"{hash}\"\nroles = [\"dev\"]\n"
    ));
    let login = Login {
        user: "pat:web01",
        keys: vec![],
        password: Some(PASSWORD),
    };
    let mut clients = Vec::new();
    for lib in ["paramiko", "asyncssh"] {
        let r = py(
            &env,
            lib,
            &login,
            &["exec", "--command", &format!("echo pw-{lib}")],
        );
        assert_eq!(r["stdout"], format!("pw-{lib}\n"), "{lib}: {r}");
        clients.push(lib);
    }

    let mut cmd = plink(&env, "pat:web01", &["-pw", PASSWORD]);
    cmd.args(["-T", "127.0.0.1", "echo pw-plink"]);
    let out = run(cmd, None, "plink");
    assert_eq!(out.code, Some(0), "plink: {}", out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pw-plink\n");
    clients.push("plink");

    // dbclient reads the password from DROPBEAR_PASSWORD when set.
    let mut cmd = dbclient(&env, "pat:web01", &[]);
    cmd.env("DROPBEAR_PASSWORD", PASSWORD)
        .args(["-T", "127.0.0.1", "echo pw-dbclient"]);
    let out = run(cmd, None, "dbclient");
    assert_eq!(out.code, Some(0), "dbclient: {}", out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pw-dbclient\n");
    clients.push("dbclient");

    // A wrong password is refused (plink) and audited.
    let mut cmd = plink(&env, "pat:web01", &["-pw", "wrong"]);
    cmd.args(["-T", "127.0.0.1", "echo no"]);
    let out = run(cmd, None, "plink");
    assert_ne!(out.code, Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("no"));
    let _ = env.wait_rows("select id from events where type = 'auth.failure' and user = 'pat'");

    let rows = wait_count(
        &env,
        "select details from events where type = 'auth.success' and user = 'pat'",
        clients.len(),
    );
    assert_eq!(rows.len(), clients.len(), "{rows:?}");
    for r in &rows {
        let d: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["method"], "password", "{d}");
    }
    for client in clients {
        let session = session_of_command(&env, &format!("echo pw-{client}"));
        let row = ended(&env, &session);
        assert_eq!(row["user"], "pat", "{client}");
        assert_eq!(row["exit_status"], 0, "{client}");
    }
}

#[test]
fn two_channels_on_one_connection() {
    let env = Env::start();
    let data = pattern(300_000, 5);
    let local = env.dir.path().join("two.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = env.dir.path().join("two-remote.bin");
    let r = py(
        &env,
        "asyncssh",
        &key_login("alice:web01", &env.alice),
        &[
            "two-channels",
            "--first",
            "echo first; exit 4",
            "--second",
            "echo second >&2",
            "--local",
            local.to_str().unwrap(),
            "--remote",
            remote.to_str().unwrap(),
        ],
    );
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs[0]["stdout"], "first\n", "{r}");
    assert_eq!(runs[0]["exit"], 4, "{r}");
    assert_eq!(runs[1]["stderr"], "second\n", "{r}");
    assert_eq!(runs[1]["exit"], 0, "{r}");
    let want = sha256_file(&local);
    assert!(
        runs[2]["stdout"].as_str().unwrap().starts_with(&want),
        "{r}"
    );
    assert_eq!(std::fs::read(&remote).unwrap(), data);

    // One connection: one session, with the three commands and the upload.
    let first = session_of_command(&env, "echo first; exit 4");
    let rows = wait_count(
        &env,
        &format!("select command from commands where session_id = '{first}' order by time"),
        3,
    );
    let commands: Vec<&str> = rows
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        [
            "echo first; exit 4",
            "echo second >&2",
            &format!("sha256sum < {}", remote.display())
        ]
    );
    let rows = env.wait_rows(&format!(
        "select session_id, details from events where type = 'sftp.close' \
         and json_extract(details, '$.path') = '{}'",
        remote.display()
    ));
    assert_eq!(rows[0]["session_id"], first);
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["bytes_written"], data.len());
    let _ = ended(&env, &first);
    let sessions = env.query("select session_id from sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

#[test]
fn twenty_concurrent_connections() {
    let env = Env::start();
    let r = py(
        &env,
        "asyncssh",
        &key_login("alice:web01", &env.alice),
        &["concurrent", "--count", "20"],
    );
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 20);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["stdout"], format!("conn-{i}\n"), "{r}");
        assert_eq!(run["exit"], 0, "{r}");
    }
    let rows = wait_count(
        &env,
        "select session_id, exit_status from sessions where user = 'alice' and end_time is not null",
        20,
    );
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert!(rows.iter().all(|r| r["exit_status"] == 0), "{rows:?}");
    // They overlapped: some session started before another ended.
    let overlap = env.query(
        "select count(*) as n from sessions a join sessions b on a.session_id <> b.session_id \
         and a.start_time < b.end_time and b.start_time < a.end_time",
    );
    assert!(overlap[0]["n"].as_u64().unwrap() > 0, "{overlap:?}");
    let commands =
        env.query("select command from commands where command like 'sleep 1; echo conn-%'");
    assert_eq!(commands.len(), 20);
}

/// A NUL character that a client puts in its user name or its command
/// (OpenSSH cannot; paramiko can) is audited on PostgreSQL, whose text
/// cannot hold one: stored as U+FFFD, and the chain verifies.
#[test]
fn a_nul_character_from_a_client_is_audited_on_postgresql() {
    let db = common::servers::Database::create("interop_nul");
    let mut env = Env::start();
    env.stop_gateway();
    env.use_store(&db.url());
    env.spawn_gateway();

    // Before authentication: the user name.
    let r = py(
        &env,
        "paramiko",
        &key_login("ali\\x00ce:web01", &env.alice),
        &["--escapes", "login"],
    );
    assert_eq!(r["authenticated"], false, "{r}");
    let rows = env.wait_rows("select \"user\", reason from events where type = 'auth.failure'");
    assert_eq!(rows[0]["user"], "ali\u{fffd}ce:web01", "{rows:?}");
    let reason = rows[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("invalid user"), "{reason}");

    // After: an exec command holding NUL is refused by the gateway with
    // one line (the target would drop the whole connection), audited with
    // U+FFFD in its place; the user's next command runs.
    let r = py(
        &env,
        "paramiko",
        &key_login("alice:web01", &env.alice),
        &["--escapes", "exec", "--command", "echo one\\x00two"],
    );
    assert_eq!(r["exit"], 1, "{r}");
    assert_eq!(
        r["stderr"],
        "gatehouse: the command holds a NUL character, which SSH servers refuse; nothing ran\n",
        "{r}"
    );
    let rows = env.wait_rows(
        "select \"user\", details ->> 'command' as command from events where type = 'command.denied'",
    );
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["command"], "echo one\u{fffd}two");
    let r = py(
        &env,
        "paramiko",
        &key_login("alice:web01", &env.alice),
        &["exec", "--command", "echo three"],
    );
    assert_eq!(
        (&r["exit"], &r["stdout"]),
        (&0.into(), &"three\n".into()),
        "{r}"
    );

    // An environment variable holding NUL is dropped (and said), so the
    // command runs; a subsystem name holding NUL is refused with one line.
    let r = py(
        &env,
        "paramiko",
        &key_login("alice:web01", &env.alice),
        &[
            "--escapes",
            "exec",
            "--env",
            "LC_NUL=a\\x00b",
            "--command",
            "echo four",
        ],
    );
    assert_eq!(
        (&r["exit"], &r["stdout"]),
        (&0.into(), &"four\n".into()),
        "{r}"
    );
    let rows = env.wait_rows(
        "select details ->> 'env_dropped' as dropped from events where type = 'channel.request' and result = 'denied'",
    );
    assert_eq!(rows[0]["dropped"], "[\"LC_NUL\"]", "{rows:?}");
    let r = py(
        &env,
        "paramiko",
        &key_login("alice:web01", &env.alice),
        &["--escapes", "subsystem", "--name", "sf\\x00tp"],
    );
    assert_eq!(r["exit"], 1, "{r}");
    assert_eq!(
        r["stderr"],
        "gatehouse: the subsystem name holds a NUL character, which SSH servers refuse; nothing ran\n",
        "{r}"
    );
    let rows = env.wait_rows(
        "select details ->> 'subsystem' as subsystem, reason from events where type = 'channel.request' and details ->> 'subsystem' is not null",
    );
    assert_eq!(rows[0]["subsystem"], "sf\u{fffd}tp", "{rows:?}");

    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
