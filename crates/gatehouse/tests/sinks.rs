//! Sinks with real receivers: a JSON-lines file across a gateway restart,
//! rsyslog over UDP, and over TCP through rsyslog outages; the
//! HTTP sinks against Python's http.server (tests/sinks/receiver.py):
//! kept-alive connections, an IPv6 literal, Elasticsearch answers that
//! mix stored, throttled and rejected documents, redirects refused, TLS
//! verified, a proxy from the environment; CloudTrail records from every
//! kind that takes `format`; a CloudTrail Lake endpoint that checks SigV4
//! with botocore (tests/sinks/lake_receiver.py); PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Env;

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

/// A real rsyslogd (Debian's rsyslog) with a config of its own in a temp
/// dir: one UDP or TCP input on HOST:PORT (RFC 6587 octet counting
/// on TCP), every message written to a file as `PRI|HOSTNAME|APP-NAME|
/// MSGID|MSG`, the fields as rsyslog parsed them. Killed when dropped.
struct Rsyslog {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    proto: &'static str,
    host: &'static str,
    port: u16,
}

/// One message as rsyslog parsed it.
#[derive(Debug)]
struct Syslog {
    pri: String,
    hostname: String,
    app: String,
    msgid: String,
    msg: String,
}

impl Rsyslog {
    fn start(proto: &'static str, host: &'static str, port: u16) -> Rsyslog {
        let mut r = Rsyslog {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            proto,
            host,
            port,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        let dir = self.dir.path();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}" maxMessageSize="64k")
module(load="im{proto}")
input(type="im{proto}" address="{host}" port="{port}")
template(name="fields" type="list") {{
  property(name="pri") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="app-name") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="msg") constant(value="\n")
}}
*.* action(type="omfile" file="{dir}/messages" template="fields")
"#,
                dir = dir.display(),
                proto = self.proto,
                host = self.host,
                port = self.port
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .expect("rsyslogd (scripts/deps.sh installs rsyslog)");
        let child = std::process::Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stderr(std::fs::File::create(dir.join("rsyslogd.log")).unwrap())
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        if self.proto == "tcp" {
            gatehouse_testkit::wait_for_port(self.port, Duration::from_secs(20))
                .expect("rsyslogd listening");
        } else {
            // UDP: rsyslogd says nothing when it is ready; its pid file is
            // written once the inputs run.
            wait_until("rsyslogd's pid file", || dir.join("rsyslogd.pid").exists());
        }
    }

    /// An outage: rsyslogd killed.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("rsyslogd.pid"));
    }

    fn messages(&self) -> Vec<Syslog> {
        std::fs::read_to_string(self.dir.path().join("messages"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(5, '|');
                Some(Syslog {
                    pri: f.next()?.into(),
                    hostname: f.next()?.into(),
                    app: f.next()?.into(),
                    msgid: f.next()?.into(),
                    msg: f.next()?.into(),
                })
            })
            .collect()
    }

    /// The event ids in the messages (their JSON `id` or `eventID`).
    fn ids(&self) -> HashSet<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                let v: serde_json::Value = serde_json::from_str(&m.msg).ok()?;
                v.get("id")
                    .or_else(|| v.get("eventID"))?
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.down();
    }
}

#[test]
fn syslog_over_udp_reaches_rsyslog_on_an_ipv6_address() {
    let port = gatehouse_testkit::free_port();
    let rsyslog = Rsyslog::start("udp", "::1", port);
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"siem\"\nkind = \"syslog\"\nurl = \"udp://[::1]:{port}\"\n"
    ));
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let ids = store_ids(&env);
    wait_until("every event in rsyslog", || {
        let got = rsyslog.ids();
        ids.iter().all(|id| got.contains(id))
    });
    // rsyslog read the RFC 5424 header: local0.info, the node as the
    // host, the app, the event type as MSGID, the event as the message.
    let messages = rsyslog.messages();
    let end = messages
        .iter()
        .find(|m| m.msgid == "session.end")
        .expect("session.end in rsyslog");
    assert_eq!(end.pri, "134");
    assert_eq!(end.hostname, "test-node");
    assert_eq!(end.app, "gatehouse");
    let event: serde_json::Value = serde_json::from_str(&end.msg).unwrap();
    assert_eq!(event["user"], "alice");
    assert_eq!(event["type"], "session.end");
}

