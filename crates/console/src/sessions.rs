//! Sessions: the filtered list, one session with its replay, the cast
//! itself, the live view and Kill.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use crate::extract::{Form, Path, Query};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use gatehouse_control::Control;
use gatehouse_model::ConsolePermission as P;
use gatehouse_store::recordings::{self, RecordingStorage};
use gatehouse_store::{Scope, SessionFilter, SessionRow};
use serde::Deserialize;

use crate::signin::{Params, Viewer};
use crate::{html, Console, Fail, Page};

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/sessions", get(list))
        .route("/live", get(live_list))
        .route("/sessions/{id}", get(show))
        .route("/sessions/{id}/cast", get(cast))
        .route("/sessions/{id}/integrity", get(integrity_json))
        .route("/sessions/{id}/live", get(live))
        .route("/sessions/{id}/live.ws", get(live_ws))
        .route("/sessions/{id}/kill", post(kill))
}

/// Rows per page.
pub(crate) const PAGE: i64 = 50;

/// The sessions `viewer` may see.
pub(crate) fn scope(viewer: &Viewer) -> Scope {
    if viewer.access.sees_all() {
        Scope::All
    } else {
        Scope::Visible {
            user: viewer.user.clone(),
            targets: viewer.access.target_names(),
        }
    }
}

/// A time filter: RFC 3339, or a duration back from now (`24h`).
pub(crate) fn time_param(name: &str, value: Option<&String>) -> Result<Option<String>, Fail> {
    let Some(v) = value.map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(Some(gatehouse_model::event::format_time(
            t.with_timezone(&chrono::Utc),
        )));
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M") {
        return Ok(Some(gatehouse_model::event::format_time(t.and_utc())));
    }
    if let Ok(d) = gatehouse_model::parse_duration(v) {
        let back = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        return Ok(Some(gatehouse_model::event::format_time(
            chrono::Utc::now() - back,
        )));
    }
    Err(Fail::bad(format!(
        "{name}={v:?} is not a time; write an RFC 3339 time (2026-11-30T08:00:00Z) or a duration back from now (24h)"
    )))
}

/// A short text filter; over 200 characters is refused.
pub(crate) fn text_param(p: &Params, name: &str) -> Result<Option<String>, Fail> {
    match p.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > 200 => {
            Err(Fail::bad(format!("{name} is longer than 200 characters")))
        }
        Some(v) => Ok(Some(v.to_string())),
        None => Ok(None),
    }
}

