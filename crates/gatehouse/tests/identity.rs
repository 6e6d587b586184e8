//! Second factors and locks with the real OpenSSH client: TOTP over
//! keyboard-interactive after the key (typed into a real terminal), wrong
//! and replayed codes, and locks that end live sessions.

mod common;

use std::time::Duration;

use common::{stdout, Env, T};
use gatehouse_testkit::{self as kit, Tmux};

const MFA_ROLE: &str = r#"
[[roles]]
name = "secure"
allow = [{ targets = { env = "test" }, logins = ["*"] }]
require_mfa = true
"#;

/// bob gets the MFA role; returns his TOTP secret.
fn bob_with_mfa(env: &Env, enroll: bool) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = []", "roles = [\"secure\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    if !enroll {
        return None;
    }
    let out = env.gatehouse(&["--format", "json", "users", "totp-enroll", "bob"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Gatehouse:bob?secret="));
    gatehouse_auth::totp::base32_decode(v["secret"].as_str().unwrap())
}

/// An interactive ssh (no BatchMode, so it prompts) as bob in tmux.
fn interactive_ssh(env: &Env, cmd: &str) -> Tmux {
    Tmux::start(&format!(
        "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=INFO -o NumberOfPasswordPrompts=1 -i {} -p {} bob:web01@127.0.0.1 '{cmd}'",
        env.bob.private.display(),
        env.port
    ))
    .expect("tmux")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn totp_after_the_key_lets_the_user_in_and_codes_are_single_use() {
    let env = Env::start_with(MFA_ROLE);
    let secret = bob_with_mfa(&env, true).unwrap();

    // Key alone is not enough.
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["true"]),
        T,
    )
    .unwrap();
    assert_eq!(
        out.code,
        Some(255),
        "BatchMode cannot answer the second factor"
    );

    let tmux = interactive_ssh(&env, "echo mfa-$((40+2))");
    tmux.wait_for("Verification code:", Duration::from_secs(20))
        .unwrap();
    let code = gatehouse_auth::totp::code(&secret, now());
    tmux.send_literal(&code).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("mfa-42", Duration::from_secs(20)).unwrap();
    let rows = env
        .wait_rows("select mfa, details from events where type = 'auth.success' and user = 'bob'");
    assert_eq!(rows[0]["mfa"], 1);
    assert!(rows[0]["details"]
        .as_str()
        .unwrap()
        .contains("publickey+totp"));
    let rows =
        env.wait_rows("select mfa from sessions where user = 'bob' and end_time is not null");
    assert_eq!(rows[0]["mfa"], 1);

    // The same code again (still inside its window): refused.
    let tmux = interactive_ssh(&env, "echo replayed");
    tmux.wait_for("Verification code:", Duration::from_secs(20))
        .unwrap();
    tmux.send_literal(&code).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    let screen = tmux
        .wait_for("Permission denied", Duration::from_secs(20))
        .unwrap();
    assert!(!screen.contains("replayed\n"), "{screen}");

    // A wrong code: refused.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let tmux = interactive_ssh(&env, "echo wrong");
    tmux.wait_for("Verification code:", Duration::from_secs(20))
        .unwrap();
    tmux.send_literal(wrong).unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("Permission denied", Duration::from_secs(20))
        .unwrap();
    let rows = env.wait_rows(
        "select reason from events where type = 'auth.failure' and user = 'bob' and reason like 'wrong or already used%'",
    );
    assert!(rows.len() >= 2, "{rows:?}");

    // The secret is sealed in the store, not stored in clear.
    let sealed = std::process::Command::new("sqlite3")
        // The gateway may hold a write lock for a moment.
        .args(["-cmd", ".timeout 10000"])
        .arg(env.dir.path().join("gatehouse.db"))
        .arg("select sealed from totp_secrets where user_name = 'bob'")
        .output()
        .unwrap();
    let sealed = String::from_utf8_lossy(&sealed.stdout).trim().to_string();
    assert!(!sealed.is_empty());
    assert!(!sealed.contains(&gatehouse_auth::totp::base32(&secret)));

    // After a reset, the user is told to enrol.
    let out = env.gatehouse(&["users", "totp-reset", "bob"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let tmux = interactive_ssh(&env, "true");
    let screen = tmux
        .wait_for("Permission denied", Duration::from_secs(20))
        .unwrap();
    assert!(screen.contains("totp-enroll bob"), "{screen}");
}

#[test]
fn a_lock_ends_live_sessions_and_refuses_new_ones() {
    let env = Env::start();
    let mut c = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 60"]);
    c.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let live = c.spawn().unwrap();
    let _ = env.wait_rows("select session_id from sessions where active = 1 and user = 'alice'");
    let out = env.gatehouse(&["users", "lock", "alice", "--reason", "left the company"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stdout(&out).contains("ended 1 live session"),
        "{}",
        stdout(&out)
    );
    let done = live.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&done.stderr).contains("left the company"));

    let out = env.ssh("alice:web01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(255));
    let rows = env.wait_rows(
        "select reason from events where type = 'auth.failure' and reason like 'user is locked%'",
    );
    assert!(rows[0]["reason"]
        .as_str()
        .unwrap()
        .contains("left the company"));
    let _ = env.wait_rows("select id from events where type = 'user.locked' and user = 'alice'");
    let _ = env.wait_rows("select id from events where type = 'session.killed' and user = 'alice'");

    assert_eq!(env.gatehouse(&["users", "unlock", "alice"]).code, Some(0));
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo back"])),
        "back\n"
    );

    // A lock with a time limit lifts by itself.
    assert_eq!(
        env.gatehouse(&["users", "lock", "alice", "--ttl", "2s"])
            .code,
        Some(0)
    );
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(255));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo again"])),
        "again\n"
    );
}
