//! `gatehouse approvals list|approve|deny`: an administrator's view of
//! just-in-time requests (approvers usually decide over SSH with
//! `ssh approver@gw approve ID`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_model::{escape_control, Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::Store;

use crate::cli::{ApprovalsCmd, Format};

fn operator() -> String {
    format!("cli:{}", crate::operator::current().name)
}

pub async fn run(
    cmd: &ApprovalsCmd,
    config: &Config,
    store: &Store,
    format: Format,
) -> Result<ExitCode> {
    match cmd {
        ApprovalsCmd::List => {
            let pending = store.pending_approvals().await?;
            if format == Format::Json {
                let list: Vec<_> = pending
                    .iter()
                    .map(|a| serde_json::json!({"id": a.id, "user": a.user, "target": a.target, "login": a.login, "approvers": a.approvers, "requested_at": a.requested_at}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if pending.is_empty() {
                println!("no pending requests");
            } else {
                for a in pending {
                    println!(
                        "{}  {} wants {}@{}  approvers: {}  since {}",
                        escape_control(&a.id),
                        escape_control(&a.user),
                        escape_control(&a.login),
                        escape_control(&a.target),
                        escape_control(&a.approvers),
                        escape_control(&a.requested_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCmd::Approve { id } => decide(store, config, id, true, None).await,
        ApprovalsCmd::Deny { id, reason } => decide(store, config, id, false, reason.clone()).await,
    }
}

async fn decide(
    store: &Store,
    config: &Config,
    id: &str,
    grant: bool,
    reason: Option<String>,
) -> Result<ExitCode> {
    let a = store
        .approval(id)
        .await?
        .with_context(|| format!("no request {id}; see `gatehouse approvals list`"))?;
    if a.status != "pending" {
        bail!("request {id} is already {}", a.status);
    }
    let ttl = gatehouse_policy::decide(config, &a.user, &a.target, Some(&a.login))
        .approval
        .and_then(|n| n.ttl)
        .unwrap_or(Duration::from_secs(3600));
    let until =
        gatehouse_model::event::format_time(chrono::Utc::now() + chrono::Duration::from_std(ttl)?);
    let by = operator();
    let (kind, result) = if grant {
        (EventType::APPROVAL_GRANTED, Outcome::Success)
    } else {
        (EventType::APPROVAL_DENIED, Outcome::Denied)
    };
    let mut ev = NewEvent::new(kind, Severity::Warn, result, &config.server.node)
        .user(by.clone())
        .target(a.target.clone())
        .login(a.login.clone())
        .details(crate::operator::current().annotate(serde_json::json!({"request": id, "requester": a.user, "grant_until": grant.then_some(until.clone())})));
    ev.reason = reason.clone();
    store
        .append(&ev)
        .await
        .context("cannot audit the decision, so it was not made")?;
    if !store
        .decide_approval(
            id,
            grant,
            &by,
            reason.as_deref(),
            grant.then_some(until.as_str()),
        )
        .await?
    {
        bail!("request {id} was decided by someone else meanwhile");
    }
    if grant {
        println!(
            "approved {}: {} may use {}@{} until {until}",
            escape_control(id),
            escape_control(&a.user),
            escape_control(&a.login),
            escape_control(&a.target)
        );
    } else {
        println!("denied {}", escape_control(id));
    }
    Ok(ExitCode::SUCCESS)
}
