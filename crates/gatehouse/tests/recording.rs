//! Recordings and the exact command log, with a real bash behind a real
//! sshd, driven through the gateway in a real terminal (tmux).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{gatehouse_bin, stdout, Env};
use gatehouse_testkit::{self as kit, Tmux};

const W: Duration = Duration::from_secs(20);

/// A tmux terminal running `bash --norc -i` on web01 through the gateway.
fn bash_session(env: &Env) -> Tmux {
    let opts = env.alice().opts().join(" ");
    let tmux = Tmux::start(&format!(
        "ssh {opts} -tt -p {} alice:web01@127.0.0.1 'PS1=\"gh$ \" exec bash --norc -i'",
        env.port
    ))
    .expect("tmux");
    tmux.wait_for("gh$", W).expect("prompt");
    tmux
}

/// Types `text`, then waits until the screen shows `expect`.
fn type_and_wait(tmux: &Tmux, keys: &[&str], expect: &str) {
    for k in keys {
        match *k {
            "Enter" | "Up" | "Tab" | "BSpace" | "Left" | "C-c" => tmux.send_keys(&[k]).unwrap(),
            text => tmux.send_literal(text).unwrap(),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    tmux.wait_for(expect, W).expect("screen");
}

fn session_id(env: &Env) -> String {
    let rows = env.wait_rows("select session_id from sessions order by start_time desc");
    rows[0]["session_id"].as_str().unwrap().to_string()
}

/// The recording file of the newest session, once that session has ended.
fn ended_session_recording(env: &Env) -> std::path::PathBuf {
    let sid = session_id(env);
    let rows = env.wait_rows(&format!(
        "select recording_id from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let rec = rows[0]["recording_id"].as_str().unwrap();
    env.dir
        .path()
        .join("recordings")
        .join(format!("{rec}.cast"))
}

/// `asciinema cat FILE` in a pseudo-terminal (it insists on /dev/tty),
/// via util-linux `script`.
fn asciinema_cat(file: &std::path::Path) -> std::process::Output {
    Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat '{}'", file.display()),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) and asciinema (apt-get install asciinema)")
}

fn gh(env: &Env, args: &[&str]) -> kit::Output {
    env.gatehouse(args)
}

#[test]
fn the_commands_view_holds_the_lines_bash_executed() {
    let env = Env::start();
    let work = env.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let tmux = bash_session(&env);
    let cd = format!("cd {}", work.display());
    type_and_wait(&tmux, &[&cd, "Enter"], "gh$ ");
    std::thread::sleep(Duration::from_millis(300));
    type_and_wait(&tmux, &["touch gh-unique-file.txt", "Enter"], "gh$ ");
    // Type, run, recall with Up, erase three characters, run again.
    type_and_wait(&tmux, &["echo one", "Enter"], "one\n");
    type_and_wait(&tmux, &["Up"], "gh$ echo one");
    type_and_wait(
        &tmux,
        &["BSpace", "BSpace", "BSpace", "two", "Enter"],
        "two\n",
    );
    // Tab completes the file name.
    type_and_wait(
        &tmux,
        &["ls gh-uni", "Tab", "Enter"],
        "gh-unique-file.txt\n",
    );
    // A typo fixed with Backspace.
    type_and_wait(&tmux, &["echo abcX", "BSpace", "d", "Enter"], "abcd\n");
    // A line continued with a backslash.
    type_and_wait(
        &tmux,
        &["echo con\\", "Enter", "tinued", "Enter"],
        "continued\n",
    );
    type_and_wait(&tmux, &["exit", "Enter"], "");
    let sid = session_id(&env);
    let _ = env.wait_rows(&format!(
        "select session_id from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let rows = env.query(&format!(
        "select command from commands where session_id = '{sid}' and source = 'interactive' order by time"
    ));
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["command"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        got,
        vec![
            cd.as_str(),
            "touch gh-unique-file.txt",
            "echo one",
            "echo two",
            "ls gh-unique-file.txt",
            "echo abcd",
            "echo continued",
            "exit"
        ]
    );
}

#[test]
fn recordings_export_as_asciicast_that_asciinema_plays() {
    let env = Env::start();
    let tmux = bash_session(&env);
    type_and_wait(&tmux, &["echo rec-$((6*7))", "Enter"], "rec-42");
    type_and_wait(&tmux, &["exit", "Enter"], "");
    let sid = session_id(&env);
    let rows = env.wait_rows(&format!(
        "select recording_id, recording_sha256 from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let rec = rows[0]["recording_id"]
        .as_str()
        .expect("recording id")
        .to_string();
    let sha = rows[0]["recording_sha256"]
        .as_str()
        .expect("digest")
        .to_string();
    let file = env
        .dir
        .path()
        .join("recordings")
        .join(format!("{rec}.cast"));
    let digest = Command::new("sha256sum").arg(&file).output().unwrap();
    assert!(
        String::from_utf8_lossy(&digest.stdout).starts_with(&sha),
        "digest in session.end differs from the file"
    );

    let out_path = env.dir.path().join("export.cast");
    let out = gh(
        &env,
        &["sessions", "export", &sid, "-o", out_path.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = std::fs::read_to_string(&out_path).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["gatehouse"]["user"], "alice");
    assert_eq!(header["gatehouse"]["target"], "web01");
    assert!(header["width"].as_u64().unwrap() > 0);
    assert!(
        text.lines()
            .any(|l| l.contains("\"m\"") && l.contains("echo rec-$((6*7))")),
        "no marker"
    );
    assert!(text.lines().any(|l| l.contains("\"i\"")), "no input events");

    let played = asciinema_cat(&out_path);
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    assert!(String::from_utf8_lossy(&played.stdout).contains("rec-42"));

    let out = gh(&env, &["--format", "json", "sessions", "export", &sid]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json export");
    assert_eq!(v["header"]["version"], 2);
    assert!(v["events"].as_array().map(|e| e.len()).unwrap_or(0) > 2);

    let out = gh(
        &env,
        &[
            "sessions",
            "play",
            &sid,
            "--speed",
            "50",
            "--idle-limit",
            "0.1",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).contains("rec-42"));

    let rows = env.wait_rows("select details from events where type = 'recording.access'");
    assert_eq!(rows.len(), 3, "export, export, play: {rows:?}");

    let out = gh(&env, &["sessions", "show", &sid]);
    assert!(
        stdout(&out).contains("echo rec-$((6*7))"),
        "{}",
        stdout(&out)
    );
    let out = gh(
        &env,
        &[
            "--format", "json", "sessions", "list", "--user", "alice", "--since", "1h",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["session_id"], sid.as_str());
    let out = gh(
        &env,
        &["--format", "json", "sessions", "list", "--user", "bob"],
    );
    assert_eq!(stdout(&out).trim(), "[]");
}

#[test]
fn exec_output_is_recorded() {
    let env = Env::start();
    let out = env.ssh("alice:web01@127.0.0.1", &["echo exec-output-marker"]);
    assert_eq!(out.code, Some(0));
    let text = std::fs::read_to_string(ended_session_recording(&env)).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["command"], "echo exec-output-marker");
    assert!(text.contains("exec-output-marker\\n"), "{text}");
}

#[test]
fn exec_output_recording_stops_at_the_size_cap() {
    let env = Env::start();
    // 3 MB of NUL bytes become 18 MB of JSON text ("\u0000" each): the
    // cap (10 MB of recording) must hold for what is stored.
    let out = env.ssh(
        "alice:web01@127.0.0.1",
        &["head -c 3000000 /dev/zero; echo done"],
    );
    assert_eq!(out.code, Some(0));
    let text = std::fs::read_to_string(ended_session_recording(&env)).unwrap();
    let cap = 10 * 1024 * 1024;
    assert!(
        text.len() > cap / 2 && text.len() < cap + 300 * 1024,
        "recording is {} bytes",
        text.len()
    );
    assert!(
        text.contains("output not recorded beyond the size cap"),
        "no cap marker"
    );
}

#[test]
fn kill_ends_a_live_session_and_the_user_sees_why() {
    let env = Env::start();
    let mut c = env
        .alice()
        .ssh(env.port, "alice:web01@127.0.0.1", &["sleep 60"]);
    c.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let child = c.spawn().unwrap();
    let rows = env.wait_rows("select session_id from sessions where active = 1");
    let sid = rows[0]["session_id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = gh(&env, &["sessions", "kill", &sid, "--reason", "incident 42"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("incident 42"), "{stderr}");
    eprintln!("kill ended the client after {elapsed:?}");
    let rows = env.wait_rows("select reason, details from events where type = 'session.killed'");
    assert_eq!(rows[0]["reason"], "incident 42");
    let out = gh(&env, &["sessions", "kill", &sid]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no running session"), "{}", out.stderr);
}

#[test]
fn watch_follows_a_live_session() {
    let env = Env::start();
    let tmux = bash_session(&env);
    let sid = session_id(&env);
    let mut w = Command::new(gatehouse_bin());
    w.arg("--config")
        .arg(&env.config_path)
        .args(["sessions", "watch", &sid])
        .stdout(std::process::Stdio::piped());
    let watcher = w.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    type_and_wait(&tmux, &["echo watched-$((1+1))", "Enter"], "watched-2");
    type_and_wait(&tmux, &["exit", "Enter"], "");
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("watched-2"));
}

#[test]
fn a_recording_survives_a_gateway_crash_up_to_the_last_flush() {
    let mut env = Env::start();
    let tmux = bash_session(&env);
    type_and_wait(
        &tmux,
        &["echo before-crash-$((2*21))", "Enter"],
        "before-crash-42",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let sid = session_id(&env);
    let mut gw = env.gateway.take().unwrap();
    gw.kill().unwrap(); // SIGKILL
    gw.wait().unwrap();
    let file = env
        .dir
        .path()
        .join("recordings")
        .join(format!("{sid}.cast"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("before-crash-42"), "{text}");
    let played = asciinema_cat(&file);
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
}

#[test]
fn play_keys_pause_skip_ahead_and_go_back() {
    let env = Env::start();
    let out = env.ssh(
        "alice:web01@127.0.0.1",
        &["echo FIRST-$((1+1)); sleep 0.3; echo SECOND-$((2+2)); sleep 0.3; echo THIRD-$((3+3))"],
    );
    assert_eq!(out.code, Some(0));
    let file = ended_session_recording(&env);
    let sid = session_id(&env);
    // Stretch the pauses between the three lines to two minutes each.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut stretched = String::new();
    let mut seen = 0.0;
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            stretched.push_str(line);
        } else {
            let (t, code, data): (f64, String, String) = serde_json::from_str(line).unwrap();
            let t = t + 120.0 * seen;
            seen += data.matches("-2\n").count() as f64 + data.matches("-4\n").count() as f64;
            stretched.push_str(&serde_json::to_string(&(t, code, data)).unwrap());
        }
        stretched.push('\n');
    }
    std::fs::write(&file, stretched).unwrap();

    let tmux = Tmux::start(&format!(
        "{} --config {} sessions play {sid}",
        gatehouse_bin(),
        env.config_path.display()
    ))
    .unwrap();
    tmux.wait_for("FIRST-2", W).unwrap();
    // f: skip ahead over the two-minute pause.
    tmux.send_keys(&["f"]).unwrap();
    tmux.wait_for("SECOND-4", W).unwrap();
    // b: back 10 s: the screen is redrawn up to before SECOND.
    tmux.send_keys(&["b"]).unwrap();
    let mut redrawn = false;
    for _ in 0..100 {
        let screen = tmux.capture().unwrap();
        if screen.contains("FIRST-2") && !screen.contains("SECOND-4") {
            redrawn = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(redrawn, "after b: {}", tmux.capture().unwrap());
    drop(tmux);
    // q quits during a pause.
    let tmux = Tmux::start(&format!(
        "{} --config {} sessions play {sid}",
        gatehouse_bin(),
        env.config_path.display()
    ))
    .unwrap();
    tmux.wait_for("FIRST-2", W).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_keys(&["q"]).unwrap();
    let running = || {
        std::process::Command::new("pgrep")
            // Anchored, so that tmux's own command line does not match.
            .args([
                "-f",
                &format!("^{} --config .* sessions play {sid}", gatehouse_bin()),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let mut quit = false;
    for _ in 0..200 {
        if !running() {
            quit = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(quit, "q did not quit; screen: {}", tmux.capture().unwrap());
}

#[test]
fn full_screen_programs_do_not_produce_commands() {
    let env = Env::start();
    let file = env.dir.path().join("edited.txt");
    let tmux = bash_session(&env);
    let vi = format!("vi {}", file.display());
    type_and_wait(&tmux, &[&vi, "Enter"], "~");
    std::thread::sleep(Duration::from_millis(500));
    for keys in [&["ihello world"][..], &["Escape"], &[":wq"], &["Enter"]] {
        for k in keys {
            if *k == "Escape" {
                tmux.send_keys(&["Escape"]).unwrap();
            } else if *k == "Enter" {
                tmux.send_keys(&["Enter"]).unwrap();
            } else {
                tmux.send_literal(k).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    tmux.wait_for("gh$", W).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        "hello world"
    );
    let less = format!("less {}", file.display());
    type_and_wait(&tmux, &[&less, "Enter"], "hello world");
    std::thread::sleep(Duration::from_millis(300));
    tmux.send_literal("q").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    type_and_wait(&tmux, &["echo done-$((1+1))", "Enter"], "done-2");
    type_and_wait(&tmux, &["exit", "Enter"], "");
    let sid = session_id(&env);
    let _ = env.wait_rows(&format!(
        "select session_id from sessions where session_id = '{sid}' and end_time is not null"
    ));
    let rows = env.query(&format!(
        "select command from commands where session_id = '{sid}' and source = 'interactive' order by time"
    ));
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["command"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        got,
        vec![vi.as_str(), less.as_str(), "echo done-$((1+1))", "exit"]
    );
}
