//! After `kill -9` of the gateway, the next start of the same node closes
//! what the crash left open: sessions (with their recordings as they are
//! on disk), SFTP transfers, and kill requests nobody can carry out. A
//! session of another node sharing the store is left alone.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, T};
use gatehouse_model::{EventType, NewEvent, Outcome, Severity};
use gatehouse_testkit::{self as kit, Tmux};

const W: Duration = Duration::from_secs(20);

/// Polls until `sql` returns exactly `n` rows.
fn wait_count(env: &Env, sql: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + W;
    loop {
        let rows = env.query(sql);
        if rows.len() == n || Instant::now() > deadline {
            assert_eq!(rows.len(), n, "{sql}: {rows:?}\n{}", env.gateway_log());
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Until the gateway printed that it listens: recovery is done by then.
fn wait_listening(env: &Env) {
    let deadline = Instant::now() + W;
    while !env.gateway_log().contains("gatehouse: listening on") {
        assert!(Instant::now() < deadline, "{}", env.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn details(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["details"].as_str().unwrap_or("{}")).expect("details are JSON")
}

/// A session.start written by another gateway node into the same store.
fn start_session_on_other_node(env: &Env, session_id: &str) {
    let url = format!("sqlite://{}", env.dir.path().join("gatehouse.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = gatehouse_store::Store::open(&url).await.unwrap();
        let ev = NewEvent::new(
            EventType::SESSION_START,
            Severity::Info,
            Outcome::Success,
            "other-node",
        )
        .user("alice")
        .source_ip("127.0.0.1")
        .session(session_id)
        .target("web01")
        .login("someone");
        store.append(&ev).await.unwrap();
        store.close().await;
    });
}

#[test]
fn a_restart_after_kill_9_closes_the_sessions_the_crash_left_open() {
    let mut env = Env::start();
    let d = env.dir.path().to_path_buf();

    // An interactive session that printed something and now waits.
    let opts = env.alice().opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} alice:web01@127.0.0.1 'PS1=\"gh$ \" exec bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", W).expect("prompt");
    tmux.send_literal("printf 'before-%s\\n' crash-42").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    tmux.wait_for("before-crash-42", W).expect("output");
    let shell = wait_count(&env, "select session_id from sessions where active = 1", 1)[0]
        ["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A slow upload (scp in SFTP mode, 400 kbit/s), caught mid-transfer.
    let local = d.join("big.bin");
    std::fs::write(&local, vec![7u8; 20 * 1024 * 1024]).unwrap();
    let remote = d.join("remote.bin");
    let remote_arg = format!("127.0.0.1:{}", remote.display());
    let mut scp = env.alice().with_user("alice:web01").scp(
        env.port,
        &["-l", "400", local.to_str().unwrap(), &remote_arg],
    );
    scp.stdout(Stdio::null()).stderr(Stdio::null());
    let mut scp = scp.spawn().expect("scp");
    let open = env.wait_rows(&format!(
        "select session_id from events where type = 'sftp.open' and details like '%{}%'",
        remote.display()
    ));
    let upload = open[0]["session_id"].as_str().unwrap().to_string();
    assert_ne!(upload, shell);
    // The recorder flushes every 500 ms: the shell's output is on disk.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        scp.try_wait().unwrap().is_none(),
        "the upload finished too early"
    );

    // kill -9.
    let mut gw = env.gateway.take().unwrap();
    gw.kill().unwrap();
    gw.wait().unwrap();
    let _ = scp.wait();
    drop(tmux);

    let active = env.query("select session_id from sessions where active = 1");
    assert_eq!(active.len(), 2, "{active:?}");
    // A kill request while no gateway runs stays pending.
    let out = env.gatehouse(&["sessions", "kill", &shell, "--reason", "too late"]);
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        env.query("select id from session_kills where done = 0")
            .len(),
        1
    );
    // Another node's session, running on that node as far as we know.
    start_session_on_other_node(&env, "01OTHERNODESESSION00000000");

    env.spawn_gateway();
    wait_listening(&env);

    // Both sessions ended, the other node's is still active.
    let active = env.query("select session_id, node from sessions where active = 1");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["session_id"], "01OTHERNODESESSION00000000");
    assert_eq!(
        env.query("select id from events where node = 'other-node'")
            .len(),
        1,
        "nothing written for the other node"
    );

    let ends = env.query(
        "select session_id, node, result, reason, details from events where type = 'session.end' order by seq",
    );
    assert_eq!(ends.len(), 2, "{ends:?}");
    for end in &ends {
        assert_eq!(end["node"], "test-node");
        assert_eq!(end["result"], "error");
        assert_eq!(end["reason"], "gateway crashed");
        assert_eq!(details(end)["recovered"], true, "{end:?}");
    }
    let end_of = |sid: &str| {
        details(
            ends.iter()
                .find(|e| e["session_id"] == sid)
                .expect("a session.end for the session"),
        )
    };

    // The shell's recording: hash and size of the file as it is on disk.
    let shell_end = end_of(&shell);
    let cast = d.join("recordings").join(format!("{shell}.cast"));
    let on_disk = std::fs::read(&cast).expect("recording");
    assert!(String::from_utf8_lossy(&on_disk).contains("before-crash-42"));
    assert_eq!(shell_end["recording_id"], shell.as_str());
    assert_eq!(shell_end["recording_sha256"], sha256_of(&cast));
    let recs = shell_end["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{shell_end}");
    assert_eq!(recs[0]["sha256"], sha256_of(&cast));
    assert_eq!(recs[0]["bytes"], on_disk.len() as u64);
    assert!(shell_end["duration_ms"].as_u64().is_some(), "{shell_end}");
    let row = env.query(&format!(
        "select recording_sha256, end_time from sessions where session_id = '{shell}'"
    ));
    assert_eq!(row[0]["recording_sha256"], sha256_of(&cast));

    // The upload: not recorded, its file closed as incomplete.
    let upload_end = end_of(&upload);
    assert_eq!(upload_end["recordings"], serde_json::json!([]));
    let closes = env.query(&format!(
        "select result, reason, details from events where type = 'sftp.close' and session_id = '{upload}'"
    ));
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0]["result"], "error");
    assert_eq!(closes[0]["reason"], "gateway crashed");
    let close = details(&closes[0]);
    assert_eq!(close["path"], remote.display().to_string());
    assert_eq!(close["incomplete"], true);
    assert_eq!(close["bytes_written"], serde_json::Value::Null);

    // The kill request is done, and there is nothing left to kill.
    assert_eq!(
        env.query("select id from session_kills where done = 0")
            .len(),
        0
    );
    let out = env.gatehouse(&["sessions", "kill", &shell]);
    assert!(out.stderr.contains("no running session"), "{}", out.stderr);

    let recovered = env.query("select details from events where type = 'gateway.recovered'");
    assert_eq!(recovered.len(), 1);
    let r = details(&recovered[0]);
    assert_eq!(r["sessions"], 2, "{r}");
    assert_eq!(r["transfers"], 1, "{r}");
    assert_eq!(r["kill_requests"], 1, "{r}");

    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, kit_stdout(&out));

    // Another crash and start: nothing more to close.
    let before = count(
        &env,
        "select id from events where reason = 'gateway crashed'",
    );
    let mut gw = env.gateway.take().unwrap();
    gw.kill().unwrap();
    gw.wait().unwrap();
    env.spawn_gateway();
    wait_listening(&env);
    assert_eq!(
        count(&env, "select id from events where type = 'gateway.start'"),
        3
    );
    assert_eq!(
        count(
            &env,
            "select id from events where reason = 'gateway crashed'"
        ),
        before
    );
    assert_eq!(
        count(
            &env,
            "select id from events where type = 'gateway.recovered'"
        ),
        1
    );
    let out = env.gatehouse(&["audit", "verify"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // The gateway still serves.
    let out = kit::run(
        env.alice()
            .ssh(env.port, "alice:web01@127.0.0.1", &["echo", "after"]),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

fn count(env: &Env, sql: &str) -> usize {
    env.query(sql).len()
}

fn kit_stdout(o: &kit::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
