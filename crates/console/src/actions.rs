//! Pages that act: approvals, users, runbooks. Each action is one call
//! into the control layer as the signed-in user, which checks the
//! permission, writes the event, then acts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::{Form, Path, Query};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use gatehouse_audit::Runbook;
use gatehouse_control::Control;
use gatehouse_model::{Config, ConsolePermission as P};
use serde::Deserialize;

use crate::signin::{Params, Viewer};
use crate::{html, Console, Fail, Page};

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/approvals", get(approvals))
        .route("/approvals/{id}", post(decide))
        .route("/users", get(users))
        .route("/users/{name}", post(user_action))
        .route("/runbooks", get(runbooks))
        .route("/runbooks/{name}", get(runbook).post(apply))
}

fn need(viewer: &Viewer, p: P) -> Result<(), Fail> {
    if viewer.access.can(p) {
        Ok(())
    } else {
        Err(Fail::forbidden(format!(
            "No role of yours grants the console permission {:?}.",
            p.as_str()
        )))
    }
}

pub(crate) fn ops<'a>(console: &'a Console, config: &'a Config, viewer: &Viewer) -> Control<'a> {
    Control::with_trail(
        &console.store,
        console.host.trail(),
        config,
        console.actor(viewer),
    )
}

fn back(path: &str, notice: &str) -> Response {
    Redirect::to(&format!("{path}?notice={}", html::url(notice))).into_response()
}

#[derive(Deserialize, Default)]
struct Notice {
    notice: Option<String>,
}

async fn approvals(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(n): Query<Notice>,
) -> Page {
    need(&viewer, P::Approvals)?;
    let config = viewer.config.clone();
    let pending = ops(&console, &config, &viewer).decidable_requests().await?;
    let rows: Vec<Vec<String>> = pending
        .iter()
        .map(|a| {
            vec![
                html::esc(&a.id),
                html::esc(&a.user),
                format!("{}@{}", html::esc(&a.login), html::esc(&a.target)),
                html::esc(a.reason.as_deref().unwrap_or("")),
                html::time(&a.requested_at),
                format!(
                    "<form method=\"post\" action=\"/approvals/{0}\" class=\"inline decide\">{1}<input name=\"reason\" placeholder=\"reason\" class=\"reason\"> <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button> <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"danger deny\">Deny</button></form>",
                    html::esc(&a.id),
                    html::csrf(&viewer)
                ),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Approvals</h1>{}<p>Pending requests you may decide (never your own). The waiting session continues as soon as you approve.</p>{}",
        html::notice(n.notice.as_deref()),
        html::table(
            "approvals",
            &["Request", "Who", "For", "Why", "Asked", "Decide"],
            &rows
        )
    );
    Ok(html::layout("Approvals", Some(&viewer), &body).into_response())
}

#[derive(Deserialize)]
struct Decision {
    csrf: String,
    decision: String,
    #[serde(default)]
    reason: String,
}

async fn decide(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(d): Form<Decision>,
) -> Page {
    viewer.check_post(&console, &headers, &d.csrf)?;
    need(&viewer, P::Approvals)?;
    let grant = match d.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(Fail::bad(format!(
                "decision={other:?}: write approve or deny"
            )))
        }
    };
    let reason = Some(d.reason.trim().to_string()).filter(|r| !r.is_empty());
    let config = viewer.config.clone();
    let done = ops(&console, &config, &viewer)
        .decide_approval(&id, grant, reason)
        .await?;
    Ok(back("/approvals", &done.summary()))
}

