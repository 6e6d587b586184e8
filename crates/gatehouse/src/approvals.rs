//! `gatehouse approvals list|approve|deny`: an administrator's view of
//! just-in-time requests (approvers usually decide over SSH with
//! `ssh approver@gw approve ID`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::Store;

use crate::cli::{ApprovalsCmd, Format};

fn operator() -> String {
    let who = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{who}")
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
                        a.id, a.user, a.login, a.target, a.approvers, a.requested_at
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
        .details(serde_json::json!({"request": id, "requester": a.user, "grant_until": grant.then_some(until.clone())}));
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
            "approved {id}: {} may use {}@{} until {until}",
            a.user, a.login, a.target
        );
    } else {
        println!("denied {id}");
    }
    Ok(ExitCode::SUCCESS)
}