pub(crate) fn session_filter(viewer: &Viewer, p: &Params) -> Result<SessionFilter, Fail> {
    let active = match p.get("active").map(String::as_str) {
        None | Some("") => None,
        Some("1") | Some("yes") | Some("true") => Some(true),
        Some("0") | Some("no") | Some("false") => Some(false),
        Some(v) => {
            return Err(Fail::bad(format!(
                "active={v:?}: write 1 (running) or 0 (ended)"
            )))
        }
    };
    let before =
        match text_param(p, "before")? {
            None => None,
            Some(c) => match c.split_once('~') {
                Some((t, id)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {
                    Some((t.to_string(), id.to_string()))
                }
                _ => return Err(Fail::bad(
                    "before= is not a page cursor of this console; start again from the first page",
                )),
            },
        };
    Ok(SessionFilter {
        user: text_param(p, "user")?,
        target: text_param(p, "target")?,
        login: text_param(p, "login")?,
        since: time_param("since", p.get("since"))?,
        until: time_param("until", p.get("until"))?,
        active,
        command: text_param(p, "command")?,
        source_ip: text_param(p, "source_ip")?,
        before,
        scope: scope(viewer),
    })
}

/// The query string of `p` without `skip`, for links that keep filters.
fn keep(p: &Params, skip: &[&str]) -> String {
    p.iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| format!("{}={}", html::url(k), html::url(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn row_cells(s: &SessionRow) -> Vec<String> {
    let state = if s.active {
        html::badge("warn", "running")
    } else {
        match s.exit_status {
            Some(0) => html::badge("ok", "exit 0"),
            Some(n) => html::badge("bad", &format!("exit {n}")),
            None => html::badge("", "ended"),
        }
    };
    vec![
        format!(
            "<a href=\"/sessions/{0}\">{0}</a>",
            html::esc(&s.session_id)
        ),
        html::time(&s.start_time),
        html::esc(&s.user),
        html::esc(&s.target),
        html::esc(&s.login),
        html::esc(s.source_ip.as_deref().unwrap_or("")),
        s.commands.to_string(),
        s.duration_ms
            .map(|d| format!("{:.1} s", d as f64 / 1000.0))
            .unwrap_or_default(),
        state,
    ]
}

async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Page {
    let filter = session_filter(&viewer, &p)?;
    let rows = console.store.sessions_page(&filter, PAGE + 1).await?;
    let more = rows.len() as i64 > PAGE;
    let rows: Vec<SessionRow> = rows.into_iter().take(PAGE as usize).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
    let older = match (more, rows.last()) {
        (true, Some(last)) => format!(
            "<a id=\"older\" href=\"/sessions?{}{}before={}\">Older sessions →</a>",
            keep(&p, &["before"]),
            if keep(&p, &["before"]).is_empty() {
                ""
            } else {
                "&"
            },
            html::url(&format!("{}~{}", last.start_time, last.session_id))
        ),
        _ => String::new(),
    };
    let g = |k: &str| p.get(k).map(String::as_str);
    let active = g("active").unwrap_or("");
    let sel = |v: &str| if active == v { " selected" } else { "" };
    let body = format!(
        "<h1>Sessions</h1><form method=\"get\" action=\"/sessions\" class=\"filters\" id=\"filters\">{}{}{}{}{}{}{}<label>State <select name=\"active\"><option value=\"\"{}>any</option><option value=\"1\"{}>running</option><option value=\"0\"{}>ended</option></select></label><button type=\"submit\">Filter</button> <a href=\"/sessions\">Clear</a></form>{}<p class=\"pager\">{older}</p>",
        html::input("user", "User", g("user")),
        html::input("target", "Target", g("target")),
        html::input("login", "Login", g("login")),
        html::input("source_ip", "Source", g("source_ip")),
        html::input("command", "Command contains", g("command")),
        html::input("since", "Since", g("since")),
        html::input("until", "Until", g("until")),
        sel(""),
        sel("1"),
        sel("0"),
        html::table(
            "sessions",
            &["Session", "Started", "User", "Target", "Login", "Source", "Commands", "Duration", "State"],
            &cells
        ),
    );
    Ok(html::layout("Sessions", Some(&viewer), &body).into_response())
}

async fn live_list(State(console): State<Arc<Console>>, viewer: Viewer) -> Page {
    if !viewer.access.can(P::Watch) {
        return Err(Fail::forbidden(
            "No role of yours grants the console permission \"watch\".",
        ));
    }
    let mut p = Params::new();
    p.insert("active".into(), "1".into());
    let filter = session_filter(&viewer, &p)?;
    let rows = console.store.sessions_page(&filter, 200).await?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            let mut c = row_cells(s);
            c[0] = format!(
                "<a href=\"/sessions/{0}/live\" class=\"watch\">{0}</a>",
                html::esc(&s.session_id)
            );
            c
        })
        .collect();
    let body = format!(
        "<h1>Live sessions</h1><p>Running sessions you may watch. This page does not refresh by itself.</p>{}",
        html::table(
            "live-sessions",
            &["Session", "Started", "User", "Target", "Login", "Source", "Commands", "Duration", "State"],
            &cells
        )
    );
    Ok(html::layout("Live sessions", Some(&viewer), &body).into_response())
}

/// The session `id` if `viewer` may see it; the same answer for an
/// unknown id and another user's session, so ids cannot be probed.
async fn visible(console: &Console, viewer: &Viewer, id: &str) -> Result<SessionRow, Fail> {
    let hidden = || Fail::not_found(format!("There is no session {id} that you may see."));
    if !recordings::valid_recording_id(id) {
        return Err(hidden());
    }
    let row = console.store.session_row(id).await?.ok_or_else(hidden)?;
    if !viewer.access.may_view(&row.user, Some(row.target.as_str())) {
        return Err(hidden());
    }
    Ok(row)
}

fn control<'a>(
    console: &'a Console,
    config: &'a gatehouse_model::Config,
    viewer: &Viewer,
) -> Control<'a> {
    Control::with_trail(
        &console.store,
        console.host.trail(),
        config,
        console.actor(viewer),
    )
}

