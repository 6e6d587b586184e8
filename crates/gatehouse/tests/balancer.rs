//! Behind a real HAProxy that sends PROXY protocol headers (version 1 on
//! one port, version 2 on another): the user's own address is the
//! session's source, a listed balancer that sends no header is refused
//! and audited, and nobody else can claim an address.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::servers::Haproxy;
use common::{stdout, Env, T};
use gatehouse_testkit as kit;

/// HAProxy in front of the gateway: `v1` and `v2` are its listening
/// ports, one per PROXY protocol version; it connects from 127.0.0.1.
fn haproxy(gateway: u16, v1: u16, v2: u16) -> Haproxy {
    Haproxy::start(
        &format!(
            "listen v1\n  bind 127.0.0.1:{v1}\n  server gw 127.0.0.1:{gateway} source 127.0.0.1 send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2}\n  server gw 127.0.0.1:{gateway} source 127.0.0.1 send-proxy-v2\n"
        ),
        &[v1, v2],
    )
}

/// `ssh` from the local address `from` to `port`.
fn ssh_from(env: &Env, from: &str, port: u16, dest: &str, cmd: &str) -> kit::Output {
    let mut c = Command::new("ssh");
    c.args(env.client(&env.alice).opts())
        .args(["-b", from, "-p", &port.to_string(), dest, cmd]);
    kit::run(c, T).expect("run ssh")
}

fn source_of(env: &Env, marker: &str) -> String {
    let rows = env.wait_rows(&format!(
        "select s.source_ip from sessions s join commands c on c.session_id = s.session_id where c.command = 'echo {marker}'"
    ));
    rows[0]["source_ip"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_users_address_comes_through_the_balancer_and_nobody_else_can_claim_one() {
    let env = Env::start_server("proxy_protocol = [\"127.0.0.1/32\"]", "");
    let (v1, v2) = (kit::free_port(), kit::free_port());
    let _lb = haproxy(env.port, v1, v2);

    for (port, from, marker) in [(v1, "127.0.0.7", "via-v1"), (v2, "127.0.0.8", "via-v2")] {
        let out = ssh_from(
            &env,
            from,
            port,
            "alice:web01@127.0.0.1",
            &format!("echo {marker}"),
        );
        assert_eq!(stdout(&out), format!("{marker}\n"), "{}", out.stderr);
        assert_eq!(source_of(&env, marker), from);
    }
    let rows = env.query("select source_ip from events where type = 'auth.success' order by seq");
    let sources: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["source_ip"].as_str())
        .collect();
    assert_eq!(sources, vec!["127.0.0.7", "127.0.0.8"], "{rows:?}");

    // From the balancer's address but without a header: refused, audited.
    let out = ssh_from(
        &env,
        "127.0.0.1",
        env.port,
        "alice:web01@127.0.0.1",
        "echo direct",
    );
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    let rows = env.wait_rows("select source_ip, reason from events where type = 'proxy.invalid'");
    assert_eq!(rows[0]["source_ip"], "127.0.0.1");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("send-proxy"),
        "{rows:?}"
    );

    // Any other address speaks SSH from the first byte: a PROXY line
    // from it is not a claim the gateway believes.
    let out = ssh_from(
        &env,
        "127.0.0.2",
        env.port,
        "alice:web01@127.0.0.1",
        "echo plain",
    );
    assert_eq!(stdout(&out), "plain\n", "{}", out.stderr);
    assert_eq!(source_of(&env, "plain"), "127.0.0.2");
    let forged = Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket()\ns.settimeout(5)\ns.bind(('127.0.0.2',0))\ns.connect(('127.0.0.1',int(sys.argv[1])))\ns.sendall(b'PROXY TCP4 10.9.9.9 127.0.0.1 1234 22\\r\\n')\ntry:\n  s.recv(256)\nexcept Exception:\n  pass\ns.close()",
            &env.port.to_string(),
        ])
        .status()
        .expect("python3");
    assert!(forged.success());
    std::thread::sleep(Duration::from_millis(500));
    let claimed = env.query("select id from events where source_ip = '10.9.9.9'");
    assert!(claimed.is_empty(), "{claimed:?}");
}

/// A rolling restart: on SIGTERM the node stops accepting at once (the
/// balancer sends new users elsewhere), tells running sessions, and lets
/// them finish within `server.drain_timeout` before it exits.
#[test]
fn sigterm_drains_running_sessions_before_the_node_exits() {
    let mut env = Env::start_server("drain_timeout = \"30s\"", "");
    let mut c = env.client(&env.alice).ssh(
        env.port,
        "alice:web01@127.0.0.1",
        &["sleep 3; echo finished"],
    );
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let running = c.spawn().expect("ssh");
    let _ = env.wait_rows("select session_id from sessions where active = 1");
    env.signal("TERM");
    // Not accepting any more, while the running session goes on.
    let mut refused = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", env.port)).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "the draining node still accepts connections");
    let done = running.wait_with_output().expect("ssh output");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(String::from_utf8_lossy(&done.stdout), "finished\n", "{err}");
    assert_eq!(done.status.code(), Some(0), "{err}");
    assert!(err.contains("may run 30s more"), "{err}");
    let gateway = env.gateway.as_mut().expect("gateway process");
    let mut exited = None;
    for _ in 0..100 {
        if let Ok(Some(status)) = gateway.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        exited.is_some(),
        "the gateway did not exit after its sessions ended"
    );
    let rows = env.query("select exit_status from sessions");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["exit_status"], 0, "{rows:?}");
}
