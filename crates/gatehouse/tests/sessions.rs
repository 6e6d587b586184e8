//! Real OpenSSH `ssh` through a real gateway to a real sshd: exec, exit
//! codes and signals, stdin/stdout/stderr, env, pty, the menu, policy and
//! every kind of bad input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{stdout, Env, T};
use gatehouse_testkit::{self as kit, Tmux};

#[test]
fn exec_runs_on_the_target_with_output_and_exit_code() {
    let env = Env::start();
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "hello", "from", "web01"]);
    assert_eq!(
        out.code,
        Some(0),
        "stderr: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    assert_eq!(stdout(&out), "hello from web01\n");

    let out = env.ssh("alice:web01@127.0.0.1", &["echo out; echo err >&2; exit 7"]);
    assert_eq!(out.code, Some(7));
    assert_eq!(stdout(&out), "out\n");
    assert!(out.stderr.contains("err"), "{}", out.stderr);
}

#[test]
fn explicit_login_and_default_login_both_work() {
    let env = Env::start();
    let dest = format!("alice:{}@web01@127.0.0.1", env.login);
    let out = env.ssh(&dest, &["id", "-un"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(stdout(&out).trim(), env.login);
    let out = env.ssh("alice:web01@127.0.0.1", &["id", "-un"]);
    assert_eq!(stdout(&out).trim(), env.login);
}

#[test]
fn exit_codes_and_signals_match_a_direct_connection() {
    let env = Env::start();
    for cmd in ["true", "false", "exit 42", "kill -TERM $$", "kill -KILL $$"] {
        let direct_client = kit::Client::new(&env.dir.path().join("client_ed25519"));
        let direct = kit::run(
            direct_client.ssh(env.sshd.port, &format!("{}@127.0.0.1", env.login), &[cmd]),
            T,
        )
        .expect("direct ssh");
        let via = env.ssh("alice:web01@127.0.0.1", &[cmd]);
        assert_eq!(
            via.code, direct.code,
            "{cmd}: gateway {:?} vs direct {:?}: {}",
            via.code, direct.code, via.stderr
        );
    }
}

#[test]
fn stdin_is_forwarded_until_eof() {
    let env = Env::start();
    let out = kit::run_with_input(
        env.alice()
            .ssh(env.port, "alice:web01@127.0.0.1", &["wc", "-c"]),
        b"twelve bytes",
        T,
    )
    .expect("ssh");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(stdout(&out).trim(), "12");
}

#[test]
fn a_30_mb_stream_arrives_byte_identical_both_ways() {
    let env = Env::start();
    let mut data = vec![0u8; 30 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let remote = env.dir.path().join("upload.bin");
    let cmd = format!("cat > {}", remote.display());
    let out = kit::run_with_input(
        env.alice().ssh(env.port, "alice:web01@127.0.0.1", &[&cmd]),
        &data,
        T,
    )
    .expect("upload");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let uploaded = std::fs::read(&remote).expect("uploaded file");
    assert!(
        uploaded == data,
        "upload differs ({} vs {} bytes)",
        uploaded.len(),
        data.len()
    );

    let out = env.ssh(
        "alice:web01@127.0.0.1",
        &[&format!("cat {}", remote.display())],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout == data,
        "download differs ({} bytes)",
        out.stdout.len()
    );
}

#[test]
fn environment_is_passed_only_when_allowed() {
    let env = Env::start();
    let mut c = std::process::Command::new("ssh");
    c.args(env.alice().opts())
        .args([
            "-o",
            "SendEnv=LANG GH_TEST_SECRET",
            "-p",
            &env.port.to_string(),
        ])
        .args([
            "alice:web01@127.0.0.1",
            "echo LANG=$LANG GH=$GH_TEST_SECRET",
        ])
        .env("LANG", "C.UTF-8")
        .env("GH_TEST_SECRET", "leak");
    let out = kit::run(c, T).expect("ssh");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // sshd accepts GH_TEST_*; the gateway's accept_env does not.
    assert_eq!(stdout(&out).trim(), "LANG=C.UTF-8 GH=");
}

#[test]
fn a_pty_session_gets_a_terminal_with_term_and_size() {
    let env = Env::start();
    let mut c = std::process::Command::new("ssh");
    c.args(env.alice().opts())
        .args([
            "-tt",
            "-p",
            &env.port.to_string(),
            "alice:web01@127.0.0.1",
            "tty; echo TERM=$TERM",
        ])
        .env("TERM", "xterm-256color");
    let out = kit::run(c, T).expect("ssh -tt");
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/"), "{text} {}", out.stderr);
    assert!(text.contains("TERM=xterm-256color"), "{text}");
}

#[test]
fn interactive_shell_in_tmux_follows_window_changes() {
    let env = Env::start();
    let opts = env.alice().opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} alice:web01@127.0.0.1 'PS1=\"gh$ \" bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", Duration::from_secs(20))
        .expect("prompt");
    tmux.send_literal("stty size; echo marker-$((6*7))")
        .unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    let screen = tmux
        .wait_for("marker-42", Duration::from_secs(10))
        .expect("output");
    assert!(screen.contains("40 120"), "{screen}");
    tmux.resize(100, 30).expect("resize");
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_literal("stty size; echo second-$((6*7))")
        .unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    let screen = tmux
        .wait_for("second-42", Duration::from_secs(10))
        .expect("output");
    assert!(screen.contains("30 100"), "{screen}");
    tmux.send_literal("exit").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
}

#[test]
fn the_menu_lists_reachable_targets_and_connects_to_the_choice() {
    let env = Env::start();
    let opts = env.alice().opts().join(" ");
    let tmux =
        Tmux::start(&format!("ssh {opts} -tt -p {} alice@127.0.0.1", env.port)).expect("tmux");
    let screen = tmux
        .wait_for("Choose a target", Duration::from_secs(20))
        .expect("menu");
    assert!(screen.contains("1) web01"), "{screen}");
    assert!(
        !screen.contains("prod01"),
        "prod01 is not allowed for alice: {screen}"
    );
    tmux.send_literal("1").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("connecting to web01", Duration::from_secs(10))
        .expect("connecting");
    std::thread::sleep(Duration::from_millis(500));
    tmux.send_literal("echo via-menu-$((40+2))").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("via-menu-42", Duration::from_secs(10))
        .expect("shell on target");
    let rows = env
        .wait_rows("select target from events where type = 'session.start' and target = 'web01'");
    assert_eq!(rows[0]["target"], "web01");
}

#[test]
fn without_a_terminal_the_menu_is_a_list_and_gateway_commands_answer() {
    let env = Env::start();
    let out = env.ssh("alice@127.0.0.1", &["whoami"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        stdout(&out).starts_with("alice roles=dev"),
        "{}",
        stdout(&out)
    );
    let out = env.ssh("alice@127.0.0.1", &["targets"]);
    assert!(stdout(&out).contains("web01"), "{}", stdout(&out));
    let out = env.ssh("alice@127.0.0.1", &["frobnicate"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("unknown gateway command"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_sessions_command_lists_the_users_own_sessions_only() {
    let env = Env::start();
    let out = env.ssh("alice@127.0.0.1", &["sessions"]);
    assert_eq!(stdout(&out), "no sessions of alice\n", "{}", out.stderr);
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo one"])),
        "one\n"
    );
    let _ = env.wait_rows("select session_id from sessions where end_time is not null");
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob@127.0.0.1", &["sessions"]),
        T,
    )
    .unwrap();
    assert_eq!(stdout(&out), "no sessions of bob\n", "{}", out.stderr);
    let rows = env.query("select session_id from sessions where \"user\" = 'alice'");
    let sid = rows[0]["session_id"].as_str().unwrap().to_string();
    let out = env.ssh("alice@127.0.0.1", &["sessions"]);
    let text = stdout(&out);
    assert!(text.starts_with(&sid), "{text}");
    assert!(text.contains("@web01  started "), "{text}");
    assert!(text.contains(" ended "), "{text}");
}

#[test]
fn policy_denials_get_one_clear_line_and_an_event() {
    let env = Env::start();
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["true"]),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("access denied: no role of user \"bob\""),
        "{}",
        out.stderr
    );

    let out = env.ssh("alice:prod01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);

    let out = env.ssh("alice:root@web01@127.0.0.1", &["true"]);
    if env.login != "root" {
        assert_eq!(out.code, Some(1));
        assert!(out.stderr.contains("login \"root\""), "{}", out.stderr);
    }

    let out = env.ssh("alice:nosuch@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("no role of user \"alice\" allows any login on target \"nosuch\""),
        "{}",
        out.stderr
    );

    let rows = env.wait_rows(
        "select user, target, result, reason from events where type = 'access.denied' order by seq",
    );
    assert!(
        rows.iter()
            .any(|r| r["user"] == "bob" && r["target"] == "web01" && r["result"] == "denied"),
        "{rows:?}"
    );
    // The trail keeps the precise reason the user is not shown.
    assert!(
        rows.iter().any(|r| r["target"] == "nosuch"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("unknown target"))),
        "{rows:?}"
    );
}

#[test]
fn denied_exec_commands_never_reach_the_target() {
    let env = Env::start();
    let out = env.ssh("alice:web01@127.0.0.1", &["rm -rf / --no-preserve-root"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("command denied by role dev deny[0]"),
        "{}",
        out.stderr
    );
    let rows = env.wait_rows("select details from events where type = 'command.denied'");
    assert!(rows[0]["details"]
        .as_str()
        .unwrap_or_default()
        .contains("rm -rf /"));
    assert!(
        !env.sshd.log().contains("rm -rf"),
        "the target saw the command"
    );
}

#[test]
fn unknown_users_and_bad_usernames_are_refused_and_audited() {
    let env = Env::start();
    let out = env.ssh("mallory:web01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(255));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);

    let out = env.ssh("alice:a:b@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("malformed username"), "{}", out.stderr);

    let huge = format!("{}:web01@127.0.0.1", "x".repeat(2000));
    let out = env.ssh(&huge, &["true"]);
    assert_eq!(out.code, Some(255));

    // A key that belongs to someone else.
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "alice:web01@127.0.0.1", &["true"]),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(255));

    // A client that offers no key at all.
    let mut c = std::process::Command::new("ssh");
    c.args(env.alice().opts())
        .args(["-o", "PubkeyAuthentication=no", "-p", &env.port.to_string()])
        .args(["keyless:web01@127.0.0.1", "true"]);
    assert_eq!(kit::run(c, T).unwrap().code, Some(255));
    let rows = env.wait_rows(
        "select user, reason from events where type = 'auth.failure' and user = 'keyless'",
    );
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("without authenticating"),
        "{rows:?}"
    );

    let rows =
        env.wait_rows("select user, reason from events where type = 'auth.failure' order by seq");
    assert!(
        rows.iter().any(|r| r["user"] == "mallory"
            && r["reason"].as_str().unwrap_or("").contains("unknown user")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not registered for user \"alice\"")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["reason"].as_str().unwrap_or("").contains("bytes long")),
        "{rows:?}"
    );

    // And the gateway still serves.
    let out = env.ssh("alice:web01@127.0.0.1", &["echo still-here"]);
    assert_eq!(stdout(&out), "still-here\n");
}

#[test]
fn a_client_that_disconnects_mid_handshake_does_not_disturb_the_gateway() {
    let env = Env::start();
    for payload in [
        &b""[..],
        b"SSH-2.0-half\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        &[0xffu8; 4096][..],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", env.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(payload);
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
    let out = env.ssh("alice:web01@127.0.0.1", &["echo ok"]);
    assert_eq!(stdout(&out), "ok\n", "{}", out.stderr);
}

#[test]
fn an_unreachable_target_is_reported_and_audited() {
    let env = Env::start();
    let out = env.ssh("alice:down01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("cannot connect to target \"down01\""),
        "{}",
        out.stderr
    );
    let rows = env.wait_rows("select severity from events where type = 'target.unreachable'");
    assert_eq!(rows[0]["severity"], "warn");
}

#[test]
fn a_target_that_drops_a_handshake_past_its_max_startups_is_tried_again() {
    // A target's sshd at its MaxStartups closes new connections before
    // its banner, as during a burst of logins (sshd takes the last
    // MaxStartups line of its config). One unauthenticated socket
    // holds its only place until the gateway's first attempt is dropped.
    let mut env = Env::start();
    let busy = env
        .add_targets(&["busy01"], "MaxStartups 1\n")
        .pop()
        .expect("sshd");
    let held = TcpStream::connect(busy.address()).expect("hold the target's place");
    // While the place stays taken, every attempt is dropped: the user gets
    // one line saying so, and the trail has it.
    let out = env.ssh("alice:busy01@127.0.0.1", &["echo", "got-in"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("closed the connection before the SSH key exchange (after 4 attempts)"),
        "{}",
        out.stderr
    );
    let rows = env.wait_rows(
        "SELECT reason FROM events WHERE type = 'target.unreachable' AND target = 'busy01'",
    );
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("may be overloaded"),
        "{rows:?}"
    );
    let dropped_before = busy.log().matches("past MaxStartups").count();
    let freed = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let deadline = std::time::Instant::now() + T;
            while std::time::Instant::now() < deadline {
                if busy.log().matches("past MaxStartups").count() > dropped_before {
                    drop(held);
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        });
        let out = env.ssh("alice:busy01@127.0.0.1", &["echo", "got-in"]);
        assert_eq!(
            stdout(&out),
            "got-in\n",
            "{}\n{}\n{}",
            out.stderr,
            busy.log(),
            env.gateway_log()
        );
        watcher.join().expect("watcher")
    });
    assert!(
        freed,
        "the target never dropped a connection:\n{}",
        busy.log()
    );
    assert!(
        env.gateway_log().contains("trying again"),
        "{}",
        env.gateway_log()
    );
}