async fn users(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(n): Query<Notice>,
) -> Page {
    need(&viewer, P::Users)?;
    let config = viewer.config.clone();
    let mut rows = Vec::new();
    for u in &config.users {
        let lock = console.store.user_lock(&u.name).await?;
        let totp = console.store.totp(&u.name).await?.is_some();
        let mfa_required = u
            .roles
            .iter()
            .filter_map(|r| config.role(r))
            .any(|r| r.require_mfa);
        let state = match &lock {
            Some(l) => html::badge(
                "bad",
                &format!(
                    "locked: {}{}",
                    l.reason,
                    l.until
                        .as_deref()
                        .map(|t| format!(" until {t}"))
                        .unwrap_or_default()
                ),
            ),
            None => html::badge("ok", "active"),
        };
        let mfa = match (totp, mfa_required) {
            (true, _) => html::badge("ok", "TOTP enrolled"),
            (false, true) => html::badge("bad", "required, not enrolled"),
            (false, false) => html::badge("", "none"),
        };
        let own = u.name == viewer.user;
        let lock_form = if own {
            "<span class=\"muted\">(you)</span>".to_string()
        } else if lock.is_some() {
            format!(
                "<form method=\"post\" action=\"/users/{0}\" class=\"inline\">{1}<button type=\"submit\" name=\"action\" value=\"unlock\" class=\"unlock\">Unlock</button></form>",
                html::esc(&u.name),
                html::csrf(&viewer)
            )
        } else {
            format!(
                "<form method=\"post\" action=\"/users/{0}\" class=\"inline\" data-confirm=\"Lock {0} and end their sessions?\">{1}<input name=\"reason\" placeholder=\"reason\" required> <button type=\"submit\" name=\"action\" value=\"lock\" class=\"danger lock\">Lock</button></form>",
                html::esc(&u.name),
                html::csrf(&viewer)
            )
        };
        let reset = if totp && !own {
            format!(
                " <form method=\"post\" action=\"/users/{0}\" class=\"inline\" data-confirm=\"Remove {0}'s authenticator?\">{1}<button type=\"submit\" name=\"action\" value=\"totp-reset\" class=\"danger\">Reset TOTP</button></form>",
                html::esc(&u.name),
                html::csrf(&viewer)
            )
        } else {
            String::new()
        };
        rows.push(vec![
            html::esc(&u.name),
            html::esc(&u.roles.join(", ")),
            mfa,
            state,
            format!("{lock_form}{reset}"),
        ]);
    }
    let body = format!(
        "<h1>Users</h1>{}{}",
        html::notice(n.notice.as_deref()),
        html::table(
            "users",
            &["User", "Roles", "MFA", "State", "Actions"],
            &rows
        )
    );
    Ok(html::layout("Users", Some(&viewer), &body).into_response())
}

#[derive(Deserialize)]
struct UserAction {
    csrf: String,
    action: String,
    #[serde(default)]
    reason: String,
}

async fn user_action(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(a): Form<UserAction>,
) -> Page {
    viewer.check_post(&console, &headers, &a.csrf)?;
    need(&viewer, P::Users)?;
    let config = viewer.config.clone();
    let ops = ops(&console, &config, &viewer);
    let notice = match a.action.as_str() {
        "lock" => {
            let reason = a.reason.trim();
            if reason.is_empty() {
                return Err(Fail::bad("Give a reason for the lock."));
            }
            let l = ops.lock_user(&name, reason, None).await?;
            let _ = console.store.end_console_sessions_of(&name).await;
            format!(
                "{name} locked; {} running session(s) asked to end",
                l.ending.len()
            )
        }
        "unlock" => match ops.unlock_user(&name).await? {
            true => format!("{name} unlocked"),
            false => format!("{name} was not locked"),
        },
        "totp-reset" => match ops.reset_totp(&name).await? {
            true => format!("{name}'s authenticator removed; enrol a new one with `gatehouse users totp-enroll {name}`"),
            false => format!("{name} had no authenticator"),
        },
        other => {
            return Err(Fail::bad(format!(
                "action={other:?}: write lock, unlock or totp-reset"
            )))
        }
    };
    Ok(back("/users", &notice))
}

fn load(config: &Config) -> Result<Vec<Runbook>, Fail> {
    gatehouse_audit::runbook::load_all(Some(&config.runbooks.dir)).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Fail::page(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("The runbooks directory has errors: {}", lines.join("; ")),
        )
    })
}

fn find(config: &Config, name: &str) -> Result<Runbook, Fail> {
    load(config)?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| Fail::not_found(format!("There is no runbook {name:?}.")))
}

async fn runbooks(viewer: Viewer) -> Page {
    need(&viewer, P::Runbooks)?;
    let config = viewer.config.clone();
    let rows: Vec<Vec<String>> = load(&config)?
        .iter()
        .map(|b| {
            vec![
                format!("<a href=\"/runbooks/{0}\">{0}</a>", html::esc(&b.name)),
                html::esc(&b.description),
                html::esc(&b.source),
            ]
        })
        .collect();
    let body = format!(
        "<h1>Runbooks</h1>{}",
        html::table("runbooks", &["Runbook", "What it finds", "Source"], &rows)
    );
    Ok(html::layout("Runbooks", Some(&viewer), &body).into_response())
}