/// Where recordings are: `recording.dir`, or the bucket of `recording.url`.
fn storage(config: &gatehouse_model::Config) -> Result<Box<dyn RecordingStorage>, Fail> {
    recordings::from_config(&config.recording).map_err(|e| {
        tracing::error!(error = %e, "cannot reach the recordings");
        Fail::page(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The recordings cannot be reached right now; tell your administrator.",
        )
    })
}

/// A marker in a recording: its time offset and label.
struct Marker {
    t: f64,
    label: String,
}

/// The markers of recording `rec`. A cast line is `[TIME,"CODE",DATA]`,
/// so only the few bytes after the first comma say whether it is a marker
/// (`"m"` cannot occur unescaped in the data); the rest is not looked at.
fn scan(storage: &dyn RecordingStorage, rec: &str) -> std::io::Result<Vec<Marker>> {
    let mut reader = BufReader::with_capacity(1 << 20, storage.open(rec)?);
    let mut markers = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let comma = line.iter().take(40).position(|b| *b == b',');
        if !comma.is_some_and(|c| line[c..].starts_with(b",\"m\",")) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        if let Some((t, code, label)) = gatehouse_record::asciicast::parse_event(text) {
            if code == "m" {
                markers.push(Marker { t, label });
            }
        }
    }
    Ok(markers)
}

/// The SHA-256 (hex) of recording `rec`.
fn digest(storage: &dyn RecordingStorage, rec: &str) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = storage.open(rec)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(gatehouse_model::hex(&hasher.finalize()))
}

#[derive(Deserialize, Default)]
struct ShowQuery {
    t: Option<String>,
    cmd: Option<String>,
    speed: Option<String>,
    idle: Option<String>,
    notice: Option<String>,
}

fn number(name: &str, v: Option<&String>, min: f64, max: f64) -> Result<Option<f64>, Fail> {
    match v.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(Some(n)),
            _ => Err(Fail::bad(format!(
                "{name}={s:?} must be a number from {min} to {max}"
            ))),
        },
    }
}

