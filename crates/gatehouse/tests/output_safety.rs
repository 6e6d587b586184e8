//! What users send must not drive an administrator's terminal, the
//! administrator's identity must not come from the environment, and the
//! gateway must hold up against a broken reload and easy command-rule
//! bypasses. Real ssh clients, a real gateway and a real sshd.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{gatehouse_bin, stdout, Env, T};
use gatehouse_testkit as kit;

/// A username with an OSC title sequence, and a command that would erase
/// the line it is shown on and move up over the previous one.
const EVIL_USER: &str = "alice\u{1b}]0;title\u{7}";
const EVIL_COMMAND: &str = "true '\u{1b}[2K\r\u{1b}[1A'; echo harmless";

/// Bytes a terminal acts on.
fn raw_controls(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|b| matches!(b, 0x00..=0x08 | 0x0b..=0x1f | 0x7f))
        .collect()
}

fn assert_safe(what: &str, bytes: &[u8]) {
    let found = raw_controls(bytes);
    assert!(
        found.is_empty(),
        "{what} writes raw control bytes {found:x?}:\n{}",
        String::from_utf8_lossy(bytes).escape_debug()
    );
}

fn gh_ok(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = env.gatehouse(args);
    assert_eq!(out.code, Some(0), "gatehouse {args:?}: {}", out.stderr);
    assert_safe(
        &format!("gatehouse {args:?} (stderr)"),
        out.stderr.as_bytes(),
    );
    out.stdout
}

/// `ssh` with the username given in a config file: OpenSSH refuses
/// control characters in a username on its command line, not there.
fn ssh_as(env: &Env, user: &str, args: &[&str]) -> kit::Output {
    let cfg = env.dir.path().join("evil_ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {}\n  User \"{user}\"\n",
            env.port
        ),
    )
    .unwrap();
    let mut opts = env.alice().opts();
    let f = opts.iter().position(|o| o == "-F").unwrap();
    opts[f + 1] = cfg.display().to_string();
    let mut c = Command::new("ssh");
    c.args(opts).arg("gw").args(args);
    kit::run(c, T).expect("run ssh")
}

#[test]
fn control_characters_are_stored_exactly_and_shown_escaped() {
    let env = Env::start();

    // Before authentication: the raw username lands in auth.failure.
    let out = ssh_as(&env, EVIL_USER, &["true"]);
    assert_ne!(out.code, Some(0));
    let rows = env.wait_rows("select user from events where type = 'auth.failure'");
    assert_eq!(rows[0]["user"], EVIL_USER, "stored exactly");

    // After: a command that would redraw the administrator's screen.
    let out = env.ssh("alice:web01@127.0.0.1", &[EVIL_COMMAND]);
    assert_eq!(stdout(&out), "harmless\n", "{}", out.stderr);
    let rows =
        env.wait_rows("select session_id, command from commands where command like '%harmless%'");
    assert_eq!(rows[0]["command"], EVIL_COMMAND, "stored exactly");
    let sid = rows[0]["session_id"].as_str().unwrap().to_string();
    env.wait_rows(&format!(
        "select session_id from sessions where session_id = '{sid}' and end_time is not null"
    ));

    let shown_user = "alice\\e]0;title\\x07";
    let shown_command = "true '\\e[2K\\r\\e[1A'; echo harmless";
    let users_sql = "select \"user\", reason from events where type = 'auth.failure'";
    let commands_sql = "select session_id, command from commands";
    for format in ["table", "csv"] {
        let out = gh_ok(&env, &["--format", format, "audit", "query", users_sql]);
        assert_safe(&format!("audit query ({format})"), &out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(shown_user), "{format}: {text}");
        let out = gh_ok(&env, &["--format", format, "audit", "query", commands_sql]);
        assert_safe(&format!("audit query ({format})"), &out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(shown_command), "{format}: {text}");
        // One row, one line: no cell spans lines.
        assert_eq!(
            text.lines().filter(|l| l.contains("harmless")).count(),
            1,
            "{text}"
        );

        let out = gh_ok(&env, &["--format", format, "sessions", "list"]);
        assert_safe(&format!("sessions list ({format})"), &out);
    }
    let out = gh_ok(&env, &["sessions", "show", &sid]);
    assert_safe("sessions show", &out);
    assert!(
        String::from_utf8_lossy(&out).contains(shown_command),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = gh_ok(&env, &["users", "list"]);
    assert_safe("users list", &out);
    // Error messages quote what they were given, escaped.
    let out = env.gatehouse(&["sessions", "show", "x\u{1b}[2Jy"]);
    assert_eq!(out.code, Some(1));
    assert_safe("an error message", out.stderr.as_bytes());
    assert!(out.stderr.contains("x\\e[2Jy"), "{}", out.stderr);

    // JSON keeps the exact text (escaped the JSON way).
    let out = gh_ok(&env, &["--format", "json", "audit", "query", commands_sql]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["command"], EVIL_COMMAND);
    let out = gh_ok(&env, &["--format", "json", "sessions", "show", &sid]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["commands"][0]["command"], EVIL_COMMAND);
    let out = gh_ok(&env, &["--format", "json", "audit", "query", users_sql]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["user"], EVIL_USER);

    // The gateway's log: no colour codes when it is not a terminal, and
    // what users sent is escaped.
    let log = env.gateway_log();
    assert!(log.contains("auth.failure"), "{log}");
    assert_safe("the gateway log", log.as_bytes());
}

fn os_account() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `gatehouse ARGS` with `USER` (and `LOGNAME`) claiming someone else.
fn gh_as(env: &Env, claimed: &str, args: &[&str]) -> kit::Output {
    let mut c = Command::new(gatehouse_bin());
    c.arg("--config")
        .arg(&env.config_path)
        .args(args)
        .env("USER", claimed)
        .env("LOGNAME", claimed)
        .env_remove("SUDO_USER");
    kit::run(c, T).expect("run gatehouse")
}

fn details(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["details"].as_str().unwrap_or("{}")).unwrap()
}

