//! The admin listener (`server.admin_listen`): `/healthz` for a load
//! balancer, `/metrics` for Prometheus, against a real gateway.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{connect_from, stdout, Env, T};
use gatehouse_testkit as kit;

/// `GET path` over HTTP/1.0: (status code, content type, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin port");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of one series (`name{labels}`) in the exposition text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `done` holds (events are written as sessions
/// end, a little after the client returns).
fn metrics_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = get(port, "/metrics").2;
        if done(&text) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("metrics never showed {what}:\n{text}");
}

/// A gateway with an admin listener on a free port, `server_extra` in
/// its `[server]` section and `extra` after it; the admin port.
fn with_admin(server_extra: &str, extra: &str) -> (Env, u16) {
    let admin = kit::free_port();
    let env = Env::start_server(
        &format!("admin_listen = \"127.0.0.1:{admin}\"\n{server_extra}"),
        extra,
    );
    kit::wait_for_port(admin, Duration::from_secs(20)).expect("admin port");
    (env, admin)
}

#[test]
fn healthz_and_metrics_follow_the_gateway() {
    let (mut env, admin) = with_admin("drain_timeout = \"30s\"", "");
    let (status, _, body) = get(admin, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Bytes both ways: what the user types comes back.
    let mut c = env.alice().ssh(env.port, "alice:web01@127.0.0.1", &["cat"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cat = c.spawn().expect("ssh");
    if let Some(mut stdin) = cat.stdin.take() {
        stdin.write_all(b"hello\n").expect("write to ssh");
    }
    let out = cat.wait_with_output().expect("ssh output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{err}");
    let denied = kit::run(
        env.client(&env.bob)
            .ssh(env.port, "bob:web01@127.0.0.1", &["true"]),
        T,
    )
    .expect("run ssh");
    assert_eq!(denied.code, Some(1), "{}", denied.stderr);
    let stranger = kit::keygen(env.dir.path(), "stranger").expect("keygen");
    let refused = kit::run(
        env.client(&stranger)
            .ssh(env.port, "alice:web01@127.0.0.1", &["true"]),
        T,
    )
    .expect("run ssh");
    assert_ne!(refused.code, Some(0), "{}", refused.stderr);

    let text = metrics_until(admin, "the session's end and the failure", |t| {
        value(t, "gatehouse_bytes_total{direction=\"out\"}").unwrap_or(0.0) > 0.0
            && value(t, "gatehouse_bytes_total{direction=\"in\"}").unwrap_or(0.0) > 0.0
            && value(t, "gatehouse_auth_failures_total{method=\"unknown\"}").unwrap_or(0.0) >= 1.0
    });
    let (_, content_type, _) = get(admin, "/metrics");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    assert_eq!(
        value(&text, "gatehouse_sessions_started_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, "gatehouse_sessions_denied_total") >= Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, "gatehouse_bytes_total{direction=\"in\"}") > Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "gatehouse_store_write_seconds_count") > Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "gatehouse_store_commit_seconds_count") > Some(0.0),
        "{text}"
    );
    assert!(value(&text, "gatehouse_events_total") > Some(3.0), "{text}");
    assert!(
        text.contains("# TYPE gatehouse_store_write_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("gatehouse_store_write_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );

    // A running session is active; once SIGTERM arrives the node drains
    // and tells the balancer so.
    let mut c = env
        .client(&env.alice)
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 60"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut running = c.spawn().expect("ssh");
    metrics_until(admin, "an active session", |t| {
        value(t, "gatehouse_sessions_active") == Some(1.0)
    });
    env.signal("TERM");
    let mut draining = false;
    for _ in 0..100 {
        let (status, _, body) = get(admin, "/healthz");
        if status == 503 {
            assert_eq!(body, "draining\n");
            draining = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = running.kill();
    let _ = running.wait();
    assert!(
        draining,
        "/healthz never said draining\n{}",
        env.gateway_log()
    );
    env.stop_gateway();
}

#[test]
fn connections_waiting_for_a_place_are_counted() {
    // The grace time is far beyond how long the test waits for a gauge.
    let (env, admin) = with_admin(
        "per_source_max_startups = 1\nlogin_grace_time = \"60s\"",
        "",
    );
    // Three sockets from an address of their own (127.0.0.3: nothing
    // else of the test connects from it) that send a banner and stop:
    // one holds the address's place, two wait for it.
    let mut socks: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect_from("127.0.0.3", env.port);
            s.write_all(b"SSH-2.0-slow\r\n").expect("banner");
            s
        })
        .collect();
    let text = metrics_until(admin, "one holding, two waiting", |t| {
        value(t, "gatehouse_startups") == Some(1.0)
            && value(t, "gatehouse_startups_waiting") == Some(2.0)
    });
    assert!(text.contains("# TYPE gatehouse_startups_waiting gauge"));
    // The two waiting clients give up: they leave the queue at once, not
    // when the place comes free or their grace time runs out.
    drop(socks.split_off(1));
    metrics_until(admin, "one holding, none waiting", |t| {
        value(t, "gatehouse_startups") == Some(1.0)
            && value(t, "gatehouse_startups_waiting") == Some(0.0)
    });
    drop(socks);
    metrics_until(admin, "no startups left", |t| {
        value(t, "gatehouse_startups") == Some(0.0)
            && value(t, "gatehouse_startups_waiting") == Some(0.0)
    });
}

#[test]
fn sink_lag_is_exported_per_sink() {
    let (env, admin) = with_admin(
        "",
        "[[sinks]]\nname = \"trail\"\nkind = \"jsonl\"\npath = \"trail.jsonl\"\n",
    );
    let text = metrics_until(admin, "the sink caught up", |t| {
        value(t, "gatehouse_sink_lag_events{sink=\"trail\"}") == Some(0.0)
    });
    assert!(
        text.contains("# TYPE gatehouse_sink_lag_events gauge"),
        "{text}"
    );
    drop(env);
}

#[test]
fn a_non_loopback_admin_listen_fails_check() {
    let env = Env::start();
    let config = std::fs::read_to_string(&env.config_path).expect("read config");
    let config = config.replace(
        "node = \"test-node\"\n",
        "node = \"test-node\"\nadmin_listen = \"0.0.0.0:9\"\n",
    );
    std::fs::write(&env.config_path, config).expect("write config");
    let out = env.gatehouse(&["check"]);
    let said = format!("{}{}", stdout(&out), out.stderr);
    assert_ne!(out.code, Some(0), "{said}");
    assert!(said.contains("server.admin_listen"), "{said}");
    assert!(said.contains("loopback"), "{said}");
}

#[test]
fn a_busy_admin_port_is_one_line_naming_the_key() {
    let mut env = Env::start();
    env.stop_gateway();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let config = std::fs::read_to_string(&env.config_path).expect("read config");
    let config = config.replace(
        "node = \"test-node\"\n",
        &format!("node = \"test-node\"\nadmin_listen = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(&env.config_path, config).expect("write config");
    let out = env.gatehouse(&["serve"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("cannot listen"))
        .unwrap_or_default();
    assert!(line.contains("server.admin_listen"), "{}", out.stderr);
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
}