async fn show(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Page {
    let row = visible(&console, &viewer, &id).await?;
    let config = viewer.config.clone();
    let start = number("t", q.t.as_ref(), 0.0, 1e9)?;
    let cmd = number("cmd", q.cmd.as_ref(), 1.0, 1e9)?.map(|n| n as usize);
    let speed = number("speed", q.speed.as_ref(), 0.5, 8.0)?.unwrap_or(1.0);
    let idle = number("idle", q.idle.as_ref(), 0.0, 3600.0)?;
    let ops = control(&console, &config, &viewer);
    let rec = match ops.open_recording(&id, "view").await {
        Ok(rec) => Some(rec),
        Err(gatehouse_control::ControlError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let events = console
        .store
        .events_page(
            &gatehouse_store::EventFilter {
                session_id: Some(id.clone()),
                ..Default::default()
            },
            5000,
        )
        .await?;
    let events: Vec<gatehouse_model::event::Event> =
        events.into_iter().rev().map(|(_, e)| e).collect();
    // The digest is checked by /sessions/ID/integrity, which console.js
    // asks once the recording has loaded: the page does not wait for it.
    let (markers, verified) = match &rec {
        None => (Vec::new(), String::new()),
        Some(rec) => {
            let storage = storage(&config)?;
            let name = rec.clone();
            let scanned = tokio::task::spawn_blocking(move || scan(storage.as_ref(), &name))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match scanned {
                Ok(markers) => (markers, checking(&id)),
                Err(e) => (
                    Vec::new(),
                    html::badge("bad", &format!("recording unreadable: {e}")),
                ),
            }
        }
    };
    let (items, start_at) = command_list(&events, &markers, cmd, start);
    let player = match &rec {
        Some(_) => format!(
            "<div id=\"player\" data-cast=\"/sessions/{}/cast\" data-speed=\"{speed}\"{}{}></div><div class=\"controls\"><label>Speed <select id=\"speed\">{}</select></label> <label>Idle limit (s) <input id=\"idle\" type=\"number\" min=\"0\" step=\"0.5\" value=\"{}\"></label> <a href=\"/sessions/{}/cast?download=1\" id=\"download\">Download .cast</a></div>",
            html::esc(&id),
            start_at.map(|t| format!(" data-start=\"{t:.3}\"")).unwrap_or_default(),
            idle.map(|i| format!(" data-idle=\"{i}\"")).unwrap_or_default(),
            [0.5, 1.0, 2.0, 4.0, 8.0]
                .iter()
                .map(|s| format!("<option value=\"{s}\"{}>{s}×</option>", if (*s - speed).abs() < 1e-9 { " selected" } else { "" }))
                .collect::<String>(),
            idle.map(|i| i.to_string()).unwrap_or_default(),
            html::esc(&id),
        ),
        None => "<p class=\"empty\">This session has no terminal recording (no shell or command channel).</p>".into(),
    };
    let actions = if row.active {
        let mut a = String::new();
        if viewer.access.can(P::Watch) {
            a.push_str(&format!(
                "<a href=\"/sessions/{}/live\" id=\"watch\">Watch live</a> ",
                html::esc(&id)
            ));
        }
        if viewer.access.can(P::Kill) {
            a.push_str(&kill_form(&viewer, &id));
        }
        a
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Session {}</h1>{}<dl class=\"meta\"><dt>User</dt><dd>{}</dd><dt>Target</dt><dd>{}</dd><dt>Login</dt><dd>{}</dd><dt>Source</dt><dd>{}</dd><dt>Node</dt><dd>{}</dd><dt>MFA</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Ended</dt><dd>{}</dd><dt>Bytes in/out</dt><dd>{} / {}</dd><dt>Recording</dt>{verified}</dl>{actions}<div class=\"replay\"><div class=\"screen\">{player}</div><aside><h2>Commands</h2><ol id=\"commands\">{items}</ol></aside></div><h2>File transfers and forwards</h2>{}",
        html::esc(&id),
        html::notice(q.notice.as_deref()),
        html::esc(&row.user),
        html::esc(&row.target),
        html::esc(&row.login),
        html::esc(row.source_ip.as_deref().unwrap_or("")),
        html::esc(&row.node),
        if row.mfa { "yes" } else { "no" },
        html::time(&row.start_time),
        row.end_time.as_deref().map(html::time).unwrap_or_else(|| "running".into()),
        row.bytes_in.unwrap_or(0),
        row.bytes_out.unwrap_or(0),
        transfers(&events),
    );
    // The recording's download starts with the page, not after the
    // scripts: console.js's fetch (same-origin credentials, CORS mode)
    // takes this preload's response.
    let head = match &rec {
        Some(_) => format!(
            "<link rel=\"preload\" href=\"/sessions/{}/cast\" as=\"fetch\" crossorigin=\"anonymous\">",
            html::esc(&id)
        ),
        None => String::new(),
    };
    Ok(
        html::layout_with_head(&format!("Session {id}"), Some(&viewer), &head, &body)
            .into_response(),
    )
}

/// The session's file transfers and port forwards, as a table.
fn transfers(events: &[gatehouse_model::event::Event]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| &e.event)
        .filter(|e| {
            e.kind.starts_with("sftp.") || e.kind == "scp" || e.kind.starts_with("port_forward.")
        })
        .map(|e| {
            vec![
                html::time(&e.time),
                html::esc(&e.kind),
                html::esc(
                    e.details
                        .get("path")
                        .or_else(|| e.details.get("destination"))
                        .and_then(|v| v.as_str())
                        .unwrap_or(""),
                ),
                e.details
                    .get("bytes")
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                html::esc(e.result.as_str()),
            ]
        })
        .collect();
    html::table(
        "transfers",
        &["Time", "Event", "Path / destination", "Bytes", "Result"],
        &rows,
    )
}

/// The integrity line of a page whose recording is still being checked:
/// console.js fills it from [`integrity_json`].
fn checking(id: &str) -> String {
    format!(
        "<dd id=\"integrity\" data-integrity=\"/sessions/{}/integrity\" data-state=\"checking\">{}</dd>",
        html::esc(id),
        html::badge("", "checking the recording's SHA-256 against session.end…")
    )
}

/// What the recording's SHA-256 says: a state for scripts, a badge kind
/// and the sentence for the reviewer.
fn verdict(
    digest: &std::io::Result<String>,
    expected: Option<&str>,
    active: bool,
) -> (&'static str, &'static str, String) {
    match (digest, expected) {
        (Err(e), _) => ("unreadable", "bad", format!("recording unreadable: {e}")),
        (Ok(_), None) if active => ("in_progress", "warn", "recording in progress".into()),
        (Ok(_), None) => (
            "no_digest",
            "warn",
            "no digest recorded for this recording".into(),
        ),
        (Ok(d), Some(x)) if x == d => (
            "verified",
            "ok",
            format!("verified: SHA-256 {d} matches session.end"),
        ),
        (Ok(d), Some(x)) => (
            "tampered",
            "bad",
            format!("TAMPERED: SHA-256 {d} differs from {x} in session.end"),
        ),
    }
}

/// Whether recording `rec` (of session `id`) is the one `session.end`
/// recorded, as JSON: `{"state", "badge", "text", "sha256", "expected"}`.
/// Reading it is a `recording.access` event (`verify`), written before
/// the recording is read. A digest that matched is remembered with the
/// file's identity (size, times, inode), so the next view of an unchanged
/// file does not hash it again; any write to the file changes its ctime.
async fn integrity_json(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Page {
    let row = visible(&console, &viewer, &id).await.map_err(Fail::json)?;
    let config = viewer.config.clone();
    let rec = control(&console, &config, &viewer)
        .open_recording(&id, "verify")
        .await
        .map_err(|e| Fail::from(e).json())?;
    let ends = console
        .store
        .events_page(
            &gatehouse_store::EventFilter {
                session_id: Some(id.clone()),
                kind: Some(gatehouse_model::EventType::SESSION_END.to_string()),
                ..Default::default()
            },
            10,
        )
        .await
        .map_err(|e| Fail::from(e).json())?;
    let expected = ends
        .iter()
        .flat_map(|(_, e)| recordings::listed(&e.event.details))
        .find(|e| e.id == rec)
        .map(|e| e.sha256);
    let path = config.recording.dir.join(format!("{rec}.cast"));
    let digest = match console.remembered(&rec, &path, expected.as_deref()) {
        Some(d) => Ok(d),
        None => {
            let storage = storage(&config).map_err(Fail::json)?;
            let name = rec.clone();
            let before = file_identity(&path);
            let d = tokio::task::spawn_blocking(move || digest(storage.as_ref(), &name))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            if let (Ok(d), Some(x), Some(before)) = (&d, &expected, before) {
                if d == x && file_identity(&path) == Some(before) {
                    console.remember(&rec, before, d);
                }
            }
            d
        }
    };
    let (state, badge, text) = verdict(&digest, expected.as_deref(), row.active);
    Ok(axum::Json(serde_json::json!({
        "state": state,
        "badge": badge,
        "text": text,
        "sha256": digest.ok(),
        "expected": expected,
    }))
    .into_response())
}

/// Size, modification and change times, device and inode of a recording
/// file; `None` where there is no file (object storage).
pub(crate) type FileId = (u64, i64, i64, i64, i64, u64, u64);

fn file_identity(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.dev(),
        m.ino(),
    ))
}

impl Console {
    /// The digest remembered for recording `rec` if the file is unchanged
    /// since it matched `expected`.
    fn remembered(
        &self,
        rec: &str,
        path: &std::path::Path,
        expected: Option<&str>,
    ) -> Option<String> {
        let expected = expected?;
        let now = file_identity(path)?;
        let memo = self.verified.lock().ok()?;
        let (id, digest) = memo.get(rec)?;
        (id == &now && digest == expected).then(|| digest.clone())
    }

    fn remember(&self, rec: &str, id: FileId, digest: &str) {
        if let Ok(mut memo) = self.verified.lock() {
            if memo.len() >= 4096 {
                memo.clear();
            }
            memo.insert(rec.to_string(), (id, digest.to_string()));
        }
    }
}

/// The command list beside the player, and where the player starts
/// (`?cmd=N` wins over `?t=`). Each command is paired with the next
/// marker of the recording that carries its text; exec commands and
/// refused lines have none and are listed without a time.
fn command_list(
    events: &[gatehouse_model::event::Event],
    markers: &[Marker],
    cmd: Option<usize>,
    start: Option<f64>,
) -> (String, Option<f64>) {
    let commands = events.iter().filter(|e| {
        e.event.kind == gatehouse_model::EventType::COMMAND
            || e.event.kind == gatehouse_model::EventType::COMMAND_DENIED
    });
    let mut next_marker = 0;
    let mut items = String::new();
    let mut start_at = start;
    for (i, c) in commands.enumerate() {
        let text = c
            .event
            .details
            .get("command")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let t = markers[next_marker.min(markers.len())..]
            .iter()
            .position(|m| m.label == text)
            .map(|k| {
                next_marker += k + 1;
                markers[next_marker - 1].t
            });
        if cmd == Some(i + 1) {
            start_at = t.or(start_at);
        }
        let result = match c.event.result {
            gatehouse_model::Outcome::Success => html::badge("ok", "ran"),
            _ => html::badge("bad", c.event.result.as_str()),
        };
        items.push_str(&format!(
            "<li{}><a href=\"?cmd={n}\" data-index=\"{n}\" data-time=\"{}\">{}</a> {} {}</li>",
            if cmd == Some(i + 1) {
                " class=\"current\" aria-current=\"true\""
            } else {
                ""
            },
            t.map(|t| format!("{t:.3}")).unwrap_or_default(),
            html::esc(text),
            html::time(&c.event.time),
            result,
            n = i + 1,
        ));
    }
    (items, start_at)
}

fn kill_form(viewer: &Viewer, id: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/sessions/{0}/kill\" class=\"inline\" id=\"kill-form\" data-confirm=\"End session {0} now?\">{1}<input name=\"reason\" id=\"kill-reason\" placeholder=\"reason\" required> <button type=\"submit\" id=\"kill\" class=\"danger\">Kill</button></form>",
        html::esc(id),
        html::csrf(viewer)
    )
}