#[test]
fn the_administrator_is_the_os_account_and_a_claimed_user_is_recorded_beside_it() {
    let env = Env::start();
    let me = os_account();
    assert!(!me.is_empty() && me != "mallory");

    let mut c = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 60"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let sid = env.wait_rows("select session_id from sessions where active = 1")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = gh_as(
        &env,
        "mallory",
        &["sessions", "kill", &sid, "--reason", "drill"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let _ = child.wait();
    let rows = env
        .wait_rows("select details from events where type = 'session.killed' and reason = 'drill'");
    assert_eq!(details(&rows[0])["by"], me.as_str(), "{rows:?}");
    let rows = env.wait_rows(&format!(
        "select details from events where type = 'session.kill_requested' and session_id = '{sid}'"
    ));
    let d = details(&rows[0]);
    assert_eq!(d["by"], me.as_str(), "{d}");
    assert_eq!(d["claimed_user"], "mallory", "{d}");

    let out = gh_as(
        &env,
        "mallory",
        &["users", "lock", "alice", "--reason", "drill"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows("select details from events where type = 'user.locked'");
    let d = details(&rows[0]);
    assert_eq!(d["by"], me.as_str(), "{d}");
    assert_eq!(d["claimed_user"], "mallory", "{d}");
    let out = gh_as(
        &env,
        "mallory",
        &["--format", "json", "users", "show", "alice"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["locked"]["by"], me.as_str(), "{v}");

    // Without a differing claim, nothing extra is recorded.
    let out = gh_as(&env, &me, &["users", "unlock", "alice"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows("select details from events where type = 'user.unlocked'");
    let d = details(&rows[0]);
    assert_eq!(d["by"], me.as_str(), "{d}");
    assert!(d.get("claimed_user").is_none(), "{d}");
}

fn reload_and_wait(env: &Env, n: usize) -> Vec<serde_json::Value> {
    env.signal("HUP");
    for _ in 0..100 {
        let rows = env
            .query("select result, reason from events where type = 'config.reload' order by seq");
        if rows.len() >= n {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no reload event #{n}\n{}", env.gateway_log());
}

#[test]
fn a_reload_is_refused_when_the_config_is_empty_or_fails_check() {
    let env = Env::start();
    let good = std::fs::read_to_string(&env.config_path).unwrap();
    let mut n = 0;
    let broken = [
        ("".to_string(), "is empty"),
        ("# all commented out\n\n".to_string(), "is empty"),
        (
            good.replace(
                "roles = []",
                "roles = []\npassword_hash = \"not-a-phc-string\"",
            ),
            "password_hash",
        ),
        (
            good.split("[[users]]").next().unwrap().to_string(),
            "declares no users",
        ),
    ];
    for (text, why) in broken {
        std::fs::write(&env.config_path, &text).unwrap();
        n += 1;
        let rows = reload_and_wait(&env, n);
        let last = &rows[n - 1];
        assert_eq!(last["result"], "error", "{text:?} was accepted: {rows:?}");
        assert!(
            last["reason"].as_str().unwrap_or("").contains(why),
            "{why}: {rows:?}"
        );
        // The running config stays: alice still gets in.
        let out = env.ssh("alice:web01@127.0.0.1", &["echo still"]);
        assert_eq!(stdout(&out), "still\n", "{}", out.stderr);
    }
    let log = env.gateway_log();
    assert!(log.contains("configuration reload refused"), "{log}");

    // The good config reloads again.
    std::fs::write(&env.config_path, &good).unwrap();
    let rows = reload_and_wait(&env, n + 1);
    assert_eq!(rows[n]["result"], "success", "{rows:?}");
}

#[test]
fn command_rule_bypasses_are_refused_over_exec() {
    let env = Env::start();
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "deny = [{ commands = [\"^rm -rf /\"] }]",
        "deny = [{ commands = [\"^rm -rf /\", \"^id\\\\b\"] }]",
    );
    assert!(text.contains("^id"), "{text}");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");

    let bypasses = [
        "sh -c id",
        "true; id",
        "/usr/bin/id",
        "'i'd",
        "x=1 id",
        "echo $(id)",
        "env id",
        "echo aWQK | base64 -d | sh",
    ];
    for cmd in bypasses {
        let out = env.ssh("alice:web01@127.0.0.1", &[cmd]);
        assert_eq!(out.code, Some(1), "{cmd:?} ran: {}", stdout(&out));
        assert!(
            out.stderr.contains("command denied by role dev deny[0]"),
            "{cmd:?}: {}",
            out.stderr
        );
        assert!(!stdout(&out).contains("uid="), "{cmd:?}: {}", stdout(&out));
    }
    for _ in 0..50 {
        if env
            .query("select id from events where type = 'command.denied'")
            .len()
            >= bypasses.len()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let denied: Vec<String> = env
        .query("select details from events where type = 'command.denied'")
        .iter()
        .map(|r| details(r)["command"].as_str().unwrap_or("").to_string())
        .collect();
    for cmd in bypasses {
        assert!(denied.iter().any(|d| d == cmd), "{cmd:?} not in {denied:?}");
    }

    // Arguments are not commands.
    let out = env.ssh("alice:web01@127.0.0.1", &["echo id"]);
    assert_eq!(stdout(&out), "id\n", "{}", out.stderr);
}
