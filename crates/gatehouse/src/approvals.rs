//! `gatehouse approvals list|approve|deny`: an administrator's view of
//! just-in-time requests (approvers usually decide over SSH with
//! `ssh approver@gw approve ID`).

use std::process::ExitCode;

use anyhow::Result;
use gatehouse_control::Control;
use gatehouse_model::{escape_control, Config};
use gatehouse_store::Store;

use crate::cli::{ApprovalsCmd, Format};

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
    let ops = Control::new(store, config, crate::operator::actor());
    let decided = ops.decide_approval(id, grant, reason).await?;
    println!("{}", escape_control(&decided.summary()));
    Ok(ExitCode::SUCCESS)
}
