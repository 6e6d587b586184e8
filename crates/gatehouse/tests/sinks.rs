//! Sinks with real receivers: a JSON-lines file across a gateway restart,
//! syslog over UDP, and syslog over TCP through a receiver outage.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::Env;

/// Accepts one connection, or fails the test after 30 s.
fn accept(listener: &TcpListener) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the sink did not connect: {e}"),
        }
    }
}

fn store_ids(env: &Env) -> Vec<String> {
    env.query("select id from events order by seq")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn jsonl_sink_keeps_every_event_once_across_a_restart() {
    let mut env =
        Env::start_with("[[sinks]]\nname = \"file\"\nkind = \"jsonl\"\npath = \"events.jsonl\"\n");
    let file = env.dir.path().join("events.jsonl");
    let ids_in_file = || -> Vec<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    wait_until("the first session in the file", || ids_in_file().len() >= 5);
    assert!(env.stop_gateway().unwrap().success());
    env.spawn_gateway();
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ =
        env.wait_rows("select count(*) from events where type = 'session.end' having count(*) = 2");
    wait_until("every event in the file", || {
        ids_in_file().len() >= store_ids(&env).len()
    });
    let in_file = ids_in_file();
    let unique: HashSet<&String> = in_file.iter().collect();
    assert_eq!(unique.len(), in_file.len(), "duplicates in the file");
    let stored = store_ids(&env);
    assert_eq!(
        in_file[..stored.len()],
        stored[..],
        "file and store disagree"
    );
    // Lines are whole events with their chain hashes.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["type"], "gateway.start");
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
}

#[test]
fn syslog_over_udp_reaches_a_receiver() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"siem\"\nkind = \"syslog\"\nurl = \"udp://127.0.0.1:{port}\"\n"
    ));
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !got.iter().any(|l: &String| l.contains(" session.end - ")) {
        let mut buf = [0u8; 65536];
        if let Ok(n) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    let end = got
        .iter()
        .find(|l| l.contains(" session.end - "))
        .expect("session.end over syslog");
    assert!(end.starts_with("<134>1 "), "{end}");
    assert!(end.contains("\"user\":\"alice\""), "{end}");
}

/// Reads RFC 6587 octet-counted frames from one connection until it ends.
fn read_frames(stream: &mut std::net::TcpStream) -> Vec<String> {
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    let mut out = Vec::new();
    let mut rest = &data[..];
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Ok(n) = String::from_utf8_lossy(&rest[..sp]).parse::<usize>() else {
            break;
        };
        if rest.len() < sp + 1 + n {
            break;
        }
        out.push(String::from_utf8_lossy(&rest[sp + 1..sp + 1 + n]).to_string());
        rest = &rest[sp + 1 + n..];
    }
    out
}

#[test]
fn syslog_over_tcp_loses_nothing_through_a_receiver_outage() {
    let port = gatehouse_testkit::free_port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"siem\"\nkind = \"syslog\"\nurl = \"tcp://127.0.0.1:{port}\"\n"
    ));
    // The receiver is down while the first session happens.
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo during-outage"])
            .code,
        Some(0)
    );
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    std::thread::sleep(Duration::from_millis(800));
    // Up: it gets the backlog.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut conn = accept(&listener);
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut frames = Vec::new();
    let want = store_ids(&env).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while frames.len() < want && Instant::now() < deadline {
        let mut buf = [0u8; 65536];
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => frames.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&frames).matches(" - {").count() >= want {
            break;
        }
    }
    drop(conn);
    drop(listener);
    let text = String::from_utf8_lossy(&frames).to_string();
    for id in store_ids(&env) {
        assert!(text.contains(&id), "event {id} missing after the outage");
    }
    // Down again, another session, up again: the rest arrives.
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo second-outage"])
            .code,
        Some(0)
    );
    let _ =
        env.wait_rows("select count(*) from events where type = 'session.end' having count(*) = 2");
    std::thread::sleep(Duration::from_millis(500));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut conn = accept(&listener);
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let frames = read_frames(&mut conn);
    let all: String = text + &frames.join("\n");
    for id in store_ids(&env) {
        assert!(
            all.contains(&id),
            "event {id} missing after the second outage"
        );
    }
}

type Received = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

trait Stream: Read + std::io::Write + Send {}
impl<T: Read + std::io::Write + Send> Stream for T {}

/// A tiny HTTP server: records each request (head + body), answers 200.
fn http_receiver(listener: TcpListener) -> Received {
    receiver(listener, |tcp| Some(Box::new(tcp)))
}

