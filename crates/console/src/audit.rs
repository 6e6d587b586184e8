//! The audit log (filters, NDJSON/CSV export, the chain's state) and
//! read-only SQL. Showing rows is an `audit.read` event, written first.

use std::sync::Arc;

use crate::extract::Query;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use gatehouse_model::event::Event;
use gatehouse_model::ConsolePermission as P;
use gatehouse_model::{EventType, NewEvent, Outcome, Severity};
use gatehouse_store::{EventFilter, QueryResult};

use crate::sessions::{text_param, time_param, PAGE};
use crate::signin::{Params, Viewer};
use crate::{html, Console, Fail, Page};

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/audit", get(log))
        .route("/audit/export", get(export))
        .route("/audit/verify", get(verify))
        .route("/sql", get(sql))
}

fn allowed(viewer: &Viewer) -> Result<(), Fail> {
    if viewer.access.can(P::Audit) {
        Ok(())
    } else {
        Err(Fail::forbidden(
            "No role of yours grants the console permission \"audit\".",
        ))
    }
}

/// Writes the `audit.read` event describing what `viewer` is shown.
pub(crate) async fn audited(
    console: &Console,
    viewer: &Viewer,
    what: &str,
    details: serde_json::Value,
) -> Result<(), Fail> {
    let config = viewer.config.clone();
    let mut d = match details {
        serde_json::Value::Object(m) => m,
        _ => Default::default(),
    };
    d.insert("read".into(), what.into());
    d.insert("by".into(), viewer.user.clone().into());
    d.insert(
        "channel".into(),
        if viewer.token_id.is_some() {
            "api"
        } else {
            "web"
        }
        .into(),
    );
    if let Some(t) = &viewer.token_id {
        d.insert("token_id".into(), t.clone().into());
    }
    let ev = NewEvent::new(
        EventType::AUDIT_READ,
        Severity::Info,
        Outcome::Success,
        &config.server.node,
    )
    .user(viewer.user.clone())
    .source_ip(viewer.source_ip.clone())
    .details(serde_json::Value::Object(d));
    console.host.trail().write(ev).await.map_err(|e| {
        tracing::error!(error = %e, "cannot audit a read of the audit trail");
        Fail::page(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The audit trail cannot be written, so it is not shown either; try again shortly.",
        )
    })
}

pub(crate) fn event_filter(p: &Params) -> Result<EventFilter, Fail> {
    let severity = match p.get("severity").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(
            serde_json::from_value::<Severity>(serde_json::Value::String(s.to_string())).map_err(
                |_| {
                    Fail::bad(format!(
                        "severity={s:?}: write info, warn, high or critical"
                    ))
                },
            )?,
        ),
    };
    let result = match p.get("result").map(String::as_str) {
        None | Some("") => None,
        Some(r @ ("success" | "denied" | "failure" | "error")) => {
            serde_json::from_value::<Outcome>(serde_json::Value::String(r.to_string())).ok()
        }
        Some(r) => {
            return Err(Fail::bad(format!(
                "result={r:?}: write success, denied, failure or error"
            )))
        }
    };
    let before_seq = match p.get("before").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            Fail::bad(
                "before= is not a page cursor of this console; start again from the first page",
            )
        })?),
    };
    Ok(EventFilter {
        kind: text_param(p, "type")?,
        user: text_param(p, "user")?,
        target: text_param(p, "target")?,
        result,
        severity,
        since: time_param("since", p.get("since"))?,
        until: time_param("until", p.get("until"))?,
        text: text_param(p, "text")?,
        session_id: text_param(p, "session")?,
        before_seq,
    })
}

fn cells(e: &Event) -> Vec<String> {
    let ev = &e.event;
    let sev = match ev.severity {
        Severity::Info => html::badge("", "info"),
        Severity::Warn => html::badge("warn", "warn"),
        _ => html::badge("bad", ev.severity.as_str()),
    };
    let session = ev
        .session_id
        .as_deref()
        .map(|s| format!("<a href=\"/sessions/{0}\">{0}</a>", html::esc(s)))
        .unwrap_or_default();
    vec![
        html::time(&ev.time),
        html::esc(&ev.kind),
        sev,
        html::esc(ev.user.as_deref().unwrap_or("")),
        html::esc(ev.source_ip.as_deref().unwrap_or("")),
        html::esc(ev.target.as_deref().unwrap_or("")),
        session,
        html::esc(ev.result.as_str()),
        html::esc(ev.reason.as_deref().unwrap_or("")),
        details_cell(&ev.details),
    ]
}

