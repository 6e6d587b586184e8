//! `gatehouse sessions ...`: list, show, play, export, watch, kill.

use std::io::{BufRead, BufReader, Read, Write};

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_control::Control;
use gatehouse_model::{
    escape_control, parse_duration, Config, EventType, NewEvent, Outcome, Severity,
};
use gatehouse_store::recordings::{self, RecordingStorage};
use gatehouse_store::{QueryResult, Store};

use crate::cli::{Format, SessionsCmd};

/// Who runs the CLI, for `recording.access` and kill requests.
fn operator() -> String {
    crate::operator::current().name
}

fn print(result: &QueryResult, format: Format) {
    let out = match format {
        Format::Json => result.to_json(),
        Format::Csv => result.to_csv(),
        Format::Table | Format::Cast => result.to_table(),
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
}

pub async fn run(
    cmd: &SessionsCmd,
    config: &Config,
    store: &Store,
    format: Format,
) -> Result<ExitCode> {
    match cmd {
        SessionsCmd::List {
            active,
            user,
            target,
            since,
        } => {
            list(
                store,
                *active,
                user.as_deref(),
                target.as_deref(),
                since.as_deref(),
                format,
            )
            .await
        }
        SessionsCmd::Show { id } => {
            check_recordings(store, config, id, None, "show").await?;
            show(store, id, format).await
        }
        SessionsCmd::Export { id, output } => {
            let rec = control(store, config).open_recording(id, "export").await?;
            check_recordings(store, config, id, Some(&rec), "export").await?;
            let storage = recordings::from_config(&config.recording)?;
            let mut text = String::new();
            storage
                .open(&rec)
                .with_context(|| format!("cannot open recording {}", storage.locate(&rec)))?
                .read_to_string(&mut text)?;
            let out = match format {
                Format::Json => cast_to_json(&text)?,
                _ => text,
            };
            match output {
                Some(path) => std::fs::write(path, out)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{out}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCmd::Play {
            id,
            speed,
            idle_limit,
        } => {
            let rec = control(store, config).open_recording(id, "play").await?;
            check_recordings(store, config, id, Some(&rec), "play").await?;
            let storage = recordings::from_config(&config.recording)?;
            let open = || -> Result<Box<dyn Read + Send>> {
                storage
                    .open(&rec)
                    .with_context(|| format!("cannot open recording {}", storage.locate(&rec)))
            };
            drop(open()?);
            if *speed <= 0.0 {
                bail!("--speed must be greater than 0");
            }
            play(&open, *speed, *idle_limit)?;
            Ok(ExitCode::SUCCESS)
        }
        SessionsCmd::Watch { id } => {
            let rec = control(store, config).open_recording(id, "watch").await?;
            let storage = recordings::from_config(&config.recording)?;
            watch(store, storage.as_ref(), id, &rec).await?;
            Ok(ExitCode::SUCCESS)
        }
        SessionsCmd::Kill { id, reason } => {
            control(store, config).kill_session(id, reason).await?;
            // Wait (bounded) for the gateway to carry it out.
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if store
                    .pending_kills()
                    .await?
                    .iter()
                    .all(|k| k.session_id != *id)
                {
                    println!("killed session {id}");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            bail!("the kill request for {id} is queued but no gateway has carried it out yet; is the gateway running?")
        }
    }
}

/// `sessions list`: newest first, with the given filters bound as
/// parameters.
async fn list(
    store: &Store,
    active: bool,
    user: Option<&str>,
    target: Option<&str>,
    since: Option<&str>,
    format: Format,
) -> Result<ExitCode> {
    let mut filters = Vec::new();
    let mut params: Vec<String> = Vec::new();
    let mut bind = |filters: &mut Vec<String>, column: &str, value: String| {
        params.push(value);
        filters.push(format!("{column} ?{}", params.len()));
    };
    if active {
        filters.push(match store.backend() {
            gatehouse_store::Backend::Sqlite => "active = 1".to_string(),
            gatehouse_store::Backend::Postgres => "active".to_string(),
        });
    }
    if let Some(u) = user {
        bind(&mut filters, "\"user\" =", u.to_string());
    }
    if let Some(t) = target {
        bind(&mut filters, "target =", t.to_string());
    }
    if let Some(s) = since {
        let d = parse_duration(s)?;
        let from = chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
            .ok_or_else(|| anyhow::anyhow!("--since {s:?} reaches too far back"))?;
        bind(
            &mut filters,
            "start_time >=",
            gatehouse_model::event::format_time(from),
        );
    }
    let where_ = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let sql = format!(
        "SELECT session_id, \"user\", target, login, source_ip, start_time, end_time, duration_ms, exit_status, active FROM sessions {where_} ORDER BY start_time DESC"
    );
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    print(&store.query_readonly_with(&sql, &params).await?, format);
    Ok(ExitCode::SUCCESS)
}

async fn show(store: &Store, id: &str, format: Format) -> Result<ExitCode> {
    let meta = store
        .query_readonly_with("SELECT * FROM sessions WHERE session_id = ?1", &[id])
        .await?;
    if meta.rows.is_empty() {
        bail!("no session {id}; see `gatehouse sessions list`");
    }
    let commands = store
        .query_readonly_with(
            "SELECT time, source, command FROM commands WHERE session_id = ?1 ORDER BY time",
            &[id],
        )
        .await?;
    let transfers = store
        .query_readonly_with(
            "SELECT time, type, details FROM events WHERE session_id = ?1 AND (type LIKE 'sftp.%' OR type = 'scp' OR type LIKE 'port_forward.%') ORDER BY seq",
            &[id],
        )
        .await?;
    if format == Format::Json {
        let obj = |r: &QueryResult| {
            serde_json::from_str::<serde_json::Value>(&r.to_json()).unwrap_or_default()
        };
        let session = obj(&meta).get(0).cloned().unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"session": session, "commands": obj(&commands), "transfers": obj(&transfers)})
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (i, col) in meta.columns.iter().enumerate() {
        let v = meta.rows[0].get(i).cloned().unwrap_or_default();
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("{:>16}: {}", escape_control(col), escape_control(&text));
    }
    println!("\ncommands:");
    print(&commands, Format::Table);
    println!("\ntransfers and forwards:");
    print(&transfers, Format::Table);
    Ok(ExitCode::SUCCESS)
}

/// The control layer, acting as the OS account that runs this command.
fn control<'a>(store: &'a Store, config: &'a Config) -> Control<'a> {
    Control::new(store, config, crate::operator::actor())
}

/// Compares the recordings of a finished session (only `only`, when
/// given) with the SHA-256 and size its `session.end` event holds. A
/// mismatch or a missing file is a one-line warning on stderr and a
/// `recording.tampered` event; the command goes on (the file may still be
/// evidence). A session still running has no digest yet: nothing to check.
async fn check_recordings(
    store: &Store,
    config: &Config,
    session: &str,
    only: Option<&str>,
    action: &str,
) -> Result<()> {
    use gatehouse_store::recordings::{check, listed, Integrity};
    let end = store
        .query_readonly_with(
            "SELECT details FROM events WHERE session_id = ?1 AND type = 'session.end' ORDER BY seq LIMIT 1",
            &[session],
        )
        .await?;
    let details = match end.rows.first().and_then(|r| r.first()) {
        Some(serde_json::Value::String(text)) => {
            serde_json::from_str::<serde_json::Value>(text).unwrap_or_default()
        }
        _ => return Ok(()),
    };
    let storage = recordings::from_config(&config.recording)?;
    for expected in listed(&details) {
        if only.is_some_and(|o| o != expected.id) {
            continue;
        }
        let path = storage.locate(&expected.id);
        let (problem, found, warning) = match check(storage.as_ref(), &expected) {
            Integrity::Intact => continue,
            Integrity::Modified { sha256, bytes } => (
                "modified",
                serde_json::json!({"sha256": sha256, "bytes": bytes}),
                format!(
                    "recording {path} of session {session} was changed after the session ended (its SHA-256 no longer matches the session.end event): do not trust its contents, restore it from a backup and investigate who wrote to {}",
                    config.recording.dir.display()
                ),
            ),
            Integrity::Missing => (
                "missing",
                serde_json::Value::Null,
                format!(
                    "recording {path} of session {session} is missing although its session.end event lists it: restore it from a backup and investigate who removed it"
                ),
            ),
            // Not evidence of tampering (permissions, say): warn only.
            Integrity::Unreadable(e) => {
                eprintln!(
                    "gatehouse: warning: recording {path} of session {session} cannot be read to check its SHA-256 ({e}); fix its permissions and run the command again"
                );
                continue;
            }
        };
        eprintln!("gatehouse: warning: {warning}");
        let ev = NewEvent::new(
            EventType::RECORDING_TAMPERED,
            Severity::High,
            Outcome::Failure,
            &config.server.node,
        )
        .user(operator())
        .session(session)
        .reason(format!("recording {problem}"))
        .details(serde_json::json!({
            "recording_id": expected.id,
            "problem": problem,
            "expected": {"sha256": expected.sha256, "bytes": expected.bytes},
            "found": found,
            "path": path,
            "action": action,
            "by": operator(),
            "channel": "cli",
        }));
        if let Err(e) = store.append(&ev).await {
            eprintln!(
                "gatehouse: warning: cannot write the recording.tampered event ({e}); check the store"
            );
        }
    }
    Ok(())
}

/// `{"header": {...}, "events": [[t, code, data], ...]}`.
fn cast_to_json(text: &str) -> Result<String> {
    let (json, skipped) = gatehouse_record::asciicast::cast_to_json(text)
        .context("the recording's header is not JSON: the file is corrupt")?;
    // A crash can leave a partial last line: keep what is whole.
    for n in skipped {
        eprintln!("gatehouse: skipping unreadable line {n} of the recording");
    }
    Ok(json)
}

/// Replays `o` events with their timing. Keys (when stdin is a
/// terminal): space pauses, `f` skips 10 s ahead, `b` goes 10 s back
/// (the screen is redrawn from the start up to that point), q quits.
fn play(
    open: &dyn Fn() -> Result<Box<dyn Read + Send>>,
    speed: f64,
    idle_limit: Option<f64>,
) -> Result<()> {
    let keys = Keys::start();
    let mut out = std::io::stdout();
    // Recording time up to which output is written without waiting.
    let mut skip_until = 0.0f64;
    'replay: loop {
        let mut reader = BufReader::new(open()?);
        let mut header = String::new();
        reader.read_line(&mut header)?;
        serde_json::from_str::<serde_json::Value>(&header)
            .context("the recording's header is not JSON: the file is corrupt")?;
        let mut last = 0.0f64;
        let mut paused = false;
        for line in reader.lines() {
            let line = line?;
            let Some((t, code, data)) = gatehouse_record::asciicast::parse_event(&line) else {
                continue;
            };
            let mut gap = (t - last).max(0.0);
            if let Some(limit) = idle_limit {
                gap = gap.min(limit);
            }
            let prev = last;
            last = t;
            if t > skip_until {
                let mut remaining = gap / speed;
                while remaining > 0.0 || paused {
                    match keys.poll() {
                        Some(b' ') => paused = !paused,
                        Some(b'f') => {
                            skip_until = t + 10.0;
                            paused = false;
                            break;
                        }
                        Some(b'b') => {
                            // Back from where playback is now, mid-pause.
                            let position = prev + (gap - remaining * speed).max(0.0);
                            skip_until = (position - 10.0).max(0.0);
                            out.write_all(b"\x1b[0m\x1b[2J\x1b[H")?;
                            continue 'replay;
                        }
                        Some(b'q') | Some(3) => return Ok(()),
                        _ => {}
                    }
                    let step = remaining.clamp(0.0, 0.05);
                    std::thread::sleep(Duration::from_secs_f64(if paused { 0.05 } else { step }));
                    if !paused {
                        remaining -= step;
                    }
                }
            }
            if code == "o" {
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
        }
        return Ok(());
    }
}

/// Follows a live recording until its session ends.
async fn watch(
    store: &Store,
    storage: &dyn RecordingStorage,
    session: &str,
    rec: &str,
) -> Result<()> {
    let mut file = None;
    for _ in 0..50 {
        match storage.open(rec) {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some(file) = file else {
        bail!("recording {} does not exist (yet)", storage.locate(rec));
    };
    let mut reader = BufReader::new(file);
    let mut out = std::io::stdout();
    let mut partial = String::new();
    let mut first = true;
    let mut announced: Option<std::time::Instant> = None;
    loop {
        // The node recording the session publishes its output at every
        // flush while someone follows it (`gatehouse_store::wake`).
        if announced.is_none_or(|at| at.elapsed() >= gatehouse_store::wake::WATCH_RENEW) {
            announced = Some(std::time::Instant::now());
            if let Err(e) = store.announce_watch(session).await {
                tracing::debug!(error = %e, "cannot announce a live viewer");
            }
        }
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            let ended = store
                .query_readonly_with(
                    "SELECT end_time FROM sessions WHERE session_id = ?1 AND end_time IS NOT NULL",
                    &[session],
                )
                .await?;
            if !ended.rows.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        partial.push_str(&line);
        if !partial.ends_with('\n') {
            continue;
        }
        let whole = std::mem::take(&mut partial);
        if first {
            first = false;
            continue;
        }
        if let Some((_, code, data)) = gatehouse_record::asciicast::parse_event(&whole) {
            if code == "o" {
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
        }
    }
}

/// Single keystrokes from a terminal stdin, read in the background.
struct Keys {
    rx: Option<std::sync::mpsc::Receiver<u8>>,
    restore: Option<String>,
}

impl Keys {
    fn start() -> Keys {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Keys {
                rx: None,
                restore: None,
            };
        }
        let saved = std::process::Command::new("stty")
            .arg("-g")
            .stdin(std::process::Stdio::inherit())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let _ = std::process::Command::new("stty")
            .args(["-icanon", "-echo", "min", "1"])
            .stdin(std::process::Stdio::inherit())
            .status();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut b) {
                if tx.send(b[0]).is_err() {
                    break;
                }
            }
        });
        Keys {
            rx: Some(rx),
            restore: saved,
        }
    }

    fn poll(&self) -> Option<u8> {
        self.rx.as_ref().and_then(|r| r.try_recv().ok())
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Some(saved) = &self.restore {
            let _ = std::process::Command::new("stty")
                .arg(saved)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}
