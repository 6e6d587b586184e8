//! What one client may hold of the gateway: unauthenticated sockets (the
//! login deadline and the per-source cap), terminal sizes, session
//! channels per connection and connections per user. Each test drives
//! the real gateway with raw sockets or the real OpenSSH client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{connect_from, stdout, Env, T};
use gatehouse_testkit::{self as kit, Tmux};

/// Reads until the gateway closes the socket or `wait` passes; true when
/// it was closed.
fn closed_within(sock: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(10))));
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn sockets_that_never_authenticate_cannot_lock_users_out() {
    let env = Env::start_server(
        "login_grace_time = \"3s\"\nmax_startups = 12\nper_source_max_startups = 4\nper_source_queue = 8\n",
        "",
    );
    // 20 sockets from one address: only an SSH banner, or a banner and
    // the first bytes of a packet, then nothing.
    let mut held: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = connect_from("127.0.0.2", env.port);
            let mut hello = b"SSH-2.0-flood\r\n".to_vec();
            if i % 2 == 1 {
                hello.extend_from_slice(&[0, 0, 1]);
            }
            s.write_all(&hello).expect("send the banner");
            s
        })
        .collect();
    // The real user, from another address, is not locked out.
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "still-open"]);
    assert_eq!(out.code, Some(0), "alice locked out: {}", out.stderr);
    assert!(stdout(&out).contains("still-open"));
    // Every socket is closed by the gateway: the ones over the source's
    // share and its queue at once, the others when the login grace time
    // (counted from the accept, waiting included) runs out, whatever
    // state their handshake was in.
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "socket {i} still open long after the login grace time\n{}",
            env.gateway_log()
        );
    }
    let flood = env.wait_rows(
        "SELECT severity, reason FROM events WHERE type = 'source.flood' AND source_ip = '127.0.0.2'",
    );
    assert_eq!(flood[0]["severity"], "high");
    assert!(flood[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("per_source_max_startups"));
    // Once they are gone, the address may connect again (up to its share).
    let mut again = connect_from("127.0.0.2", env.port);
    let mut banner = [0u8; 7];
    again
        .read_exact(&mut banner)
        .expect("a banner for a new socket");
    assert_eq!(&banner, b"SSH-2.0");
}

#[test]
fn a_burst_from_one_host_waits_for_places_instead_of_being_refused() {
    // Like an Ansible run with more forks than a source's share: sixteen
    // clients at once from one address, with room for two at a time.
    let env = Env::start_server("per_source_max_startups = 2\n", "");
    let clients: Vec<Child> = (0..16)
        .map(|i| {
            let mut cmd = env.alice().ssh(
                env.port,
                "alice:web01@127.0.0.1",
                &["echo", &format!("fork-{i}")],
            );
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().expect("spawn ssh")
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let out = c.wait_with_output().expect("ssh ends");
        assert_eq!(
            out.status.code(),
            Some(0),
            "fork {i}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.gateway_log()
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("fork-{i}")));
    }
    let floods = env.query("SELECT reason FROM events WHERE type = 'source.flood'");
    assert!(floods.is_empty(), "connections refused: {floods:?}");
    let started = env.query("SELECT session_id FROM sessions WHERE user = 'alice'");
    assert_eq!(started.len(), 16);
}

#[test]
fn login_timeouts_count_towards_a_source_block() {
    let env = Env::start_server(
        "login_grace_time = \"1s\"\nmax_auth_failures = 3\nper_source_max_startups = 10\n",
        "",
    );
    let mut socks: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect_from("127.0.0.3", env.port);
            s.write_all(b"SSH-2.0-idle\r\n").expect("banner");
            s
        })
        .collect();
    for s in socks.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(30)));
    }
    let blocked = env.wait_rows(
        "SELECT reason FROM events WHERE type = 'source.blocked' AND source_ip = '127.0.0.3'",
    );
    assert!(blocked[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("login timeouts"));
}