/// `key=value` pairs, shortened; the whole JSON in the tooltip.
fn details_cell(details: &serde_json::Value) -> String {
    let short = match details.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={}", truncate(s, 40)),
                other => format!("{k}={}", truncate(&other.to_string(), 40)),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    format!(
        "<code class=\"details\" title=\"{}\">{}</code>",
        html::esc(&details.to_string()),
        html::esc(&truncate(&short, 160))
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn query_string(p: &Params, skip: &[&str]) -> String {
    p.iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| format!("{}={}", html::url(k), html::url(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn log(State(console): State<Arc<Console>>, viewer: Viewer, Query(p): Query<Params>) -> Page {
    allowed(&viewer)?;
    let filter = event_filter(&p)?;
    let mut rows = console.store.events_page(&filter, PAGE + 1).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    audited(
        &console,
        &viewer,
        "audit_log",
        serde_json::json!({"filter": p, "rows": rows.len()}),
    )
    .await?;
    let qs = query_string(&p, &["before"]);
    let older = match (more, rows.last()) {
        (true, Some(last)) => format!(
            "<a id=\"older\" href=\"/audit?{qs}{}before={}\">Older events →</a>",
            if qs.is_empty() { "" } else { "&" },
            last.0
        ),
        _ => String::new(),
    };
    let checkpoint = match console.store.last_checkpoint().await? {
        Some((seq, time)) => format!(
            "last signed checkpoint at event {seq}, {}",
            html::time(&time)
        ),
        None => "no signed checkpoint yet".into(),
    };
    let g = |k: &str| p.get(k).map(String::as_str);
    let option = |name: &str, values: &[&str]| {
        let cur = g(name).unwrap_or("");
        let mut s = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for v in values {
            s.push_str(&format!(
                "<option{}>{v}</option>",
                if cur == *v { " selected" } else { "" }
            ));
        }
        s.push_str("</select>");
        s
    };
    let table = html::table(
        "events",
        &[
            "Time", "Type", "Severity", "User", "Source", "Target", "Session", "Result", "Reason",
            "Details",
        ],
        &rows.iter().map(|(_, e)| cells(e)).collect::<Vec<_>>(),
    );
    let body = format!(
        "<h1>Audit log</h1><p class=\"chain\" id=\"chain\">Hash chain: {checkpoint}. <a href=\"/audit/verify\" id=\"verify\">Verify the whole chain now</a></p><form method=\"get\" action=\"/audit\" class=\"filters\" id=\"filters\">{}{}{}<label>Result {}</label><label>Severity ≥ {}</label>{}{}{}<button type=\"submit\">Filter</button> <a href=\"/audit\">Clear</a></form><p class=\"export\">Export these filters: <a id=\"export-ndjson\" href=\"/audit/export?{qs}{amp}format=ndjson\">NDJSON</a> · <a id=\"export-csv\" href=\"/audit/export?{qs}{amp}format=csv\">CSV</a></p>{table}<p class=\"pager\">{older}</p>",
        html::input("type", "Type (e.g. command, sftp.*)", g("type")),
        html::input("user", "User", g("user")),
        html::input("target", "Target", g("target")),
        option("result", &["success", "denied", "failure", "error"]),
        option("severity", &["info", "warn", "high", "critical"]),
        html::input("since", "Since", g("since")),
        html::input("until", "Until", g("until")),
        html::input("text", "Text in reason/details", g("text")),
        amp = if qs.is_empty() { "" } else { "&" },
    );
    Ok(html::layout("Audit log", Some(&viewer), &body).into_response())
}

/// The most rows one export returns.
const EXPORT_MAX: i64 = 100_000;

const COLUMNS: [&str; 17] = [
    "seq",
    "id",
    "time",
    "type",
    "severity",
    "user",
    "source_ip",
    "node",
    "session_id",
    "target",
    "login",
    "mfa",
    "result",
    "reason",
    "details",
    "prev_hash",
    "hash",
];

fn csv_cell(s: &str) -> String {
    // A leading = + - @ would be a formula to a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

async fn export(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Page {
    allowed(&viewer)?;
    let format = p.get("format").map(String::as_str).unwrap_or("ndjson");
    if format != "ndjson" && format != "csv" {
        return Err(Fail::bad(format!("format={format:?}: write ndjson or csv")));
    }
    let filter = event_filter(&p)?;
    let rows = console.store.events_page(&filter, EXPORT_MAX).await?;
    audited(
        &console,
        &viewer,
        "audit_export",
        serde_json::json!({"filter": p, "rows": rows.len(), "format": format}),
    )
    .await?;
    let (body, mime, ext) = if format == "ndjson" {
        let mut out = String::new();
        for (seq, e) in &rows {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("seq".into(), (*seq).into());
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        (out, "application/x-ndjson", "ndjson")
    } else {
        let mut out = COLUMNS.join(",");
        out.push('\n');
        for (seq, e) in &rows {
            let ev = &e.event;
            let vals = [
                seq.to_string(),
                ev.id.clone(),
                ev.time.clone(),
                ev.kind.clone(),
                ev.severity.as_str().to_string(),
                ev.user.clone().unwrap_or_default(),
                ev.source_ip.clone().unwrap_or_default(),
                ev.node.clone(),
                ev.session_id.clone().unwrap_or_default(),
                ev.target.clone().unwrap_or_default(),
                ev.login.clone().unwrap_or_default(),
                ev.mfa.to_string(),
                ev.result.as_str().to_string(),
                ev.reason.clone().unwrap_or_default(),
                ev.details.to_string(),
                e.prev_hash.clone(),
                e.hash.clone(),
            ];
            out.push_str(
                &vals
                    .iter()
                    .map(|v| csv_cell(v))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        }
        (out, "text/csv; charset=utf-8", "csv")
    };
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"gatehouse-audit.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

async fn verify(State(console): State<Arc<Console>>, viewer: Viewer) -> Page {
    allowed(&viewer)?;
    audited(&console, &viewer, "audit_verify", serde_json::json!({})).await?;
    let report = console.store.verify_chain().await?;
    let checkpoint = console.store.last_checkpoint().await?;
    let state = match &report.first_bad {
        None => html::badge(
            "ok",
            &format!("chain intact: {} events checked", report.events_checked),
        ),
        Some(b) => html::badge(
            "bad",
            &format!("chain BROKEN at event {} ({}): {}", b.seq, b.id, b.problem),
        ),
    };
    let cp = match checkpoint {
        Some((seq, time)) => format!(
            "The last signed checkpoint covers events up to {seq}, made {}.",
            html::time(&time)
        ),
        None => "No signed checkpoint has been made yet.".into(),
    };
    let body = format!(
        "<h1>Audit chain</h1><p id=\"verify-result\">{state}</p><p>{cp}</p><p>Recording digests and the checkpoints' signatures are checked by <code>gatehouse audit verify --recordings</code> on the gateway host.</p><p><a href=\"/audit\">Back to the audit log</a></p>"
    );
    Ok(html::layout("Audit chain", Some(&viewer), &body).into_response())
}

/// Query results as a table: a `session_id` column links to the
/// session, a time column (`time`, `*_time`, `last_seen`, …) holding an
/// RFC 3339 time is shown in the reader's local time.
pub(crate) fn result_table(r: &QueryResult) -> String {
    let is_time_column =
        |c: &str| c == "time" || c.ends_with("_time") || c.ends_with("_at") || c == "last_seen";
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(
                    r.columns
                        .iter()
                        .map(String::as_str)
                        .chain(std::iter::repeat("")),
                )
                .map(|(v, column)| match v {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s)
                        if column == "session_id"
                            && gatehouse_store::recordings::valid_recording_id(s) =>
                    {
                        format!("<a href=\"/sessions/{0}\">{0}</a>", html::esc(s))
                    }
                    serde_json::Value::String(s)
                        if is_time_column(column)
                            && chrono::DateTime::parse_from_rfc3339(s).is_ok() =>
                    {
                        html::time(s)
                    }
                    serde_json::Value::String(s) => html::esc(&truncate(s, 500)),
                    other => html::esc(&truncate(&other.to_string(), 500)),
                })
                .collect()
        })
        .collect();
    let head: Vec<&str> = r.columns.iter().map(String::as_str).collect();
    html::table("results", &head, &rows)
}

async fn sql(State(console): State<Arc<Console>>, viewer: Viewer, Query(p): Query<Params>) -> Page {
    allowed(&viewer)?;
    let q = p.get("q").map(|s| s.trim()).unwrap_or("");
    let csv = p.get("format").map(String::as_str) == Some("csv");
    if q.len() > 20_000 {
        return Err(Fail::bad("The query is longer than 20,000 characters."));
    }
    let result = if q.is_empty() {
        None
    } else {
        audited(&console, &viewer, "sql", serde_json::json!({"sql": q})).await?;
        Some(console.store.query_readonly(q).await)
    };
    if csv {
        return match result {
            Some(Ok(r)) => Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"gatehouse-query.csv\"",
                    ),
                ],
                r.to_csv(),
            )
                .into_response()),
            Some(Err(e)) => Err(Fail::bad(e.to_string())),
            None => Err(Fail::bad("Write a query first.")),
        };
    }
    let out = match result {
        None => String::new(),
        Some(Ok(r)) => format!(
            "<p><a id=\"sql-csv\" href=\"/sql?format=csv&q={}\">Download CSV</a> · {} rows</p>{}",
            html::url(q),
            r.rows.len(),
            result_table(&r)
        ),
        Some(Err(e)) => format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            html::esc(&e.to_string())
        ),
    };
    let body = format!(
        "<h1>SQL</h1><p>Read-only queries over the views <code>events</code>, <code>sessions</code> and <code>commands</code> (the same rules as <code>gatehouse audit query</code>).</p><form method=\"get\" action=\"/sql\" id=\"sql-form\"><textarea name=\"q\" id=\"q\" rows=\"6\" cols=\"100\" spellcheck=\"false\">{}</textarea><br><button type=\"submit\" id=\"run\">Run</button></form>{out}",
        html::esc(q)
    );
    Ok(html::layout("SQL", Some(&viewer), &body).into_response())
}