#[test]
fn syslog_over_tcp_loses_nothing_through_rsyslog_outages() {
    let port = gatehouse_testkit::free_port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"siem\"\nkind = \"syslog\"\nurl = \"tcp://127.0.0.1:{port}\"\n"
    ));
    // rsyslog is down while the first session happens.
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo during-outage"])
            .code,
        Some(0)
    );
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    std::thread::sleep(Duration::from_millis(800));
    // Up: it gets the backlog.
    let mut rsyslog = Rsyslog::start("tcp", "127.0.0.1", port);
    let ids = store_ids(&env);
    wait_until("the backlog in rsyslog", || {
        let got = rsyslog.ids();
        ids.iter().all(|id| got.contains(id))
    });
    // Down again, another session, up again: the rest arrives.
    rsyslog.down();
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo second-outage"])
            .code,
        Some(0)
    );
    let _ =
        env.wait_rows("select count(*) from events where type = 'session.end' having count(*) = 2");
    std::thread::sleep(Duration::from_millis(500));
    rsyslog.up();
    let ids = store_ids(&env);
    wait_until("every event after the second outage", || {
        let got = rsyslog.ids();
        ids.iter().all(|id| got.contains(id))
    });
    let messages = rsyslog.messages();
    let cmd = messages
        .iter()
        .find(|m| m.msgid == "command" && m.msg.contains("second-outage"))
        .expect("the second session's command in rsyslog");
    assert_eq!(cmd.pri, "134");
    assert_eq!(cmd.hostname, "test-node");
}