/// The same over TLS with `cert` and `key` (PEM files); connections whose
/// handshake fails are counted in the second list.
fn https_receiver(
    listener: TcpListener,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Received, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = failed.clone();
    let got = receiver(listener, move |mut tcp| {
        let mut conn = rustls::ServerConnection::new(config.clone()).ok()?;
        while conn.is_handshaking() {
            if conn.complete_io(&mut tcp).is_err() {
                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
        }
        Some(Box::new(rustls::StreamOwned::new(conn, tcp)))
    });
    (got, failed)
}

fn receiver(
    listener: TcpListener,
    wrap: impl Fn(std::net::TcpStream) -> Option<Box<dyn Stream>> + Send + 'static,
) -> Received {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let Some(mut conn) = wrap(conn) else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = conn.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text[..head_end]
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            store
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&data).to_string());
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"errors\":false}",
            );
            let _ = std::io::Write::flush(&mut conn);
        }
    });
    got
}

#[test]
fn http_sinks_deliver_after_the_receiver_comes_up() {
    let port = gatehouse_testkit::free_port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\n[[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"http://127.0.0.1:{port}/gatehouse/_bulk\"\n\n[[sinks]]\nname = \"splunk\"\nkind = \"splunk_hec\"\nurl = \"http://127.0.0.1:{port}/services/collector/event\"\ntoken = \"hec-secret\"\n"
    ));
    // Receiver down during the session.
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    std::thread::sleep(Duration::from_millis(700));
    let got = http_receiver(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let ids = store_ids(&env);
    wait_until("both sinks to deliver every event", || {
        let all = got.lock().unwrap().join("\n");
        let hook = all
            .split("POST ")
            .filter(|r| r.starts_with("/hook"))
            .collect::<Vec<_>>()
            .join("");
        let es = all
            .split("POST ")
            .filter(|r| r.starts_with("/gatehouse/_bulk"))
            .collect::<Vec<_>>()
            .join("");
        ids.iter().all(|id| {
            hook.contains(id.as_str())
                && es.contains(&format!("{{\"index\":{{\"_id\":\"{id}\"}}}}"))
        })
    });
    let all = got.lock().unwrap().join("\n");
    assert!(all.contains("Content-Type: application/x-ndjson"));
    assert!(all.contains("Authorization: Splunk hec-secret"));
    assert!(
        all.contains("\"text\":\"[info] gateway.start"),
        "Slack-compatible text"
    );
}

/// A CA and a server certificate for localhost/127.0.0.1, made with the
/// openssl command line.
fn tls_files(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gatehouse test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[test]
fn https_sinks_verify_the_receiver_and_deliver_everything() {
    let tls = tempfile::tempdir().unwrap();
    tls_files(tls.path());
    let port = gatehouse_testkit::free_port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"https://localhost:{port}/gatehouse/_bulk\"\nca_file = \"{ca}\"\n\n[[sinks]]\nname = \"untrusted\"\nkind = \"webhook\"\nurl = \"https://localhost:{port}/untrusted\"\n",
        ca = tls.path().join("ca.pem").display()
    ));
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let (got, failed_handshakes) = https_receiver(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        &tls.path().join("server.pem"),
        &tls.path().join("server.key"),
    );
    let ids = store_ids(&env);
    wait_until("the https sink to deliver every event", || {
        let all = got.lock().unwrap().join("\n");
        ids.iter()
            .all(|id| all.contains(&format!("{{\"index\":{{\"_id\":\"{id}\"}}}}")))
    });
    // The sink without the CA refuses the receiver's certificate: nothing
    // is sent to it, and it keeps its cursor to retry.
    wait_until("the untrusted sink's handshake to fail", || {
        failed_handshakes.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    let all = got.lock().unwrap().join("\n");
    assert!(!all.contains("POST /untrusted"), "{all}");
    assert!(
        env.gateway_log().contains("certificate"),
        "{}",
        env.gateway_log()
    );
}

#[test]
fn postgres_sink_fills_a_table_in_another_database() {
    let name = format!("gh_sink_{}", std::process::id());
    let psql = |db: &str, sql: &str| {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql])
            .output()
            .expect("psql (PostgreSQL must run on 127.0.0.1:5432)")
    };
    let _ = psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
    assert!(psql("postgres", &format!("CREATE DATABASE {name}"))
        .status
        .success());
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/{name}\"\n"
    ));
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let ids = store_ids(&env);
    wait_until("the postgres sink to hold every event", || {
        let out = psql(&name, "SELECT string_agg(id, ',') FROM gatehouse_events");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ids.iter().all(|id| text.contains(id.as_str()))
    });
    let out = psql(
        &name,
        "SELECT event->>'user' FROM gatehouse_events WHERE type = 'session.end'",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    drop(env);
    let _ = psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}