#[test]
fn a_host_key_mismatch_refuses_the_session_with_a_high_severity_event() {
    let env = Env::start();
    let out = env.ssh("alice:evil01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(255));
    assert!(out.stderr.contains("host key changed"), "{}", out.stderr);
    let rows = env
        .wait_rows("select severity, reason from events where type = 'target.host_key_mismatch'");
    assert_eq!(rows[0]["severity"], "high");
}

#[test]
fn trust_on_first_use_remembers_the_key_in_the_store() {
    let env = Env::start();
    for _ in 0..2 {
        let out = env.ssh("alice:tofu01@127.0.0.1", &["echo tofu"]);
        assert_eq!(stdout(&out), "tofu\n", "{}", out.stderr);
    }
    // Change the remembered key: the next connection must be refused.
    let db = env.dir.path().join("gatehouse.db");
    let status = std::process::Command::new("sqlite3")
        // The gateway may hold a write lock for a moment.
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg("UPDATE host_keys SET fingerprint = 'SHA256:changed' WHERE target = 'tofu01'")
        .status()
        .expect("sqlite3 (install the sqlite3 package)");
    assert!(status.success());
    let out = env.ssh("alice:tofu01@127.0.0.1", &["echo tofu"]);
    assert_eq!(out.code, Some(255));
    assert!(out.stderr.contains("host key changed"), "{}", out.stderr);
}

#[test]
fn sessions_and_commands_are_in_the_audit_views() {
    let env = Env::start();
    let out = env.ssh("alice:web01@127.0.0.1", &["echo audited; exit 3"]);
    assert_eq!(out.code, Some(3));
    let rows = env.wait_rows("select user, target, login, exit_status, bytes_out, end_time from sessions where end_time is not null");
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["target"], "web01");
    assert_eq!(rows[0]["login"], env.login.as_str());
    assert_eq!(rows[0]["exit_status"], 3);
    assert!(rows[0]["bytes_out"].as_i64().unwrap_or(0) >= 8, "{rows:?}");
    let rows = env.query("select user, command, source from commands");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["command"], "echo audited; exit 3");
    assert_eq!(rows[0]["source"], "exec");
    let types: Vec<String> = env
        .query("select type from events order by seq")
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("").to_string())
        .collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("{t} missing: {types:?}"))
    };
    assert!(pos("auth.success") < pos("command"));
    assert!(pos("session.start") < pos("session.end"));
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn local_port_forwarding_works_only_when_the_role_allows_it() {
    let env = Env::start_with(
        r#"
[[roles]]
name = "no-forward"
allow = [{ targets = { env = "test" }, logins = ["*"] }]

[[users]]
name = "carol"
keys = []
roles = ["no-forward"]
"#,
    );
    let banner = |user: &str, key: &kit::KeyPair| -> String {
        let local = kit::free_port();
        let mut c = std::process::Command::new("ssh");
        c.args(kit::Client::new(&key.private).opts())
            .args(["-p", &env.port.to_string()])
            .args([
                "-L",
                &format!("127.0.0.1:{local}:127.0.0.1:{}", env.sshd.port),
            ])
            .arg(format!("{user}:web01@127.0.0.1"))
            .arg("sleep 4")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().expect("ssh -L");
        kit::wait_for_port(local, Duration::from_secs(10)).expect("forward listening");
        let mut s = TcpStream::connect(("127.0.0.1", local)).expect("connect forward");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = child.kill();
        let _ = child.wait();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(banner("alice", &env.alice).starts_with("SSH-2.0-OpenSSH"));
    let rows = env.wait_rows("select result from events where type = 'port_forward.open'");
    assert_eq!(rows[0]["result"], "success");

    // Same forward for a user whose role does not allow forwarding.
    let mut text = std::fs::read_to_string(&env.config_path).unwrap();
    text = text.replace(
        "keys = []",
        &format!("keys = [\"{}\"]", env.bob.public_line),
    );
    text = text.replace(
        &format!("name = \"bob\"\nkeys = [\"{}\"]", env.bob.public_line),
        "name = \"bob\"\nkeys = []",
    );
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ = env.wait_rows("select id from events where type = 'config.reload'");
    assert_eq!(banner("carol", &env.bob), "");
    let rows = env.wait_rows(
        "select user, result from events where type = 'port_forward.open' and result = 'denied'",
    );
    assert_eq!(rows[0]["user"], "carol");
}

#[test]
fn sighup_reloads_policy_without_dropping_sessions() {
    let env = Env::start();
    let mut long = env.alice().ssh(
        env.port,
        "alice:web01@127.0.0.1",
        &["sleep 3; echo survived"],
    );
    long.stdout(std::process::Stdio::piped());
    let long = long.spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(800));
    let bob = |cmd: &str| {
        kit::run(
            env.client(&env.bob)
                .ssh(env.port, "bob:web01@127.0.0.1", &[cmd]),
            T,
        )
        .unwrap()
    };
    assert_eq!(bob("true").code, Some(1));
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = []", "roles = [\"dev\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    let out = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["echo bob-in"]),
        T,
    )
    .unwrap();
    assert_eq!(stdout(&out), "bob-in\n", "{}", out.stderr);
    let done = long.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&done.stdout), "survived\n");

    // A broken config is refused and the old one stays in force.
    std::fs::write(&env.config_path, "[server]\nlisten = 5\n").unwrap();
    env.signal("HUP");
    let rows = env
        .wait_rows("select reason from events where type = 'config.reload' and result = 'error'");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("gatehouse.toml"),
        "{rows:?}"
    );
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo still"])),
        "still\n"
    );
}

