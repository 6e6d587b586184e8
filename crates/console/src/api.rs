//! `/api/v1`: the console's operations as JSON, for scripts. A request
//! carries `Authorization: Bearer TOKEN` (`gatehouse tokens create`),
//! acts with exactly the token owner's console permissions, and its use
//! is audited (`token.used`, and `token_id` in the events it causes). A
//! browser session may call it too; its POSTs then need the
//! `X-CSRF-Token` header.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::Json;
use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gatehouse_model::ConsolePermission as P;
use gatehouse_store::SessionRow;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actions::ops;
use crate::signin::{Params, Viewer};
use crate::{Console, Fail};

type Api = Result<Response, Fail>;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/sessions", get(sessions))
        .route("/sessions/{id}", get(session))
        .route("/sessions/{id}/kill", post(kill))
        .route("/events", get(events))
        .route("/sql", post(sql))
        .route("/approvals", get(approvals))
        .route("/approvals/{id}", post(decide))
        .route("/users/{name}/{action}", post(user_action))
        .route("/runbooks", get(runbooks))
        .route("/runbooks/{name}", post(run_runbook))
        .fallback(|| async {
            Fail::not_found("There is no such API endpoint; see docs/console.md.").json()
        })
}

fn j(f: Fail) -> Fail {
    f.json()
}

fn ok(v: Value) -> Api {
    Ok(axum::Json(v).into_response())
}

fn need(viewer: &Viewer, p: P) -> Result<(), Fail> {
    if viewer.access.can(p) {
        Ok(())
    } else {
        Err(Fail::forbidden(format!(
            "No role of yours grants the console permission {:?}.",
            p.as_str()
        ))
        .json())
    }
}

/// A browser's POST must carry its anti-CSRF token in a header.
fn post_allowed(console: &Console, viewer: &Viewer, headers: &HeaderMap) -> Result<(), Fail> {
    let token = headers
        .get("x-csrf-token")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    viewer.check_post(console, headers, token).map_err(j)
}

pub(crate) fn session_json(s: &SessionRow) -> Value {
    json!({
        "session_id": s.session_id, "user": s.user, "source_ip": s.source_ip, "node": s.node,
        "target": s.target, "login": s.login, "mfa": s.mfa, "start_time": s.start_time,
        "end_time": s.end_time, "duration_ms": s.duration_ms, "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out, "exit_status": s.exit_status, "recording_id": s.recording_id,
        "recording_sha256": s.recording_sha256, "active": s.active, "commands": s.commands,
    })
}

async fn whoami(viewer: Viewer) -> Api {
    let perms: Vec<&str> = viewer.access.granted.keys().map(|p| p.as_str()).collect();
    ok(json!({
        "user": viewer.user, "permissions": perms, "targets": viewer.access.target_names(),
        "token_id": viewer.token_id,
    }))
}

async fn sessions(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Api {
    let filter = crate::sessions::session_filter(&viewer, &p).map_err(j)?;
    let limit = match p.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| Fail::bad("limit must be a number from 1 to 1000").json())?,
    };
    let rows = console
        .store
        .sessions_page(&filter, limit)
        .await
        .map_err(|e| j(e.into()))?;
    let next = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|l| format!("{}~{}", l.start_time, l.session_id))
        })
        .flatten();
    ok(json!({"sessions": rows.iter().map(session_json).collect::<Vec<_>>(), "next_before": next}))
}

async fn session(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Api {
    let hidden = || Fail::not_found(format!("There is no session {id} that you may see.")).json();
    let row = console
        .store
        .session_row(&id)
        .await
        .map_err(|e| j(e.into()))?
        .ok_or_else(hidden)?;
    if !viewer.access.may_view(&row.user, Some(row.target.as_str())) {
        return Err(hidden());
    }
    crate::audit::audited(&console, &viewer, "session", json!({"session_id": id}))
        .await
        .map_err(j)?;
    let events = console
        .store
        .events_page(
            &gatehouse_store::EventFilter {
                session_id: Some(id.clone()),
                ..Default::default()
            },
            5000,
        )
        .await
        .map_err(|e| j(e.into()))?;
    let events: Vec<Value> = events
        .iter()
        .rev()
        .map(|(_, e)| serde_json::to_value(&e.event).unwrap_or_default())
        .collect();
    ok(json!({"session": session_json(&row), "events": events}))
}

#[derive(Deserialize)]
struct Reason {
    reason: String,
}

async fn kill(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(r): Json<Reason>,
) -> Api {
    post_allowed(&console, &viewer, &headers)?;
    let config = viewer.config.clone();
    ops(&console, &config, &viewer)
        .kill_session(&id, r.reason.trim())
        .await
        .map_err(|e| j(e.into()))?;
    ok(json!({"kill_requested": id}))
}

async fn events(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(p): Query<Params>,
) -> Api {
    need(&viewer, P::Audit)?;
    let filter = crate::audit::event_filter(&p).map_err(j)?;
    let rows = console
        .store
        .events_page(&filter, 1000)
        .await
        .map_err(|e| j(e.into()))?;
    crate::audit::audited(
        &console,
        &viewer,
        "audit_log",
        json!({"filter": p, "rows": rows.len()}),
    )
    .await
    .map_err(j)?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(seq, e)| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("seq".into(), (*seq).into());
            }
            v
        })
        .collect();
    ok(json!({"events": out}))
}

