//! The web console end to end, in a real browser: a real gateway serving
//! HTTPS with the certificate `gatehouse init` made, real ssh sessions
//! recorded through it (tmux terminals), a session running live, an ssh
//! waiting for approval; then headless chromium (playwright-core,
//! tests/browser/console.test.mjs) signs in with a password and a TOTP
//! code, replays, watches, kills, approves, runs a runbook, reads and
//! exports the audit log, and tries CSRF, a forged cookie and another
//! user's session. Afterwards the store must hold what the browser did.
//!
//! Needs node, /usr/bin/chromium and tests/browser/node_modules
//! (`bash scripts/browser-deps.sh`, run by scripts/deps.sh).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{gatehouse_bin, stdout, Env, T};
use gatehouse_testkit::{self as kit, KeyPair, Tmux};
use serde_json::Value;

const W: Duration = Duration::from_secs(20);
/// The most the browser part may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(360);

const RITA_PASSWORD: &str = "rita-console-Pa55word";
const ALICE_PASSWORD: &str = "alice-console-Pa55word";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// node, chromium and playwright-core, or a panic saying how to get them.
fn browser_tooling(root: &Path) {
    let chromium = std::env::var("GATEHOUSE_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success())
            && Path::new(&chromium).exists()
            && root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "the console's browser test needs node, {chromium} and tests/browser/node_modules: run `bash scripts/browser-deps.sh`"
    );
}