#[test]
fn a_huge_terminal_is_cut_to_the_configured_size() {
    let env = Env::start_server("max_pty_cols = 300\nmax_pty_rows = 100\n", "");
    let ssh = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["-tt", "sh"]);
    let line = format!(
        "sleep 1; exec {}",
        std::iter::once(ssh.get_program())
            .chain(ssh.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tmux = Tmux::start(&line).expect("tmux");
    // The terminal is 1000x1000 before ssh asks for its pty.
    tmux.resize(1000, 1000).expect("resize");
    std::thread::sleep(Duration::from_millis(1500));
    tmux.send_literal("stty size\n").expect("type");
    tmux.wait_for("100 300", T)
        .expect("the target sees the capped size");
    // A window change is capped the same way.
    tmux.resize(1000, 999).expect("resize");
    tmux.send_literal("echo; stty size; echo done-$((40+2))\n")
        .expect("type");
    let screen = tmux.wait_for("done-42", T).expect("second stty");
    assert!(!screen.contains("999 1000"), "{screen}");
    tmux.send_literal("exit\n").expect("exit");
}

/// A background `ssh` that stays connected.
fn spawn_ssh(env: &Env, args: &[&str]) -> Child {
    let mut cmd = env.alice().ssh(env.port, "alice:web01@127.0.0.1", args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn ssh")
}

fn active_sessions(env: &Env) -> usize {
    env.query("SELECT session_id FROM sessions WHERE user = 'alice' AND end_time IS NULL")
        .len()
}

#[test]
fn connections_per_user_are_capped_with_a_clear_message() {
    let env = Env::start_server("max_connections_per_user = 2\n", "");
    let mut held: Vec<Child> = (0..2).map(|_| spawn_ssh(&env, &["sleep", "60"])).collect();
    let deadline = Instant::now() + T;
    while active_sessions(&env) < 2 {
        assert!(Instant::now() < deadline, "{}", env.gateway_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "third"]);
    assert_ne!(out.code, Some(0));
    assert!(!stdout(&out).contains("third"));
    assert!(
        out.stderr.contains("max_connections_per_user"),
        "stderr: {}",
        out.stderr
    );
    let denied = env.wait_rows(
        "SELECT reason FROM events WHERE type = 'access.denied' AND reason LIKE '%max_connections_per_user%'",
    );
    assert_eq!(denied.len(), 1);
    for mut c in held.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Places are given back when connections end.
    let deadline = Instant::now() + T;
    loop {
        let out = env.ssh("alice:web01@127.0.0.1", &["echo", "again"]);
        if out.code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", out.stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn session_channels_per_connection_are_capped() {
    let env = Env::start_server("max_sessions = 2\n", "");
    let ctl = env.dir.path().join("ctl");
    let ctl = ctl.to_string_lossy().to_string();
    let mut master = spawn_ssh(&env, &["-M", "-S", &ctl, "-N"]);
    let deadline = Instant::now() + T;
    while !std::path::Path::new(&ctl).exists() {
        assert!(Instant::now() < deadline, "{}", env.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut held: Vec<Child> = (0..2)
        .map(|_| spawn_ssh(&env, &["-S", &ctl, "sleep", "60"]))
        .collect();
    let deadline = Instant::now() + T;
    while env
        .query("SELECT 1 FROM events WHERE type = 'command' AND json_extract(details, '$.command') = 'sleep 60'")
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", env.gateway_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let third = kit::run(
        env.alice().ssh(
            env.port,
            "alice:web01@127.0.0.1",
            &["-S", &ctl, "echo", "third"],
        ),
        T,
    )
    .expect("run ssh");
    // The master connection refuses a third session channel; OpenSSH's
    // mux client then says so and opens a connection of its own.
    assert!(
        third.stderr.contains("refused by peer"),
        "stderr: {}\n{}",
        third.stderr,
        env.gateway_log()
    );
    let per_session = env.query(
        "SELECT session_id, count(*) AS n FROM events WHERE type = 'command' GROUP BY session_id ORDER BY n DESC",
    );
    assert_eq!(per_session[0]["n"], 2, "{per_session:?}");
    assert!(
        per_session.iter().all(|r| r["n"].as_i64() <= Some(2)),
        "{per_session:?}"
    );
    for mut c in held.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = master.kill();
    let _ = master.wait();
}
