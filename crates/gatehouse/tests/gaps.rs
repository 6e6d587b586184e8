//! Smaller gaps in the record, each now audited or fixed: remote
//! forwards, channel requests (subsystems, agent forwarding, dropped
//! environment variables), a request the target refuses, a target that
//! dies mid-session, and answers that would tell users and targets apart.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stdout, Env, T};
use gatehouse_testkit::{self as kit};

fn details(row: &serde_json::Value) -> serde_json::Value {
    match &row["details"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        v => v.clone(),
    }
}

#[test]
fn remote_forwards_work_when_allowed_and_are_audited() {
    let env = Env::start();
    // What the user's side of the forward reaches.
    let local = TcpListener::bind("127.0.0.1:0").expect("listen");
    let local_port = local.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in local.incoming().flatten() {
            let _ = s.write_all(b"hello-from-the-user-side\n");
        }
    });
    let remote_port = kit::free_port();
    let spec = format!("127.0.0.1:{remote_port}:127.0.0.1:{local_port}");
    let mut ssh = env
        .alice()
        .ssh(
            env.port,
            "alice:web01@127.0.0.1",
            &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -R");
    // The target (sshd on this machine) listens on the user's behalf.
    if let Err(e) = kit::wait_for_port(remote_port, T) {
        let _ = ssh.kill();
        let mut err = String::new();
        if let Some(mut e) = ssh.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!(
            "the target never listened: {e}\n{err}\n{}",
            env.gateway_log()
        );
    }
    let mut conn = TcpStream::connect(("127.0.0.1", remote_port)).expect("connect");
    let _ = conn.set_read_timeout(Some(T));
    let mut line = String::new();
    BufReader::new(&mut conn)
        .read_line(&mut line)
        .expect("read through the forward");
    assert_eq!(line, "hello-from-the-user-side\n");
    drop(conn);
    let rows = env.wait_rows(
        "SELECT result, details FROM events WHERE type = 'port_forward.open' AND json_extract(details, '$.host') = '127.0.0.1'",
    );
    assert_eq!(rows[0]["result"], "success");
    assert_eq!(details(&rows[0])["direction"], "remote");
    let listen = env.wait_rows(
        "SELECT details FROM events WHERE type = 'port_forward.open' AND json_extract(details, '$.listen') IS NOT NULL",
    );
    assert!(details(&listen[0])["listen"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&format!(":{remote_port}")));
    env.wait_rows(
        "SELECT 1 FROM events WHERE type = 'port_forward.close' AND json_extract(details, '$.direction') = 'remote'",
    );
    let _ = ssh.kill();
    let _ = ssh.wait();

    // Without a target there is nowhere to forward from: refused, and
    // the refusal is in the trail.
    let other = kit::free_port();
    let out = kit::run(
        env.alice().ssh(
            env.port,
            "alice@127.0.0.1",
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("127.0.0.1:{other}:127.0.0.1:{local_port}"),
            ],
        ),
        T,
    )
    .expect("ssh -R without a target");
    assert_ne!(out.code, Some(0));
    let denied = env.wait_rows(
        "SELECT reason FROM events WHERE type = 'port_forward.open' AND result = 'denied'",
    );
    assert!(denied[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("needs a target"));
}