/// The parameters a form sent that the runbook declares.
fn params_of(book: &Runbook, p: &Params) -> BTreeMap<String, String> {
    book.params
        .keys()
        .filter_map(|k| {
            p.get(k)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (k.clone(), v.trim().to_string()))
        })
        .collect()
}

fn params_form(book: &Runbook, p: &Params) -> String {
    let mut out = String::new();
    for (k, spec) in &book.params {
        out.push_str(&format!(
            "<label>{} <input name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>",
            html::esc(k),
            html::esc(k),
            html::esc(p.get(k).map(String::as_str).unwrap_or("")),
            html::esc(
                spec.default
                    .as_deref()
                    .or(spec.description.as_deref())
                    .unwrap_or("")
            )
        ));
    }
    out
}

async fn runbook(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Page {
    need(&viewer, P::Runbooks)?;
    let config = viewer.config.clone();
    let book = find(&config, &name)?;
    let run = p.contains_key("run");
    let form = params_form(&book, &p);
    let plan_html = if run {
        let params = params_of(&book, &p);
        let ops = ops(&console, &config, &viewer);
        let plan = ops.plan_runbook(book.clone(), params.clone()).await?;
        ops.run_runbook(&plan, false).await?;
        let actions: String = plan
            .actions
            .iter()
            .map(|(k, subject)| format!("<li>{:?} {}</li>", k, html::esc(subject)))
            .collect();
        let hidden: String = params
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    html::esc(k),
                    html::esc(v)
                )
            })
            .collect();
        let apply = if plan.actions.is_empty() {
            "<p>Nothing to apply.</p>".to_string()
        } else if viewer.access.can(P::ApplyRunbooks) {
            format!(
                "<form method=\"post\" action=\"/runbooks/{}\" id=\"apply-form\" data-confirm=\"Take these {} action(s) now?\">{}{hidden}<button type=\"submit\" id=\"apply\" class=\"danger\">Apply</button></form>",
                html::esc(&book.name),
                plan.actions.len(),
                html::csrf(&viewer)
            )
        } else {
            "<p>No role of yours grants \"apply_runbooks\", so you can see the plan but not apply it.</p>".into()
        };
        format!(
            "<h2>Rows</h2>{}<h2>Planned actions</h2><ul id=\"planned\">{actions}</ul>{apply}",
            crate::audit::result_table(&plan.rows)
        )
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Runbook {}</h1><p>{}</p><pre class=\"sql\">{}</pre><form method=\"get\" action=\"/runbooks/{0}\" class=\"filters\" id=\"run-form\">{form}<input type=\"hidden\" name=\"run\" value=\"1\"><button type=\"submit\" id=\"run\">Run</button></form>{plan_html}",
        html::esc(&book.name),
        html::esc(&book.description),
        html::esc(book.query.trim()),
    );
    Ok(html::layout(&format!("Runbook {name}"), Some(&viewer), &body).into_response())
}

async fn apply(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Page {
    let csrf = p.get("csrf").cloned().unwrap_or_default();
    viewer.check_post(&console, &headers, &csrf)?;
    need(&viewer, P::ApplyRunbooks)?;
    let config = viewer.config.clone();
    let book = find(&config, &name)?;
    let params = params_of(&book, &p);
    let ops = ops(&console, &config, &viewer);
    let plan = ops.plan_runbook(book, params).await?;
    let outcomes = ops.run_runbook(&plan, true).await?;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let notice = format!(
        "applied {}: {} action(s) taken, {failed} failed",
        name,
        outcomes.len() - failed
    );
    let items: String = outcomes
        .iter()
        .map(|o| {
            format!(
                "<li>{:?} {}: {}</li>",
                o.kind,
                html::esc(&o.subject),
                html::esc(o.error.as_deref().unwrap_or("done"))
            )
        })
        .collect();
    let body = format!(
        "<h1>Runbook {}</h1>{}<ul id=\"outcomes\">{items}</ul><p><a href=\"/runbooks/{0}\">Back</a></p>",
        html::esc(&name),
        html::notice(Some(&notice))
    );
    Ok(html::layout(&format!("Runbook {name}"), Some(&viewer), &body).into_response())
}