/// `gatehouse users hash-password` with the password on stdin.
fn hash_password(password: &str) -> String {
    let mut cmd = Command::new(gatehouse_bin());
    cmd.args(["users", "hash-password"]);
    let out = kit::run_with_input(cmd, format!("{password}\n").as_bytes(), T).expect("hash");
    assert_eq!(out.code, Some(0), "hash-password: {}", out.stderr);
    let hash = stdout(&out).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

/// `gatehouse init --dir DIR`: the console's certificate and key, and the
/// SHA-256 fingerprint init printed.
fn init_certificate(dir: &Path, admin_key: &KeyPair) -> (PathBuf, PathBuf, String) {
    let mut cmd = Command::new(gatehouse_bin());
    cmd.args(["init", "--admin-user", "admin", "--admin-key"])
        .arg(admin_key.private.with_extension("pub"))
        .arg("--dir")
        .arg(dir);
    let out = kit::run(cmd, T).expect("gatehouse init");
    let text = stdout(&out);
    assert_eq!(out.code, Some(0), "init: {text}{}", out.stderr);
    let fingerprint = text
        .split("certificate SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("init printed no certificate fingerprint:\n{text}"))
        .to_string();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    let (cert, key) = (dir.join("data/console.crt"), dir.join("data/console.key"));
    assert!(cert.exists() && key.exists(), "init wrote no certificate");
    (cert, key, fingerprint)
}

/// Events of `kind` (with a further SQL condition) and their details.
fn events(env: &Env, kind: &str, cond: &str) -> Vec<(Value, Value)> {
    let cond = if cond.is_empty() {
        String::new()
    } else {
        format!(" AND {cond}")
    };
    env.query(&format!(
        "SELECT type, \"user\", session_id, result, reason, details FROM events WHERE type = '{kind}'{cond} ORDER BY seq"
    ))
    .into_iter()
    .map(|r| {
        let d = r["details"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        (r, d)
    })
    .collect()
}

/// Polls until `sql` returns a row, for up to `timeout`.
fn wait_rows_for(env: &Env, sql: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = env.query(sql);
        if !rows.is_empty() {
            return rows;
        }
        if Instant::now() > deadline {
            panic!(
                "no rows for {sql} within {timeout:?}\n{}",
                env.gateway_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Changes one byte of the output in session `id`'s recording, keeping
/// its size and modification time.
fn tamper(env: &Env, id: &str) {
    let path = env.dir.path().join("recordings").join(format!("{id}.cast"));
    let mut bytes = std::fs::read(&path).expect("the recording");
    let at = bytes
        .windows(6)
        .position(|w| w == b"rita-p")
        .expect("the output in the recording");
    bytes[at] = b'R';
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&path, &bytes).expect("write the recording");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(modified))
        .expect("set mtime");
}

/// A tmux terminal running `bash --norc -i` on `target` through the gateway.
fn bash_session(env: &Env, key: &KeyPair, dest: &str) -> Tmux {
    let opts = env.client(key).opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} {dest} 'PS1=\"gh$ \" exec bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", W).expect("prompt");
    tmux
}

/// Types `line` and Enter, then waits for its `command` event.
fn run_line(env: &Env, tmux: &Tmux, line: &str) {
    tmux.send_literal(line).expect("type");
    tmux.send_keys(&["Enter"]).expect("enter");
    let quoted = line.replace('\'', "''");
    wait_rows_for(
        env,
        &format!("SELECT 1 FROM commands WHERE command = '{quoted}'"),
        W,
    );
}

fn one_string(rows: &[Value], col: &str) -> String {
    rows[0][col]
        .as_str()
        .unwrap_or_else(|| panic!("no {col} in {rows:?}"))
        .to_string()
}

/// Reads a child's pipe into a shared string, echoing each line.
fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>, prefix: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            println!("{prefix}{line}");
            if let Ok(mut s) = into.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
}

/// Waits for `child` up to `timeout` (killing it then); its exit code.
fn wait_child(child: &mut Child, timeout: Duration, mut each_second: impl FnMut()) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let mut last = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            each_second();
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets up the gateway with the console on HTTPS, rita (reviewer with
/// TOTP) and alice (own sessions; prod01 needs approval).
fn console_env(work: &Path, rita: &KeyPair) -> (Env, u16, PathBuf, PathBuf, String) {
    let (cert, key, fingerprint) = init_certificate(&work.join("init"), rita);
    let rita_hash = hash_password(RITA_PASSWORD);
    let alice_hash = hash_password(ALICE_PASSWORD);
    let login = kit::current_login();
    let admin = kit::free_port();
    let everything = r#"["all_sessions", "watch", "kill", "audit", "runbooks", "apply_runbooks", "approvals", "users"]"#;
    let extra = format!(
        r#"
[[users]]
name = "rita"
keys = ["{rita_key}"]
roles = ["reviewers"]
password_hash = "{rita_hash}"

[console]
tls_cert = "{cert}"
tls_key = "{key}"

[[roles]]
name = "reviewers"
allow = [{{ targets = {{ env = "test" }}, logins = ["{login}"] }}]
console = {everything}

[[roles]]
name = "own-console"
console = ["own_sessions"]

[[roles]]
name = "prod-approval"
allow = [{{ targets = {{ env = "prod" }}, logins = ["{login}"],
           require_approval = {{ approvers = ["reviewers"], ttl = "1h" }} }}]
"#,
        rita_key = rita.public_line,
        cert = cert.display(),
        key = key.display(),
    );
    let env = Env::start_server(
        &format!("admin_listen = \"127.0.0.1:{admin}\"\napproval_wait = \"5m\""),
        &extra,
    );
    // alice: her own sessions in the console, a password, prod01 by approval.
    let text = std::fs::read_to_string(&env.config_path)
        .expect("config")
        .replace(
            "roles = [\"dev\"]",
            &format!(
                "roles = [\"dev\", \"own-console\", \"prod-approval\"]\npassword_hash = \"{alice_hash}\""
            ),
        );
    std::fs::write(&env.config_path, text).expect("write config");
    env.signal("HUP");
    wait_rows_for(
        &env,
        "SELECT id FROM events WHERE type = 'config.reload' AND result = 'success'",
        W,
    );
    kit::wait_for_port(admin, W).expect("the console listens");
    (env, admin, cert, key, fingerprint)
}

#[test]
fn the_console_in_a_real_browser() {
    let started = Instant::now();
    let root = repo_root();
    browser_tooling(&root);
    let work = tempfile::tempdir().expect("tempdir");
    let rita = kit::keygen(work.path(), "rita").expect("keygen");
    let (env, admin, cert, key, fingerprint) = console_env(work.path(), &rita);
    let login = env.login.clone();

    // rita's own session: alice must not be able to see it.
    let out = kit::run(
        env.client(&rita).ssh(
            env.port,
            "rita:web01@127.0.0.1",
            &["echo rita-private-marker"],
        ),
        T,
    )
    .expect("ssh as rita");
    assert_eq!(out.code, Some(0), "rita's ssh: {}", out.stderr);
    let rita_session = one_string(
        &wait_rows_for(
            &env,
            "SELECT session_id FROM sessions WHERE \"user\" = 'rita' AND end_time IS NOT NULL",
            W,
        ),
        "session_id",
    );

    // Her recording is then altered in place (same size, same
    // modification time): the console must say it is not what
    // session.end recorded.
    tamper(&env, &rita_session);

    // rita's authenticator (after her ssh session: TOTP is for the console).
    let out = env.gatehouse(&["--format", "json", "users", "totp-enroll", "rita"]);
    assert_eq!(out.code, Some(0), "totp-enroll: {}", out.stderr);
    let enrolled: Value = serde_json::from_slice(&out.stdout).expect("totp-enroll json");
    let secret = enrolled["secret"].as_str().expect("secret").to_string();

    // alice's recorded interactive session: three commands a second apart.
    let tmux = bash_session(&env, &env.alice, "alice:web01@127.0.0.1");
    for line in ["echo first-marker", "ls /", "echo third-marker"] {
        std::thread::sleep(Duration::from_millis(1200));
        run_line(&env, &tmux, line);
    }
    std::thread::sleep(Duration::from_millis(800));
    tmux.send_literal("exit").expect("type");
    tmux.send_keys(&["Enter"]).expect("enter");
    let recorded = one_string(
        &wait_rows_for(
            &env,
            "SELECT session_id FROM sessions WHERE \"user\" = 'alice' AND end_time IS NOT NULL",
            W,
        ),
        "session_id",
    );
    wait_rows_for(
        &env,
        &format!("SELECT 1 FROM events WHERE type = 'session.end' AND session_id = '{recorded}'"),
        W,
    );
    drop(tmux);

    // A session running while the browser watches and kills it.
    let live_tmux = bash_session(&env, &env.alice, "alice:web01@127.0.0.1");
    run_line(&env, &live_tmux, "echo live-started");
    let live = one_string(
        &wait_rows_for(
            &env,
            "SELECT session_id FROM sessions WHERE \"user\" = 'alice' AND end_time IS NULL",
            W,
        ),
        "session_id",
    );

    // alice asks for prod01 and waits for rita's approval.
    let mut waiting = env
        .alice()
        .ssh(
            env.port,
            &format!("alice:{login}@prod01@127.0.0.1"),
            &["echo approved-by-web"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh to prod01");
    let waiting_out = Arc::new(Mutex::new(String::new()));
    let waiting_err = Arc::new(Mutex::new(String::new()));
    collect(
        waiting.stdout.take().expect("stdout"),
        waiting_out.clone(),
        "prod01 ssh: ",
    );
    collect(
        waiting.stderr.take().expect("stderr"),
        waiting_err.clone(),
        "prod01 ssh (stderr): ",
    );
    let rows = wait_rows_for(
        &env,
        "SELECT details FROM events WHERE type = 'approval.requested' AND target = 'prod01'",
        W,
    );
    let details: Value = serde_json::from_str(&one_string(&rows, "details")).expect("details");
    let request = details["request"].as_str().expect("request id").to_string();

    // The browser. While it runs, the live session prints a line a second.
    // The screenshots in docs/console/ are refreshed on request
    // (`GH_CONSOLE_SCREENSHOTS=docs/console`); otherwise they go to
    // target/ so that a test run leaves the tree clean.
    let shots = match std::env::var("GH_CONSOLE_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target/tmp/console-screenshots"),
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    // Kept after the test (a failure's screenshot and HTML).
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut node = Command::new("node")
        .arg(root.join("tests/browser/console.test.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("GH_URL", format!("https://127.0.0.1:{admin}"))
        .env("GH_FINGERPRINT", &fingerprint)
        .env("GH_TLS_CERT", &cert)
        .env("GH_TLS_KEY", &key)
        .env("GH_REVIEWER", "rita")
        .env("GH_REVIEWER_PASSWORD", RITA_PASSWORD)
        .env("GH_REVIEWER_TOTP", &secret)
        .env("GH_USER", "alice")
        .env("GH_USER_PASSWORD", ALICE_PASSWORD)
        .env("GH_SESSION", &recorded)
        .env("GH_LIVE_SESSION", &live)
        .env("GH_OTHER_SESSION", &rita_session)
        .env("GH_APPROVAL", &request)
        .env("GH_SCREENSHOTS", &shots)
        .env("GH_ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let node_out = Arc::new(Mutex::new(String::new()));
    collect(
        node.stdout.take().expect("stdout"),
        node_out.clone(),
        "browser: ",
    );
    collect(
        node.stderr.take().expect("stderr"),
        node_out.clone(),
        "browser (stderr): ",
    );
    let mut tick = 0;
    let code = wait_child(&mut node, NODE_TIMEOUT, || {
        tick += 1;
        let _ = live_tmux.send_literal(&format!("echo live-tick-{tick}"));
        let _ = live_tmux.send_keys(&["Enter"]);
    });
    std::thread::sleep(Duration::from_millis(200));
    let output = node_out.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "the browser test failed (exit {code:?}; artifacts in {}):\n{output}\n--- gateway log ---\n{}",
        artifacts.display(),
        env.gateway_log()
    );
    let browser_secs = started.elapsed().as_secs();

    // What the browser did is in the store.
    let web = |d: &Value| d["channel"] == "web";
    let access = events(&env, "recording.access", "result = 'success'");
    for action in ["view", "play", "download", "watch", "verify"] {
        assert!(
            access
                .iter()
                .any(|(r, d)| web(d) && d["action"] == action && r["user"] == "rita"),
            "no recording.access {action} by rita from the web: {access:?}"
        );
    }
    let reads = events(&env, "audit.read", "");
    for what in ["audit_log", "audit_export", "sql", "audit_verify"] {
        assert!(
            reads
                .iter()
                .any(|(_, d)| web(d) && d["read"] == what && d["by"] == "rita"),
            "no audit.read {what} by rita from the web: {reads:?}"
        );
    }
    let signins = events(&env, "auth.success", "");
    assert!(
        signins.iter().any(|(r, d)| web(d) && r["user"] == "rita"),
        "{signins:?}"
    );
    assert!(
        signins.iter().any(|(r, d)| web(d) && r["user"] == "alice"),
        "{signins:?}"
    );
    let failures = events(&env, "auth.failure", "\"user\" = 'rita'");
    assert!(
        failures.iter().any(|(_, d)| web(d)),
        "the wrong code left no auth.failure: {failures:?}"
    );

    // Kill: one request (the CSRF attempts made none), by rita, from the
    // web; the session really ended.
    let kills = events(&env, "session.kill_requested", "");
    assert_eq!(
        kills.len(),
        1,
        "exactly the one kill from the page: {kills:?}"
    );
    let (row, d) = &kills[0];
    assert_eq!(row["session_id"], live.as_str(), "{kills:?}");
    assert!(web(d) && d["by"] == "rita", "{kills:?}");
    wait_rows_for(
        &env,
        &format!(
            "SELECT 1 FROM events WHERE type IN ('session.killed', 'session.end') AND session_id = '{live}'"
        ),
        W,
    );
    wait_rows_for(
        &env,
        &format!("SELECT 1 FROM sessions WHERE session_id = '{live}' AND end_time IS NOT NULL"),
        W,
    );
    let locks = events(&env, "user.locked", "");
    assert!(
        locks.is_empty(),
        "the CSRF lock of alice went through: {locks:?}"
    );

    // The approval from the page let the waiting ssh run its command.
    let granted = events(&env, "approval.granted", "");
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert!(
        web(&granted[0].1) && granted[0].1["by"] == "rita",
        "{granted:?}"
    );
    let code = wait_child(&mut waiting, T, || {});
    std::thread::sleep(Duration::from_millis(200));
    let said = waiting_out.lock().map(|s| s.clone()).unwrap_or_default();
    let err = waiting_err.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(code, Some(0), "the approved ssh: {said}{err}");
    assert_eq!(said, "approved-by-web\n", "{err}");
    assert!(err.contains("approved by rita"), "{err}");

    // The runbook: run, then applied.
    let runs = events(&env, "runbook.run", "");
    assert!(
        runs.iter().any(|(_, d)| d["runbook"] == "commands-matching"
            && d["applied"] == false
            && web(d)
            && d["by"] == "rita"),
        "{runs:?}"
    );
    let applied: Vec<_> = runs
        .iter()
        .filter(|(_, d)| d["runbook"] == "commands-matching" && d["applied"] == true)
        .collect();
    assert_eq!(applied.len(), 1, "{runs:?}");
    assert!(
        applied[0].1["actions"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["ok"] == true)),
        "{applied:?}"
    );
    let alerts = events(&env, "alert", "");
    assert!(!alerts.is_empty(), "the notify action raised no alert");

    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(
        out.code,
        Some(0),
        "audit verify: {}{}",
        stdout(&out),
        out.stderr
    );
    println!(
        "console browser test: {} s in all ({} s up to the end of the browser run)",
        started.elapsed().as_secs(),
        browser_secs
    );
}