#[test]
fn subsystems_agent_requests_and_dropped_environment_are_audited() {
    let env = Env::start();
    // A subsystem the target does not have: refused by the target, and
    // the trail says nothing ran.
    let out = kit::run(
        env.alice().ssh(
            env.port,
            "alice:web01@127.0.0.1",
            &["-s", "nosuchsubsystem"],
        ),
        T,
    )
    .expect("ssh -s");
    assert_ne!(out.code, Some(0));
    let requested = env.wait_rows(
        "SELECT details FROM events WHERE type = 'channel.request' AND result = 'success'",
    );
    assert_eq!(details(&requested[0])["subsystem"], "nosuchsubsystem");
    let refused = env.wait_rows(
        "SELECT reason, details FROM events WHERE type = 'channel.request' AND result = 'failure'",
    );
    assert!(refused[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("nothing ran"));

    // Agent forwarding the role does not grant, and a variable that
    // server.accept_env does not accept.
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let sock = agent_dir.path().join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .output()
        .expect("ssh-agent");
    assert!(agent.status.success());
    let mut cmd = env.alice().ssh(
        env.port,
        "alice:web01@127.0.0.1",
        &["-A", "-o", "SendEnv=GH_SECRET_FLAG", "echo", "ran"],
    );
    cmd.env("SSH_AUTH_SOCK", &sock).env("GH_SECRET_FLAG", "1");
    let out = kit::run(cmd, T).expect("ssh -A");
    assert!(stdout(&out).contains("ran"), "{}", out.stderr);
    let rows = env.wait_rows(
        "SELECT details FROM events WHERE type = 'channel.request' AND result = 'denied'",
    );
    let d = details(&rows[0]);
    assert_eq!(d["agent_forwarding"], "refused", "{d}");
    assert_eq!(d["env_dropped"][0], "GH_SECRET_FLAG", "{d}");
    let _ = Command::new("pkill")
        .args(["-f", &format!("ssh-agent -a {}", sock.display())])
        .status();
}

#[test]
fn a_target_that_dies_mid_session_is_reported_to_the_user_and_the_trail() {
    let env = Env::start();
    let mut ssh = env
        .alice()
        .ssh(
            env.port,
            "alice:web01@127.0.0.1",
            &["echo started; sleep 60; echo finished"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut out = BufReader::new(ssh.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    assert_eq!(line.trim(), "started");
    // Kill the target's session processes (the children of its sshd).
    let killed = Command::new("pkill")
        .args(["-9", "-P", &env.sshd.pid().to_string()])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no sshd session process to kill");
    let deadline = Instant::now() + T;
    let status = loop {
        if let Ok(Some(s)) = ssh.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "ssh still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    if let Some(mut e) = ssh.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("connection to the target was lost"),
        "stderr: {err}\n{}",
        env.gateway_log()
    );
    let end = env.wait_rows("SELECT result, reason FROM events WHERE type = 'session.end'");
    assert_eq!(end[0]["result"], "error");
    assert!(end[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("target was lost"));
}

/// The `Authentications that can continue` line OpenSSH prints for `dest`.
fn offered_methods(env: &Env, key: &std::path::Path, dest: &str) -> String {
    let client = kit::Client::new(key);
    let mut cmd = client.ssh(env.port, dest, &["-v", "true"]);
    cmd.arg("-o").arg("LogLevel=DEBUG1");
    let out = kit::run(cmd, T).expect("ssh -v");
    out.stderr
        .lines()
        .find(|l| l.contains("Authentications that can continue"))
        .map(|l| {
            l.split("continue:")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[test]
fn answers_do_not_tell_users_or_targets_apart() {
    let hash = {
        let mut cmd = Command::new(common::gatehouse_bin());
        cmd.args(["users", "hash-password"]);
        let out = kit::run_with_input(cmd, b"correct horse\n", T).expect("hash-password");
        stdout(&out).trim().to_string()
    };
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let env = Env::start_with(&format!(
        "\n[[users]]\nname = \"carol\"\nkeys = []\nroles = [\"dev\"]\npassword_hash = \"{hash}\"\n"
    ));
    // A stranger's key: the methods offered are the same for a user with
    // a password, one without, and one that does not exist.
    let stranger = kit::keygen(env.dir.path(), "stranger").expect("keygen");
    let carol = offered_methods(&env, &stranger.private, "carol:web01@127.0.0.1");
    let alice = offered_methods(&env, &stranger.private, "alice:web01@127.0.0.1");
    let nobody = offered_methods(&env, &stranger.private, "nobody:web01@127.0.0.1");
    assert!(carol.contains("password"), "{carol}");
    assert_eq!(carol, alice);
    assert_eq!(alice, nobody);

    // A target that does not exist reads like one the user may not reach.
    let missing = env.ssh("alice:nosuch@127.0.0.1", &["true"]);
    let forbidden = env.ssh("alice:prod01@127.0.0.1", &["true"]);
    let shape = |s: &str, t: &str| s.replace(t, "TARGET");
    assert_eq!(
        shape(missing.stderr.trim(), "nosuch"),
        shape(forbidden.stderr.trim(), "prod01")
    );
}

#[test]
fn keys_offered_before_the_right_one_are_no_failure() {
    let env = Env::start();
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(kit::keygen(env.dir.path(), &format!("spare{i}")).expect("keygen"));
    }
    // `-i` several times: OpenSSH offers them in order, alice's last
    // (the client's own options end with `-i` and alice's key).
    let mut cmd = Command::new("ssh");
    for k in &keys {
        cmd.arg("-i").arg(&k.private);
    }
    cmd.args(env.alice().opts())
        .args(["-p", &env.port.to_string()])
        .args(["alice:web01@127.0.0.1", "echo", "in"]);
    let out = kit::run(cmd, T).expect("ssh");
    assert_eq!(stdout(&out).trim(), "in", "{}", out.stderr);
    env.wait_rows("SELECT 1 FROM events WHERE type = 'session.end'");
    let failures = env.query("SELECT reason FROM events WHERE type = 'auth.failure'");
    assert!(failures.is_empty(), "{failures:?}");

    // A client that offers only keys that are not alice's leaves one
    // failure naming the last key it offered.
    let mut cmd = Command::new("ssh");
    cmd.args(kit::Client::new(&keys[0].private).opts()).args([
        "-p",
        &env.port.to_string(),
        "alice:web01@127.0.0.1",
        "true",
    ]);
    assert_eq!(kit::run(cmd, T).expect("ssh").code, Some(255));
    let failures = env.wait_rows("SELECT reason FROM events WHERE type = 'auth.failure'");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("not registered for user \"alice\""));
}

#[test]
fn a_line_typed_before_the_prompt_is_still_judged() {
    let env = Env::start();
    let mut ssh = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["-tt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    let mut stdin = ssh.stdin.take().expect("stdin");
    // Typed at once, before the shell has drawn its first prompt.
    stdin
        .write_all(b"rm -rf /nonexistent-gatehouse-dir; echo ran-$((6*7))\n")
        .expect("type ahead");
    std::thread::sleep(Duration::from_secs(2));
    stdin
        .write_all(b"echo after-$((6*7))\nexit\n")
        .expect("type");
    drop(stdin);
    let mut out = String::new();
    if let Some(mut o) = ssh.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let _ = ssh.wait();
    assert!(!out.contains("ran-42"), "the denied line ran:\n{out}");
    assert!(out.contains("after-42"), "{out}");
    let denied = env.wait_rows("SELECT details FROM events WHERE type = 'command.denied'");
    assert!(details(&denied[0])["command"]
        .as_str()
        .unwrap_or_default()
        .contains("rm -rf /nonexistent-gatehouse-dir"));
}