#[test]
fn sigterm_tells_sessions_and_flushes_their_events() {
    let mut env = Env::start();
    let mut long = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 30"]);
    long.stderr(std::process::Stdio::piped());
    let long = long.spawn().expect("spawn");
    let _ = env.wait_rows("select id from events where type = 'session.start'");
    let status = env.stop_gateway().expect("gateway exited");
    assert!(status.success(), "{status:?}\n{}", env.gateway_log());
    let done = long.wait_with_output().expect("client ended");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("shutting down"), "{stderr}");
    let rows = env.query(
        "select type from events where type in ('session.end', 'gateway.stop') order by seq",
    );
    let types: Vec<_> = rows
        .iter()
        .map(|r| r["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, vec!["session.end", "gateway.stop"]);
}

#[test]
fn when_the_audit_store_cannot_be_written_new_sessions_are_refused() {
    let env = Env::start();
    assert_eq!(
        stdout(&env.ssh("alice:web01@127.0.0.1", &["echo before"])),
        "before\n"
    );
    let db = env.dir.path().join("gatehouse.db");
    let status = std::process::Command::new("sqlite3")
        // The gateway may hold a write lock for a moment.
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg("CREATE TRIGGER refuse_writes BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk says no'); END;")
        .status()
        .expect("sqlite3");
    assert!(status.success());
    let out = env.ssh("alice:web01@127.0.0.1", &["echo after"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(stdout(&out), "");
    assert!(
        out.stderr.contains("cannot write its audit trail"),
        "{}",
        out.stderr
    );
}

/// Starts a real ssh-agent holding `key`; returns (socket path, agent pid).
fn start_agent(dir: &std::path::Path, key: &std::path::Path) -> (std::path::PathBuf, String) {
    let sock = dir.join("agent.sock");
    let out = std::process::Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .output()
        .expect("ssh-agent (install openssh-client)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pid = text
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("agent pid")
        .to_string();
    let added = std::process::Command::new("ssh-add")
        .arg(key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    (sock, pid)
}

#[test]
fn agent_forwarding_is_refused_unless_the_role_allows_it() {
    let env = Env::start_with(
        r#"
[[roles]]
name = "agent-ok"
allow = [{ targets = { env = "test" }, logins = ["*"] }]
agent_forwarding = true
"#,
    );
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = []", "roles = [\"agent-ok\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");

    let (sock, pid) = start_agent(env.dir.path(), &env.alice.private);
    let probe = |key: &kit::KeyPair, user: &str| -> String {
        let mut c = std::process::Command::new("ssh");
        c.args(env.client(key).opts())
            .args(["-A", "-p", &env.port.to_string()])
            .arg(format!("{user}:web01@127.0.0.1"))
            .arg("ssh-add -l >/dev/null 2>&1; echo agent=$?")
            .env("SSH_AUTH_SOCK", &sock);
        let out = kit::run(c, T).expect("ssh -A");
        stdout(&out).trim().to_string()
    };
    // alice's role does not allow agent forwarding: no agent on the target
    // (ssh-add exits 2 when it cannot reach an agent).
    assert_eq!(probe(&env.alice, "alice"), "agent=2");
    // bob's role allows it: the target reaches the user's agent (exit 0,
    // one identity listed).
    assert_eq!(probe(&env.bob, "bob"), "agent=0");
    let _ = std::process::Command::new("kill").arg(&pid).status();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_slow_reader_does_not_make_the_gateway_buffer_without_bound() {
    let env = Env::start();
    let before = rss_kib(env.gateway_pid());
    let total: u64 = 200 * 1024 * 1024;
    let mut c = env.alice().ssh(
        env.port,
        "alice:web01@127.0.0.1",
        &[&format!("head -c {total} /dev/zero")],
    );
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    // Nobody reads the client's stdout for a while: the target keeps
    // writing, so anything the gateway buffered would show up here.
    std::thread::sleep(Duration::from_secs(3));
    let stalled = rss_kib(env.gateway_pid());
    let mut out = child.stdout.take().expect("stdout");
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(child.wait().expect("wait").success());
    assert_eq!(n, total);
    let growth_mib = stalled.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "gateway grew by {growth_mib} MiB while the reader was stalled"
    );
}

#[test]
fn max_session_ends_the_session_with_the_reason() {
    let env = Env::start_with(
        r#"
[[roles]]
name = "short"
allow = [{ targets = { env = "test" }, logins = ["*"] }]
max_session = "2s"
"#,
    );
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("roles = []", "roles = [\"short\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    let out = kit::run(
        env.client(&env.bob).ssh(
            env.port,
            "bob:web01@127.0.0.1",
            &["sleep 50; echo not-reached"],
        ),
        T,
    )
    .unwrap();
    assert_ne!(out.code, Some(0));
    assert_eq!(stdout(&out), "");
    assert!(
        out.stderr.contains("maximum session length"),
        "{}",
        out.stderr
    );
    let rows = env.wait_rows("select user, reason from events where type = 'session.killed'");
    assert_eq!(rows[0]["user"], "bob");
    let _ = env.wait_rows("select id from events where type = 'session.end' and user = 'bob'");
}

#[test]
fn a_known_hosts_file_verifies_the_target() {
    let known = tempfile::NamedTempFile::new().unwrap();
    let other = tempfile::NamedTempFile::new().unwrap();
    let env = Env::start_with(
        r#"
[[roles]]
name = "kh"
allow = [{ targets = { env = "kh" }, logins = ["*"] }]
"#,
    );
    std::fs::write(known.path(), format!("{}\n", env.sshd.known_hosts_line())).unwrap();
    // The same host entry with a different key.
    let stranger = kit::keygen(env.dir.path(), "stranger").unwrap();
    std::fs::write(
        other.path(),
        format!("[127.0.0.1]:{} {}\n", env.sshd.port, stranger.public_line),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&env.config_path).unwrap();
    for (name, file) in [("kh-good", known.path()), ("kh-bad", other.path())] {
        text.push_str(&format!(
            "\n[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nlabels = {{ env = \"kh\" }}\nknown_hosts = \"{}\"\ndefault_login = \"{}\"\n",
            env.sshd.address(),
            file.display(),
            env.login
        ));
    }
    text = text.replace("roles = []", "roles = [\"kh\"]");
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    let bob =
        |dest: &str| kit::run(env.client(&env.bob).ssh(env.port, dest, &["echo kh"]), T).unwrap();
    let out = bob("bob:kh-good@127.0.0.1");
    assert_eq!(stdout(&out), "kh\n", "{}", out.stderr);
    let out = bob("bob:kh-bad@127.0.0.1");
    assert_eq!(out.code, Some(255));
    assert!(out.stderr.contains("host key changed"), "{}", out.stderr);
}

#[test]
fn repeated_authentication_failures_block_the_source() {
    let env = Env::start();
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "node = \"test-node\"",
        "node = \"test-node\"\nmax_auth_failures = 4\nblock_for = \"10m\"",
    );
    std::fs::write(&env.config_path, text).unwrap();
    env.signal("HUP");
    let _ =
        env.wait_rows("select id from events where type = 'config.reload' and result = 'success'");
    // bob's key presented for alice: a failure each time, answered slower.
    for _ in 0..4 {
        let out = kit::run(
            env.client(&env.bob)
                .ssh(env.port, "alice:web01@127.0.0.1", &["true"]),
            T,
        )
        .unwrap();
        assert_eq!(out.code, Some(255));
    }
    let rows = env.wait_rows("select reason, severity from events where type = 'source.blocked'");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("authentication failures"),
        "{rows:?}"
    );
    assert_eq!(rows[0]["severity"], "high");
    // Now even the right key from that address is refused.
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(255));
}