/// tests/sinks/receiver.py, a Python http.server: an HTTP(S) receiver
/// with Elasticsearch bulk answers, or a CONNECT proxy. It logs every
/// request as a JSON line; killed when dropped.
struct Receiver {
    child: std::process::Child,
    log: std::path::PathBuf,
    store: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(host: &str, port: u16, args: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let (log, store) = (dir.path().join("log.jsonl"), dir.path().join("store.jsonl"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sinks/receiver.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args(["--host", host, "--port", &port.to_string()])
            .arg("--log")
            .arg(&log)
            .arg("--store")
            .arg(&store)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 tests/sinks/receiver.py");
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert!(line.starts_with("listening"), "receiver: {line:?}");
        Receiver {
            child,
            log,
            store,
            _dir: dir,
        }
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every logged request (and TLS failure, and CONNECT).
    fn log(&self) -> Vec<serde_json::Value> {
        Receiver::lines(&self.log)
    }

    /// The POSTs to paths starting with `prefix`.
    fn posts(&self, prefix: &str) -> Vec<serde_json::Value> {
        self.log()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect()
    }

    /// The `_id`s of the documents the "cluster" stored.
    fn stored(&self) -> HashSet<String> {
        Receiver::lines(&self.store)
            .iter()
            .map(|d| d["_id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bodies(requests: &[serde_json::Value]) -> String {
    requests
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn http_sinks_deliver_after_the_receiver_comes_up_over_kept_alive_connections() {
    let port = gatehouse_testkit::free_port();
    let port6 = gatehouse_testkit::free_port();
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\n[[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"http://[::1]:{port6}/gatehouse/_bulk\"\n\n[[sinks]]\nname = \"splunk\"\nkind = \"splunk_hec\"\nurl = \"http://127.0.0.1:{port}/services/collector/event\"\ntoken = \"hec-secret\"\n"
    ));
    // Receivers down during the session.
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    std::thread::sleep(Duration::from_millis(700));
    let rx = Receiver::start("127.0.0.1", port, &[]);
    // The Elasticsearch sink's url is an IPv6 literal.
    let rx6 = Receiver::start("::1", port6, &[]);
    let ids = store_ids(&env);
    wait_until("every sink to deliver every event", || {
        let hook = bodies(&rx.posts("/hook"));
        let splunk = bodies(&rx.posts("/services/collector"));
        let es = rx6.stored();
        ids.iter()
            .all(|id| hook.contains(id.as_str()) && splunk.contains(id.as_str()) && es.contains(id))
    });
    // Another session: its events go over the connections already open.
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ =
        env.wait_rows("select count(*) from events where type = 'session.end' having count(*) = 2");
    let ids = store_ids(&env);
    wait_until("the second session at every receiver", || {
        let hook = bodies(&rx.posts("/hook"));
        let es = rx6.stored();
        ids.iter()
            .all(|id| hook.contains(id.as_str()) && es.contains(id))
    });
    for (what, requests) in [
        ("webhook", rx.posts("/hook")),
        ("elasticsearch", rx6.posts("/")),
    ] {
        let ports: HashSet<u64> = requests
            .iter()
            .map(|r| r["peer_port"].as_u64().unwrap())
            .collect();
        assert!(requests.len() >= 2, "{what}: {requests:?}");
        assert_eq!(
            ports.len(),
            1,
            "{what} used more than one connection: {ports:?}"
        );
    }
    let es = &rx6.posts("/gatehouse/_bulk")[0];
    assert_eq!(es["headers"]["content-type"], "application/x-ndjson");
    let splunk = &rx.posts("/services/collector")[0];
    assert_eq!(splunk["headers"]["authorization"], "Splunk hec-secret");
    assert!(
        bodies(&rx.posts("/hook")).contains("\"text\":\"[info] gateway.start"),
        "Slack-compatible text"
    );
}

#[test]
fn elasticsearch_rejected_documents_go_to_the_dead_letter_file_and_the_sink_moves_on() {
    // The "cluster" rejects `command` documents for good and answers 429
    // to each `session.start` document the first time.
    let port = gatehouse_testkit::free_port();
    let rx = Receiver::start(
        "127.0.0.1",
        port,
        &["--reject", "command", "--throttle", "session.start"],
    );
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"http://127.0.0.1:{port}/gatehouse/_bulk\"\ndead_letter_file = \"dead/es.ndjson\"\n"
    ));
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo one"]).code,
        Some(0)
    );
    let dead = env.wait_rows("select details from events where type = 'sink.dead_letter'");
    assert_eq!(
        env.ssh("alice:web01@127.0.0.1", &["echo two"]).code,
        Some(0)
    );
    let _ = env.wait_rows(
        "select count(*) from events where type = 'sink.dead_letter' having count(*) = 2",
    );
    let commands: Vec<String> = env
        .query("select id from events where type = 'command' order by seq")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(commands.len(), 2);
    // Everything else arrives, the dead-letter events and the second
    // session included: the sink did not stall on the rejected documents.
    let missing = || {
        let stored = rx.stored();
        env.query("select id, type from events order by seq")
            .into_iter()
            .filter(|r| {
                let id = r["id"].as_str().unwrap().to_string();
                !commands.contains(&id) && !stored.contains(&id)
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        missing().is_empty(),
        "not in the cluster: {:?}\n{}",
        missing(),
        env.gateway_log()
    );
    let stored = rx.stored();
    assert!(commands.iter().all(|id| !stored.contains(id)));
    // Each rejected document was sent once, not retried.
    let bulk = rx.posts("/gatehouse/_bulk");
    for id in &commands {
        let sent = bulk
            .iter()
            .filter(|r| {
                r["body"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("\"_id\":\"{id}\""))
            })
            .count();
        assert_eq!(sent, 1, "command {id} sent {sent} times");
    }
    // A throttled document was asked for again, alone.
    let starts: Vec<String> = env
        .query("select id from events where type = 'session.start'")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for id in &starts {
        let with = bulk
            .iter()
            .filter(|r| {
                r["body"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("\"_id\":\"{id}\""))
            })
            .collect::<Vec<_>>();
        assert!(with.len() >= 2, "session.start {id} not retried");
        let retry = with.last().unwrap()["body"].as_str().unwrap();
        assert_eq!(retry.lines().count(), 2, "the retry holds only it: {retry}");
    }
    // The file: one line per rejected event, with the cluster's reason.
    let file = env.dir.path().join("dead/es.ndjson");
    let lines = Receiver::lines(&file);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, commands.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(lines[0]["sink"], "es");
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["event_type"], "command");
    assert_eq!(lines[0]["document"]["details"]["command"], "echo one");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("mapper_parsing_exception: "),
        "{}",
        lines[0]
    );
    // The event: which sink, how many, where, and why.
    let details: serde_json::Value = match &dead[0]["details"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    assert_eq!(details["sink"], "es");
    assert_eq!(details["kind"], "elasticsearch");
    assert_eq!(details["count"], 1);
    assert_eq!(details["file"], file.display().to_string());
    assert_eq!(details["events"][0]["id"], commands[0].as_str());
    assert_eq!(details["events"][0]["type"], "command");
    assert_eq!(details["events"][0]["status"], 400);
    let row = &env
        .query("select severity, result, reason from events where type = 'sink.dead_letter'")[0];
    assert_eq!(row["severity"], "high");
    assert_eq!(row["result"], "failure");
}

#[test]
fn http_sinks_refuse_redirects_and_say_so() {
    let port = gatehouse_testkit::free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let env = Env::start_with(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/redirect\"\n"
    ));
    wait_until("the redirect in the gateway log", || {
        env.gateway_log()
            .contains("answered HTTP 301 redirecting to /elsewhere")
    });
    assert!(
        env.gateway_log().contains("sinks follow no redirects"),
        "{}",
        env.gateway_log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(rx.posts("/redirect").len() >= 2, "retried");
    assert!(rx.posts("/elsewhere").is_empty(), "followed the redirect");
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
    let cert = tls.path().join("server.pem");
    let key = tls.path().join("server.key");
    let rx = Receiver::start(
        "127.0.0.1",
        port,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let ids = store_ids(&env);
    wait_until("the https sink to deliver every event", || {
        let stored = rx.stored();
        ids.iter().all(|id| stored.contains(id))
    });
    // The sink without the CA refuses the receiver's certificate: nothing
    // is sent to it, and it keeps its cursor to retry.
    wait_until("the untrusted sink's handshake to fail", || {
        rx.log().iter().any(|r| r.get("tls_error").is_some())
    });
    assert!(rx.posts("/untrusted").is_empty());
    wait_until("the certificate error in the gateway log", || {
        env.gateway_log().contains("certificate")
    });
}

#[test]
fn https_sinks_go_through_the_proxy_named_in_the_environment() {
    let tls = tempfile::tempdir().unwrap();
    tls_files(tls.path());
    let (port, proxy_port) = (
        gatehouse_testkit::free_port(),
        gatehouse_testkit::free_port(),
    );
    let mut env = Env::start_with(&format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://localhost:{port}/hook\"\nca_file = \"{ca}\"\n",
        ca = tls.path().join("ca.pem").display()
    ));
    let proxy = Receiver::start("127.0.0.1", proxy_port, &["--proxy"]);
    env.restart_with_env(&[("HTTPS_PROXY", &format!("http://127.0.0.1:{proxy_port}"))]);
    let cert = tls.path().join("server.pem");
    let key = tls.path().join("server.key");
    let rx = Receiver::start(
        "127.0.0.1",
        port,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let ids = store_ids(&env);
    wait_until("the webhook to deliver every event", || {
        let hook = bodies(&rx.posts("/hook"));
        ids.iter().all(|id| hook.contains(id.as_str()))
    });
    let connects: Vec<String> = proxy
        .log()
        .iter()
        .filter_map(|r| r["connect"].as_str().map(str::to_string))
        .collect();
    assert!(
        connects.contains(&format!("localhost:{port}")),
        "{connects:?}"
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

#[test]
fn sinks_with_format_cloudtrail_send_cloudtrail_records() {
    let port = gatehouse_testkit::free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let udp_port = gatehouse_testkit::free_port();
    let rsyslog = Rsyslog::start("udp", "127.0.0.1", udp_port);
    let env = Env::start_server(
        "service_name = \"ssh-proxy.example.com\"",
        &format!(
            "[[sinks]]\nname = \"file\"\nkind = \"jsonl\"\npath = \"trail.jsonl\"\nformat = \"cloudtrail\"\n\n\
             [[sinks]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"http://127.0.0.1:{port}/ct/_bulk\"\nformat = \"cloudtrail\"\n\n\
             [[sinks]]\nname = \"hec\"\nkind = \"splunk_hec\"\nurl = \"http://127.0.0.1:{port}/services/collector/event\"\ntoken = \"t\"\nformat = \"cloudtrail\"\n\n\
             [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nformat = \"cloudtrail\"\n\n\
             [[sinks]]\nname = \"syslog\"\nkind = \"syslog\"\nurl = \"udp://127.0.0.1:{udp_port}\"\nformat = \"cloudtrail\"\n"
        ),
    );
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["echo ct"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    let ids = store_ids(&env);
    let file = env.dir.path().join("trail.jsonl");
    wait_until("every record in every sink", || {
        let in_file: HashSet<String> = Receiver::lines(&file)
            .iter()
            .filter_map(|r| r["eventID"].as_str().map(str::to_string))
            .collect();
        let hook = bodies(&rx.posts("/hook"));
        let hec = bodies(&rx.posts("/services/collector"));
        let es = rx.stored();
        ids.iter().all(|id| {
            in_file.contains(id)
                && es.contains(id)
                && hook.contains(id.as_str())
                && hec.contains(id.as_str())
        })
    });
    // The file: one record per event, in order, no Gatehouse-shaped lines.
    let records = Receiver::lines(&file);
    let record_ids: Vec<&str> = records
        .iter()
        .map(|r| r["eventID"].as_str().unwrap())
        .collect();
    assert_eq!(
        record_ids[..ids.len()],
        ids.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert!(records
        .iter()
        .all(|r| r.get("id").is_none() && r["eventVersion"].is_string()));
    let start = records
        .iter()
        .find(|r| r["eventName"] == "StartSession")
        .expect("a StartSession record");
    assert_eq!(start["eventSource"], "ssh-proxy.example.com");
    assert_eq!(start["userIdentity"]["userName"], "alice");
    assert_eq!(start["additionalEventData"]["MFAAuthenticated"], "False");
    assert_eq!(start["requestParameters"]["target"], "web01");
    let run = records
        .iter()
        .find(|r| r["eventName"] == "RunCommand")
        .expect("a RunCommand record");
    assert_eq!(run["requestParameters"]["command"], "echo ct");
    // Elasticsearch: the record under the event id.
    let docs = Receiver::lines(&rx.store);
    let doc = docs
        .iter()
        .find(|d| d["doc"]["eventName"] == "RunCommand")
        .expect("RunCommand in the cluster");
    assert_eq!(doc["_id"], doc["doc"]["eventID"]);
    // Splunk: sourcetype aws:cloudtrail.
    let hec = bodies(&rx.posts("/services/collector"));
    assert!(hec.contains("\"sourcetype\":\"aws:cloudtrail\""), "{hec}");
    assert!(hec.contains("\"eventName\":\"EndSession\""), "{hec}");
    // Webhook: records in `events`, the summary in `text`.
    let hook: serde_json::Value =
        serde_json::from_str(rx.posts("/hook")[0]["body"].as_str().unwrap()).unwrap();
    assert!(hook["text"].as_str().unwrap().contains("gateway.start"));
    assert_eq!(hook["events"][0]["eventName"], "StartGateway");
    // Syslog: the record as the message, as rsyslog received it.
    wait_until("every record in rsyslog", || {
        let got = rsyslog.ids();
        ids.iter().all(|id| got.contains(id))
    });
    let messages = rsyslog.messages();
    let end = messages
        .iter()
        .find(|m| m.msgid == "session.end")
        .expect("session.end in rsyslog");
    let message: serde_json::Value = serde_json::from_str(&end.msg).unwrap();
    assert_eq!(message["eventName"], "EndSession");
}

/// tests/sinks/lake_receiver.py: an HTTPS PutAuditEvents endpoint that
/// checks SigV4 with botocore and the CloudTrail Lake event schema.
struct Lake {
    child: std::process::Child,
    log: std::path::PathBuf,
    store: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const CHANNEL: &str = "arn:aws:cloudtrail:eu-west-1:123456789012:channel/6f2b3c1d-lake-test";
const ACCESS_KEY: &str = "AKIDGATEHOUSETEST";
const SECRET_KEY: &str = "gatehouse/test+secret";
const SESSION_TOKEN: &str = "session-token-for-the-test";

impl Lake {
    fn start(port: u16, tls: &std::path::Path, args: &[&str]) -> Lake {
        let dir = tempfile::tempdir().unwrap();
        let (log, store) = (dir.path().join("log.jsonl"), dir.path().join("store.jsonl"));
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let python = format!("{root}/target/sinks-venv/bin/python");
        assert!(
            std::path::Path::new(&python).exists(),
            "{python} missing: run scripts/deps.sh"
        );
        let mut child = std::process::Command::new(python)
            .arg(format!("{root}/tests/sinks/lake_receiver.py"))
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(tls.join("server.pem"))
            .arg("--key")
            .arg(tls.join("server.key"))
            .arg("--log")
            .arg(&log)
            .arg("--store")
            .arg(&store)
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .args(["--session-token", SESSION_TOKEN])
            .args(["--region", "eu-west-1", "--channel", CHANNEL])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the sinks venv's python");
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert!(line.starts_with("listening"), "lake receiver: {line:?}");
        Lake {
            child,
            log,
            store,
            _dir: dir,
        }
    }

    fn log(&self) -> Vec<serde_json::Value> {
        Receiver::lines(&self.log)
    }

    /// Ids the channel took, with their eventData.
    fn stored(&self) -> Vec<serde_json::Value> {
        Receiver::lines(&self.store)
    }
}

impl Drop for Lake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cloudtrail_lake_sink_puts_signed_audit_events_and_sets_aside_what_keeps_failing() {
    let tls = tempfile::tempdir().unwrap();
    tls_files(tls.path());
    let port = gatehouse_testkit::free_port();
    // The channel refuses RunCommand every time and StartSession once.
    let lake = Lake::start(
        port,
        tls.path(),
        &["--fail", "RunCommand", "--flaky", "StartSession"],
    );
    let mut env = Env::start_server(
        "service_name = \"ssh-proxy.example.com\"",
        &format!(
            "[[sinks]]\nname = \"lake\"\nkind = \"cloudtrail_lake\"\nchannel_arn = \"{CHANNEL}\"\nendpoint_url = \"https://localhost:{port}\"\nca_file = \"{ca}\"\ndead_letter_file = \"lake-dead.ndjson\"\n",
            ca = tls.path().join("ca.pem").display()
        ),
    );
    // Without credentials nothing goes out, and the log says why.
    for i in 0..30 {
        let cmd = format!("echo {i}");
        assert_eq!(env.ssh("alice:web01@127.0.0.1", &[&cmd]).code, Some(0));
    }
    let _ = env
        .wait_rows("select count(*) from events where type = 'session.end' having count(*) = 30");
    wait_until("the missing credentials in the log", || {
        env.gateway_log().contains("AWS_ACCESS_KEY_ID is not set")
    });
    assert!(lake.log().is_empty());
    // The dry run: the exact bodies, 100 events at most each.
    let dry = env.gatehouse(&["sinks", "send", "lake", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let dry_bodies: Vec<String> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        dry_bodies.len() >= 2,
        "{} events in one call?",
        store_ids(&env).len()
    );
    let first: serde_json::Value = serde_json::from_str(&dry_bodies[0]).unwrap();
    assert_eq!(first["auditEvents"].as_array().unwrap().len(), 100);
    assert!(
        dry.stderr.contains(&format!("POST https://localhost:{port}/PutAuditEvents?channelArn=arn%3Aaws%3Acloudtrail%3Aeu-west-1%3A123456789012%3Achannel%2F6f2b3c1d-lake-test")),
        "{}",
        dry.stderr
    );
    assert!(lake.log().is_empty(), "the dry run sent something");
    // With credentials: everything but RunCommand reaches the channel.
    env.restart_with_env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
    ]);
    let commands: HashSet<String> = env
        .query("select id from events where type = 'command'")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(commands.len(), 30);
    wait_until("every other event in the channel", || {
        let stored: HashSet<String> = lake
            .stored()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        store_ids(&env)
            .iter()
            .all(|id| commands.contains(id) || stored.contains(id))
    });
    let log = lake.log();
    // botocore found every signature right, and the schema kept.
    for r in &log {
        assert_eq!(r["sig_ok"], true, "{}", r["sig_error"]);
        assert_eq!(r["schema_errors"], serde_json::json!([]), "{r}");
        assert!(r["ids"].as_array().unwrap().len() <= 100);
    }
    // The first call is what the dry run printed.
    assert_eq!(log[0]["body"].as_str().unwrap(), dry_bodies[0]);
    // A StartSession refused once was sent again and taken.
    let stored = lake.stored();
    let start = stored
        .iter()
        .find(|s| s["eventData"]["eventName"] == "StartSession")
        .expect("a StartSession in the channel");
    let start_id = start["id"].as_str().unwrap();
    let sends = log
        .iter()
        .filter(|r| r["ids"].as_array().unwrap().iter().any(|i| i == start_id))
        .count();
    assert!(sends >= 2, "StartSession {start_id} sent {sends} times");
    assert_eq!(start["eventData"]["eventSource"], "ssh-proxy.example.com");
    assert_eq!(start["eventData"]["UID"], start_id);
    assert_eq!(start["eventData"]["recipientAccountId"], "123456789012");
    assert_eq!(start["eventData"]["userIdentity"]["principalId"], "alice");
    // Each RunCommand was refused three times, then set aside.
    let dead = env.wait_rows(
        "select details from events where type = 'sink.dead_letter' and details like '%cloudtrail_lake%'",
    );
    assert!(!dead.is_empty());
    wait_until("every command in the dead-letter file", || {
        let lines = Receiver::lines(&env.dir.path().join("lake-dead.ndjson"));
        commands
            .iter()
            .all(|id| lines.iter().any(|l| l["event_id"] == id.as_str()))
    });
    let lines = Receiver::lines(&env.dir.path().join("lake-dead.ndjson"));
    assert_eq!(lines.len(), 30, "each command once");
    assert_eq!(lines[0]["document"]["eventName"], "RunCommand");
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("InvalidEventData: "));
    // Read again: the log above was taken before the commands' last sends.
    let log = lake.log();
    for id in &commands {
        let sends = log
            .iter()
            .filter(|r| {
                r["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i == id.as_str())
            })
            .count();
        assert_eq!(sends, 3, "command {id} sent {sends} times");
    }
    // A wrong secret: botocore's check refuses it, and the sink says so.
    env.restart_with_env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
    ]);
    wait_until("a refused signature", || {
        lake.log().iter().any(|r| r["sig_ok"] == false)
    });
    wait_until("the 403 in the gateway log", || {
        env.gateway_log().contains("answered HTTP 403")
    });
    let refused = lake
        .log()
        .into_iter()
        .find(|r| r["sig_ok"] == false)
        .unwrap();
    assert!(
        refused["sig_error"]
            .as_str()
            .unwrap()
            .starts_with("signature mismatch"),
        "{refused}"
    );
}

#[test]
fn sinks_send_prints_the_next_batch_or_delivers_it_once() {
    let mut env =
        Env::start_with("[[sinks]]\nname = \"file\"\nkind = \"jsonl\"\npath = \"events.jsonl\"\n");
    assert_eq!(env.ssh("alice:web01@127.0.0.1", &["true"]).code, Some(0));
    let _ = env.wait_rows("select id from events where type = 'session.end'");
    assert!(env.stop_gateway().unwrap().success());
    // Written after the gateway's sink stopped: only the CLI can send it.
    let lock = env.gatehouse(&["users", "lock", "bob", "--reason", "sinks test"]);
    assert_eq!(lock.code, Some(0), "{}", lock.stderr);
    let file = env.dir.path().join("events.jsonl");
    let in_file = || Receiver::lines(&file);
    let before = in_file().len();
    let pending: Vec<String> = store_ids(&env)
        .into_iter()
        .filter(|id| !in_file().iter().any(|l| l["id"] == id.as_str()))
        .collect();
    assert!(!pending.is_empty());
    // --dry-run: the lines it would append, nothing written.
    let dry = env.gatehouse(&["sinks", "send", "file", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let printed: Vec<String> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(printed, pending);
    assert!(dry.stderr.contains("events.jsonl"), "{}", dry.stderr);
    assert_eq!(in_file().len(), before);
    // Without it: delivered once, and the cursor moves past them.
    let send = env.gatehouse(&["sinks", "send", "file"]);
    assert_eq!(send.code, Some(0), "{}", send.stderr);
    assert!(
        send.stderr
            .contains(&format!("{} event(s) delivered", pending.len())),
        "{}",
        send.stderr
    );
    let ids: Vec<String> = in_file()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, store_ids(&env));
    let again = env.gatehouse(&["sinks", "send", "file", "--dry-run"]);
    assert!(
        again.stdout.is_empty() && again.stderr.contains("nothing after its cursor"),
        "{} {}",
        String::from_utf8_lossy(&again.stdout),
        again.stderr
    );
    let unknown = env.gatehouse(&["sinks", "send", "nope", "--dry-run"]);
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown.stderr.contains("no sink \"nope\""),
        "{}",
        unknown.stderr
    );
}
