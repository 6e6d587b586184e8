//! Running a runbook: plan (run its read-only query and list the actions
//! the rows call for), then apply (take them, each through its own
//! operation, so each is audited before it happens).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gatehouse_audit::{ActionKind, Runbook};
use gatehouse_model::{ConsolePermission, EventType, Outcome, Severity};
use gatehouse_store::QueryResult;

use crate::{Actor, Channel, Control, ControlError, Result};

/// `block_source` actions without a `duration`.
const DEFAULT_BLOCK: Duration = Duration::from_secs(15 * 60);

/// What a runbook found and would do.
#[derive(Debug, Clone)]
pub struct RunbookPlan {
    pub book: Runbook,
    pub params: BTreeMap<String, String>,
    pub rows: QueryResult,
    /// Distinct (action, subject) pairs, in the runbook's action order.
    pub actions: Vec<(ActionKind, String)>,
}

/// One action taken by `apply`.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    pub kind: ActionKind,
    pub subject: String,
    pub error: Option<String>,
}

impl Control<'_> {
    /// Runs the runbook's query with `params` and lists its actions.
    pub async fn plan_runbook(
        &self,
        book: Runbook,
        params: BTreeMap<String, String>,
    ) -> Result<RunbookPlan> {
        self.permit(ConsolePermission::Runbooks, "run runbooks")?;
        let sql = book
            .render(&params, chrono::Utc::now())
            .map_err(ControlError::Invalid)?;
        let rows = self.store.query_readonly(&sql).await?;
        let actions = plan(&book, &rows)?;
        Ok(RunbookPlan {
            book,
            params,
            rows,
            actions,
        })
    }

    /// Takes the planned actions when `apply`, then writes the
    /// `runbook.run` event with what was planned and what happened. Each
    /// action is its own operation (audited before it happens) by the
    /// actor `runbook:NAME`, on behalf of this actor.
    pub async fn run_runbook(&self, plan: &RunbookPlan, apply: bool) -> Result<Vec<ActionOutcome>> {
        if apply {
            self.permit(ConsolePermission::ApplyRunbooks, "apply runbooks")?;
        }
        let mut outcomes = Vec::new();
        if apply {
            let on_behalf =
                Actor::operator(format!("runbook:{}", plan.book.name), Channel::Runbook)
                    .with("run_by", self.actor.name.clone())
                    .with("run_channel", self.actor.channel.as_str());
            let ops = Control::with_trail(self.store, self.trail, self.config, on_behalf);
            for (kind, subject) in &plan.actions {
                let error = ops
                    .act(plan, *kind, subject)
                    .await
                    .err()
                    .map(|e| e.to_string());
                outcomes.push(ActionOutcome {
                    kind: *kind,
                    subject: subject.clone(),
                    error,
                });
            }
        }
        let ev = self
            .event(
                EventType::RUNBOOK_RUN,
                Severity::Info,
                Outcome::Success,
                serde_json::json!({
                    "runbook": plan.book.name, "params": plan.params, "rows": plan.rows.rows.len(),
                    "applied": apply,
                    "planned": plan.actions.iter().map(|(k, s)| format!("{k:?} {s}")).collect::<Vec<_>>(),
                    "actions": outcomes.iter().map(|o| serde_json::json!({
                        "kind": format!("{:?}", o.kind), "subject": o.subject,
                        "ok": o.error.is_none(), "error": o.error,
                    })).collect::<Vec<_>>(),
                }),
            )
            .user(self.actor.name.clone());
        self.audit(ev).await?;
        Ok(outcomes)
    }

    async fn act(&self, plan: &RunbookPlan, kind: ActionKind, subject: &str) -> Result<()> {
        let book = &plan.book;
        let action = book
            .actions
            .iter()
            .find(|a| a.kind == kind)
            .ok_or_else(|| {
                ControlError::Invalid(format!("runbook {} lost an action", book.name))
            })?;
        let reason = action
            .reason
            .clone()
            .unwrap_or_else(|| format!("runbook {}", book.name));
        match kind {
            ActionKind::LockUser => self.lock_user(subject, &reason, None).await.map(|_| ()),
            ActionKind::KillSession => self.kill_session(subject, &reason).await,
            ActionKind::BlockSource => {
                let d = match action.duration.as_deref() {
                    Some(text) => gatehouse_model::parse_duration(text).map_err(|e| {
                        ControlError::Invalid(format!("runbook {}: duration: {e}", book.name))
                    })?,
                    None => DEFAULT_BLOCK,
                };
                self.block_source(subject, d, &reason).await.map(|_| ())
            }
            ActionKind::Notify => {
                let ev = self
                    .event(
                        EventType::ALERT,
                        Severity::High,
                        Outcome::Success,
                        serde_json::json!({"rows": plan.rows.rows.len()}),
                    )
                    .reason(reason);
                self.audit(ev).await
            }
        }
    }
}

/// The distinct (action, subject) pairs the rows call for.
fn plan(b: &Runbook, rows: &QueryResult) -> Result<Vec<(ActionKind, String)>> {
    let mut out = Vec::new();
    for a in &b.actions {
        if a.kind == ActionKind::Notify {
            if !rows.rows.is_empty() {
                out.push((ActionKind::Notify, format!("{} row(s)", rows.rows.len())));
            }
            continue;
        }
        let col = a.column.as_deref().unwrap_or("");
        let idx = rows
            .columns
            .iter()
            .position(|c| c == col)
            .or(if rows.rows.is_empty() { Some(0) } else { None })
            .ok_or_else(|| {
                ControlError::Invalid(format!(
                    "runbook {}: the query returns no column {col:?}",
                    b.name
                ))
            })?;
        let mut seen = BTreeSet::new();
        for r in &rows.rows {
            if let Some(serde_json::Value::String(s)) = r.get(idx) {
                if seen.insert(s.clone()) {
                    out.push((a.kind, s.clone()));
                }
            }
        }
    }
    Ok(out)
}
