//! Command rules on interactive lines, typed into a real terminal (tmux)
//! running a real ssh through the gateway to a real sshd: a denied line is
//! never submitted to the shell and the target is untouched; a step-up
//! line runs only after a fresh TOTP code typed into the session.

mod common;

use std::time::Duration;

use common::{Env, T};
use gatehouse_testkit::{self as kit, Tmux};

const W: Duration = Duration::from_secs(20);

const STEPPER: &str = r#"
[[roles]]
name = "stepper"
allow = [{ targets = { env = "test" }, logins = ["*"] }]
reauth_commands = ["^touch /tmp/gh-stepup"]
"#;

fn bash_session(env: &Env) -> Tmux {
    let opts = env.alice().opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} alice:web01@127.0.0.1 'PS1=\"gh$ \" exec bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", W).expect("prompt");
    tmux
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_denied_interactive_line_never_reaches_the_shell() {
    let env = Env::start();
    let victim = tempfile::tempdir().unwrap();
    let marker = victim.path().join("precious");
    std::fs::write(&marker, "keep me").unwrap();
    let tmux = bash_session(&env);

    // Typed key by key, then Enter: the dev role denies ^rm -rf /.
    tmux.send_literal(&format!("rm -rf {}", victim.path().display()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_keys(&["Enter"]).unwrap();
    let screen = tmux
        .wait_for("gatehouse: command denied by role dev", W)
        .unwrap();
    assert!(marker.exists(), "the target was touched:\n{screen}");

    // Pasted with its Enter in one go: the echo is awaited, then judged.
    tmux.send_literal(&format!("rm -rf {}\r", victim.path().display()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(marker.exists(), "{}", tmux.capture().unwrap());

    // Edited into a denied line with history recall: the screen decides.
    tmux.send_literal(&format!("ls {}", victim.path().display()))
        .unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("precious", W).unwrap();
    tmux.send_keys(&["Up", "C-a"]).unwrap();
    tmux.send_keys(&["Delete", "Delete"]).unwrap();
    tmux.send_literal("rm -rf").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_keys(&["Enter"]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(marker.exists(), "{}", tmux.capture().unwrap());

    // The session goes on; allowed lines run.
    tmux.send_literal("echo still-$((20+1))").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("still-21", W).unwrap();

    let rows = env.wait_rows(
        "select details from events where type = 'command.denied' and details like '%interactive%'",
    );
    assert!(rows.len() >= 3, "{rows:?}");
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(
        d["command"],
        format!("rm -rf {}", victim.path().display()),
        "{rows:?}"
    );
    // Nothing denied was logged as a command that ran.
    let ran = env.query("select command from commands where command like 'rm -rf%'");
    assert!(ran.is_empty(), "{ran:?}");
    env.wait_rows("select command from commands where command = 'echo still-$((20+1))'");
}

#[test]
fn step_up_asks_for_a_fresh_code_inside_the_session() {
    let env = Env::start_with(STEPPER);
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = [\"dev\"]", "roles = [\"dev\", \"stepper\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    let out = env.gatehouse(&["--format", "json", "users", "totp-enroll", "alice"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = gatehouse_auth::totp::base32_decode(v["secret"].as_str().unwrap()).unwrap();
    // Files under /tmp/gh-stepup-* match the rule.
    let good = format!("/tmp/gh-stepup-ok-{}", std::process::id());
    let bad = format!("/tmp/gh-stepup-bad-{}", std::process::id());
    let _ = std::fs::remove_file(&good);
    let _ = std::fs::remove_file(&bad);

    let tmux = bash_session(&env);
    // A wrong code: the command does not run.
    tmux.send_literal(&format!("touch {bad}")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("Verification code:", W).unwrap();
    let code = gatehouse_auth::totp::code(&secret, now());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    tmux.send_literal(wrong).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("wrong or already used verification code", W)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!std::path::Path::new(&bad).exists());

    // The right code: it runs.
    tmux.send_literal(&format!("touch {good}")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_keys(&["Enter"]).unwrap();
    let screen = tmux.wait_for("Verification code:", W).unwrap();
    assert!(!screen.contains(&code), "{screen}");
    tmux.send_literal(&code).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    for _ in 0..100 {
        if std::path::Path::new(&good).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        std::path::Path::new(&good).exists(),
        "{}",
        tmux.capture().unwrap()
    );
    let _ = std::fs::remove_file(&good);

    let rows = env.wait_rows(
        "select mfa, details from events where type = 'auth.success' and details like '%step_up%'",
    );
    assert_eq!(rows[0]["mfa"], 1);
    env.wait_rows(
        "select id from events where type = 'auth.failure' and details like '%step_up%' and reason like 'wrong%'",
    );
    // The code typed is a secret: not in the recording's input.
    let sid = env.wait_rows("select session_id from sessions order by start_time desc")[0]
        ["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(tmux);
    env.wait_rows(&format!(
        "select session_id from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let out = env.gatehouse(&["sessions", "export", &sid]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let cast = String::from_utf8_lossy(&out.stdout);
    assert!(cast.contains("touch"), "{cast}");
    assert!(!cast.contains(&format!("\"{code}")), "{cast}");

    // Without a terminal the command is refused with the reason.
    let out = kit::run(
        env.alice()
            .ssh(env.port, "alice:web01@127.0.0.1", &["touch", &good]),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("ssh -t"), "{}", out.stderr);
    assert!(!std::path::Path::new(&good).exists());
}