#[derive(Deserialize)]
struct CastQuery {
    download: Option<String>,
}

/// The asciicast file; reading it is a `recording.access` event.
async fn cast(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<CastQuery>,
) -> Page {
    visible(&console, &viewer, &id).await?;
    let config = viewer.config.clone();
    let download = q.download.is_some();
    let rec = control(&console, &config, &viewer)
        .open_recording(&id, if download { "download" } else { "play" })
        .await?;
    let path = config.recording.dir.join(format!("{rec}.cast"));
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        Fail::not_found(format!("The recording of session {id} cannot be read: {e}"))
    })?;
    let mut res = (
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
        ],
        bytes,
    )
        .into_response();
    if download {
        if let Ok(v) = format!("attachment; filename=\"{rec}.cast\"").parse() {
            res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(res)
}

async fn live(State(console): State<Arc<Console>>, viewer: Viewer, Path(id): Path<String>) -> Page {
    let row = visible(&console, &viewer, &id).await?;
    if !viewer.access.can(P::Watch) {
        return Err(Fail::forbidden(
            "No role of yours grants the console permission \"watch\".",
        ));
    }
    let kill = if row.active && viewer.access.can(P::Kill) {
        kill_form(&viewer, &id)
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Live: {} on {} as {}</h1><p><a href=\"/sessions/{3}\">Session {3}</a></p>{kill}<p id=\"live-status\">{4}</p><div id=\"player\" data-live=\"/sessions/{3}/live.ws\"></div>",
        html::esc(&row.user),
        html::esc(&row.target),
        html::esc(&row.login),
        html::esc(&id),
        if row.active { "following the session as it runs" } else { "this session has ended" },
    );
    Ok(html::layout(&format!("Live {id}"), Some(&viewer), &body).into_response())
}

async fn live_ws(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Page {
    visible(&console, &viewer, &id).await?;
    // A cross-site page cannot open this socket with the user's cookie.
    if viewer.token_id.is_none() {
        crate::signin::check_origin(&console, &headers)?;
    }
    let config = viewer.config.clone();
    let rec = control(&console, &config, &viewer)
        .open_recording(&id, "watch")
        .await?;
    let storage = storage(&config)?;
    let store = console.store.clone();
    Ok(ws
        .protocols(["v2.asciicast"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = follow(socket, storage, store, id, rec).await {
                tracing::debug!(error = %e, "live view ended");
            }
        })
        .into_response())
}

/// Sends the recording's header and events as they are written, until
/// the session ends (or the viewer leaves). The recording is read in a
/// blocking task (a file, or object storage that lists new chunks when it
/// reaches the end) and handed over line by line.
async fn follow(
    mut socket: WebSocket,
    storage: Box<dyn RecordingStorage>,
    store: gatehouse_store::Store,
    session: String,
    rec: String,
) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<String>>(256);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = stop.clone();
    tokio::task::spawn_blocking(move || tail(storage.as_ref(), &rec, &tx, &reading));
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut renew = tokio::time::interval(gatehouse_store::wake::WATCH_RENEW);
    let mut ending = false;
    let result = loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(Some(line)) => {
                    if let Err(e) = socket.send(Message::Text(line.into())).await {
                        break Err(e.to_string());
                    }
                }
                // The recording does not exist (yet, after 5 s).
                Some(None) | None => {
                    let _ = socket.send(ended()).await;
                    break Ok(());
                }
            },
            _ = check.tick() => {
                if ending {
                    // Half a second after the end: what was written is sent.
                    let _ = socket.send(ended()).await;
                    break Ok(());
                }
                ending = !store.session_running(&session).await.unwrap_or(false);
            }
            // The node recording the session publishes its output at
            // every flush while someone follows it.
            _ = renew.tick() => {
                if let Err(e) = store.announce_watch(&session).await {
                    tracing::debug!(error = %e, "cannot announce a live viewer");
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break Ok(()),
                _ => {}
            }
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    result
}

/// Reads recording `rec` line by line into `tx`, waiting at its end for
/// more, until `stop`. Sends `None` when it cannot be opened.
fn tail(
    storage: &dyn RecordingStorage,
    rec: &str,
    tx: &tokio::sync::mpsc::Sender<Option<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let mut file = None;
    for _ in 0..50 {
        match storage.open(rec) {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let Some(file) = file else {
        let _ = tx.blocking_send(None);
        return;
    };
    let mut reader = BufReader::new(file);
    let mut partial = String::new();
    while !stop.load(Ordering::Acquire) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => {
                partial.push_str(&line);
                if partial.ends_with('\n') {
                    let whole = std::mem::take(&mut partial);
                    if tx
                        .blocking_send(Some(whole.trim_end().to_string()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "live view: the recording cannot be read");
                return;
            }
        }
    }
}

/// Close code 1000: the player shows "session ended" and does not
/// reconnect.
fn ended() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "session ended".into(),
    }))
}

#[derive(Deserialize)]
struct KillForm {
    csrf: String,
    reason: String,
}

async fn kill(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<KillForm>,
) -> Result<Response, Fail> {
    viewer.check_post(&console, &headers, &f.csrf)?;
    visible(&console, &viewer, &id).await?;
    let reason = f.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(Fail::bad(
            "Give a reason for ending the session (up to 500 characters).",
        ));
    }
    let config = viewer.config.clone();
    control(&console, &config, &viewer)
        .kill_session(&id, reason)
        .await?;
    Ok(Redirect::to(&format!(
        "/sessions/{}?notice={}",
        html::url(&id),
        html::url("Kill requested; the node running the session ends it within a second.")
    ))
    .into_response())
}