#[derive(Deserialize)]
struct Sql {
    q: String,
}

async fn sql(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    headers: HeaderMap,
    Json(s): Json<Sql>,
) -> Api {
    post_allowed(&console, &viewer, &headers)?;
    need(&viewer, P::Audit)?;
    crate::audit::audited(&console, &viewer, "sql", json!({"sql": s.q}))
        .await
        .map_err(j)?;
    let r = console
        .store
        .query_readonly(&s.q)
        .await
        .map_err(|e| Fail::bad(e.to_string()).json())?;
    ok(json!({"columns": r.columns, "rows": r.rows}))
}

async fn approvals(State(console): State<Arc<Console>>, viewer: Viewer) -> Api {
    need(&viewer, P::Approvals)?;
    let config = viewer.config.clone();
    let list = ops(&console, &config, &viewer)
        .decidable_requests()
        .await
        .map_err(|e| j(e.into()))?;
    let out: Vec<Value> = list
        .iter()
        .map(|a| json!({"id": a.id, "user": a.user, "target": a.target, "login": a.login, "requested_at": a.requested_at, "approvers": a.approvers}))
        .collect();
    ok(json!({"approvals": out}))
}

#[derive(Deserialize)]
struct Decision {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(d): Json<Decision>,
) -> Api {
    post_allowed(&console, &viewer, &headers)?;
    need(&viewer, P::Approvals)?;
    let grant = match d.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(Fail::bad(format!("decision {other:?}: write approve or deny")).json())
        }
    };
    let config = viewer.config.clone();
    let done = ops(&console, &config, &viewer)
        .decide_approval(&id, grant, d.reason)
        .await
        .map_err(|e| j(e.into()))?;
    ok(json!({"id": id, "granted": done.granted, "until": done.until}))
}

#[derive(Deserialize, Default)]
struct UserBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn user_action(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Api {
    post_allowed(&console, &viewer, &headers)?;
    let config = viewer.config.clone();
    let ops = ops(&console, &config, &viewer);
    let reason = if body.is_empty() {
        String::new()
    } else {
        serde_json::from_slice::<UserBody>(&body)
            .map_err(|e| Fail::bad(format!("The JSON body is malformed ({e}).")).json())?
            .reason
            .unwrap_or_default()
    };
    let v = match action.as_str() {
        "lock" => {
            if reason.trim().is_empty() {
                return Err(Fail::bad("give a reason for the lock").json());
            }
            let l = ops
                .lock_user(&name, reason.trim(), None)
                .await
                .map_err(|e| j(e.into()))?;
            let _ = console.store.end_console_sessions_of(&name).await;
            json!({"locked": name, "ending_sessions": l.ending})
        }
        "unlock" => json!({"unlocked": ops.unlock_user(&name).await.map_err(|e| j(e.into()))?}),
        "totp-reset" => json!({"reset": ops.reset_totp(&name).await.map_err(|e| j(e.into()))?}),
        other => {
            return Err(Fail::bad(format!("{other:?}: write lock, unlock or totp-reset")).json())
        }
    };
    ok(v)
}

async fn runbooks(viewer: Viewer) -> Api {
    need(&viewer, P::Runbooks)?;
    let config = viewer.config.clone();
    let books = gatehouse_audit::runbook::load_all(Some(&config.runbooks.dir)).map_err(|_| {
        Fail::bad(
            "the runbooks directory has errors; run `gatehouse runbook list` on the gateway host",
        )
        .json()
    })?;
    let out: Vec<Value> = books
        .iter()
        .map(|b| json!({"name": b.name, "description": b.description, "params": b.params.keys().collect::<Vec<_>>()}))
        .collect();
    ok(json!({"runbooks": out}))
}

#[derive(Deserialize)]
struct RunBody {
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    apply: bool,
}

async fn run_runbook(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(r): Json<RunBody>,
) -> Api {
    post_allowed(&console, &viewer, &headers)?;
    need(&viewer, P::Runbooks)?;
    let config = viewer.config.clone();
    let book = gatehouse_audit::runbook::load_all(Some(&config.runbooks.dir))
        .ok()
        .and_then(|b| b.into_iter().find(|b| b.name == name))
        .ok_or_else(|| Fail::not_found(format!("no runbook {name:?}")).json())?;
    let ops = ops(&console, &config, &viewer);
    let plan = ops
        .plan_runbook(book, r.params)
        .await
        .map_err(|e| j(e.into()))?;
    let outcomes = ops
        .run_runbook(&plan, r.apply)
        .await
        .map_err(|e| j(e.into()))?;
    ok(json!({
        "columns": plan.rows.columns, "rows": plan.rows.rows,
        "actions": plan.actions.iter().map(|(k, s)| json!({"kind": format!("{k:?}"), "subject": s})).collect::<Vec<_>>(),
        "applied": r.apply,
        "outcomes": outcomes.iter().map(|o| json!({"kind": format!("{:?}", o.kind), "subject": o.subject, "error": o.error})).collect::<Vec<_>>(),
    }))
}
