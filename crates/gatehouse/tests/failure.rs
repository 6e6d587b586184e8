//! The record holds when the disks under it fill: a session whose events
//! or recording cannot be written is stopped and told why, nothing it did
//! is lost, and `session.end` says what is really on disk. The store and
//! the recordings live on small tmpfs mounts that the tests fill.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{stdout, Env, T};
use gatehouse_testkit::Tmux;

/// A small tmpfs mounted for one test (needs root, as the test suite runs
/// in CI); unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "these tests mount a small tmpfs to fill it and need root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.path.join("filler").display()))
            .output();
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("df");
        let avail = String::from_utf8_lossy(&out.stdout);
        assert!(avail.trim().ends_with('0'), "not full: {avail}");
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The gateway's store moved to `db` (the gateway restarted on it).
fn move_store(env: &mut Env, db: &Path) {
    env.stop_gateway();
    let config = std::fs::read_to_string(&env.config_path).expect("config");
    let old = env.dir.path().join("gatehouse.db");
    let config = config.replace(&old.display().to_string(), &db.display().to_string());
    std::fs::write(&env.config_path, config).expect("write config");
    // A new store starts a new chain: the old one's anchored checkpoints
    // do not apply to it.
    let _ = std::fs::remove_file(env.dir.path().join("data/audit_anchor.jsonl"));
    std::fs::write(
        env.dir.path().join("query.toml"),
        format!("[store]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .expect("write query.toml");
    env.spawn_gateway();
}

#[test]
fn a_session_whose_events_cannot_be_written_is_stopped_and_loses_nothing() {
    let mut env = Env::start();
    let fs = Tmpfs::mount(&env.dir.path().join("storefs"), "24m");
    move_store(&mut env, &fs.path.join("gatehouse.db"));
    let ssh = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["-tt", "sh"]);
    let line = std::iter::once(ssh.get_program())
        .chain(ssh.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let tmux = Tmux::start(&line).expect("tmux");
    tmux.send_literal("echo before-$((40+2))\n").expect("type");
    tmux.wait_for("before-42", T).expect("first command");
    env.wait_rows("SELECT 1 FROM commands WHERE command = 'echo before-$((40+2))'");

    fs.fill();
    // Commands typed now: the first whose event cannot be written stops
    // the session, and the user is told.
    let mut typed = Vec::new();
    let mut stopped = false;
    for n in 0..40 {
        let cmd = format!("echo after-{n}-$((1+1))");
        if tmux.send_literal(&format!("{cmd}\n")).is_err() {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let ran = loop {
            // Long lines wrap on the 120-column screen.
            let screen = tmux.capture().unwrap_or_default().replace('\n', "");
            let ran = screen.contains(&format!("after-{n}-2"));
            if screen.contains("nothing runs unrecorded") {
                stopped = true;
                break ran;
            }
            if ran {
                break true;
            }
            assert!(Instant::now() < deadline, "no answer:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        };
        typed.push((cmd, ran));
        if stopped {
            break;
        }
        // Each command's event has its chance to fail before the next.
        std::thread::sleep(Duration::from_millis(300));
    }
    let screen = tmux.capture().unwrap_or_default().replace('\n', "");
    assert!(
        stopped,
        "the session ran on with a full store:\n{screen}\n{}",
        env.gateway_log()
    );
    assert!(screen.contains("audit trail cannot be written"), "{screen}");

    // Once the store has room again, every command that ran is in the
    // trail, with the session's end and its reason.
    fs.free();
    let end = env.wait_rows(
        "SELECT reason, result FROM events WHERE type = 'session.end' AND reason LIKE '%audit trail cannot be written%'",
    );
    assert_eq!(end[0]["result"], "error");
    // The command whose event could not be written was submitted to the
    // shell (its output may not have reached the screen before the
    // session was stopped): it is in the trail too.
    for (cmd, _) in &typed {
        let rows = env.query(&format!(
            "SELECT 1 FROM commands WHERE command = '{}'",
            cmd.replace('\'', "''")
        ));
        assert_eq!(rows.len(), 1, "{cmd} is not in the trail\n{screen}");
    }
    let verify = env.gatehouse(&["audit", "verify"]);
    assert_eq!(verify.code, Some(0), "{}", stdout(&verify));
}

#[test]
fn a_recording_that_cannot_be_written_stops_the_session_and_end_tells_the_truth() {
    let env = Env::start();
    let fs = Tmpfs::mount(&env.dir.path().join("recordings"), "256k");
    let out = env.ssh(
        "alice:web01@127.0.0.1",
        &["head -c 3000000 /dev/zero | od -v | head -c 2000000; sleep 5; echo finished"],
    );
    assert!(!stdout(&out).contains("finished"), "the session ran on");
    assert!(
        out.stderr.contains("session recording cannot be written"),
        "stderr: {}",
        out.stderr
    );
    let failed = env.wait_rows(
        "SELECT severity, json_extract(details, '$.recording_id') AS id FROM events WHERE type = 'recording.failed'",
    );
    assert_eq!(failed[0]["severity"], "high");
    let end = env.wait_rows("SELECT reason, details FROM events WHERE type = 'session.end'");
    assert!(end[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("recording cannot be written"));
    let details: serde_json::Value = match &end[0]["details"] {
        serde_json::Value::String(s) => serde_json::from_str(s).expect("details json"),
        v => v.clone(),
    };
    let rec = &details["recordings"][0];
    let id = rec["id"].as_str().expect("recording id");
    let file = fs.path.join(format!("{id}.cast"));
    let on_disk = std::fs::metadata(&file).expect("the cast file").len();
    assert!(on_disk > 0);
    assert_eq!(rec["bytes"].as_u64(), Some(on_disk), "{details}");
    assert_eq!(rec["sha256"].as_str(), Some(sha256_of(&file).as_str()));
    assert!(rec["error"].as_str().is_some(), "{details}");

    // A full disk refuses the next session before anything runs.
    std::fs::remove_file(&file).expect("make room, then fill again");
    fs.fill();
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "ran"]);
    assert!(!stdout(&out).contains("ran"), "ran without a recording");
    assert!(
        out.stderr.contains("recording is required"),
        "stderr: {}",
        out.stderr
    );
}
