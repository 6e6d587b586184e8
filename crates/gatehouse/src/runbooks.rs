//! `gatehouse runbook list|show|run`: investigators' questions as files,
//! answers turned into actions. Every run is a `runbook.run` event.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use gatehouse_audit::{ActionKind, Runbook};
use gatehouse_model::{
    escape_control, parse_duration, Config, EventType, NewEvent, Outcome, Severity,
};
use gatehouse_store::{QueryResult, Store};

use crate::cli::{Format, RunbookCmd};

fn load(config: &Config) -> Result<Vec<Runbook>> {
    gatehouse_audit::runbook::load_all(Some(&config.runbooks.dir)).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow!("{}", lines.join("; "))
    })
}

fn find(books: Vec<Runbook>, name: &str) -> Result<Runbook> {
    let names: Vec<String> = books.iter().map(|b| b.name.clone()).collect();
    books
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| anyhow!("no runbook {name:?}; available: {}", names.join(", ")))
}

fn operator() -> String {
    crate::operator::current().name
}

pub async fn run<F, Fut>(
    cmd: &RunbookCmd,
    config: &Config,
    format: Format,
    open_store: F,
) -> Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Store>>,
{
    match cmd {
        RunbookCmd::List => {
            for b in load(config)? {
                println!("{:<24} {}  [{}]", b.name, b.description, b.source);
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCmd::Show { name } => {
            let b = find(load(config)?, name)?;
            println!("{}: {}\nsource: {}\n", b.name, b.description, b.source);
            for (p, spec) in &b.params {
                println!(
                    "param {p}: {:?}{}{}",
                    spec.kind,
                    spec.default
                        .as_ref()
                        .map(|d| format!(", default {d}"))
                        .unwrap_or_default(),
                    spec.pattern
                        .as_ref()
                        .map(|d| format!(", must match {d}"))
                        .unwrap_or_default()
                );
            }
            println!("\n{}", b.query.trim());
            for a in &b.actions {
                println!(
                    "\naction {:?} on column {}",
                    a.kind,
                    a.column.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCmd::Run {
            name,
            params,
            apply,
        } => {
            let b = find(load(config)?, name)?;
            let mut given = BTreeMap::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("bad --param {p:?}: write KEY=VALUE"))?;
                given.insert(k.to_string(), v.to_string());
            }
            let sql = b
                .render(&given, chrono::Utc::now())
                .map_err(|e| anyhow!(e))?;
            let store = open_store().await?;
            let rows = store.query_readonly(&sql).await?;
            let plan = plan(&b, &rows)?;
            match format {
                Format::Json => {}
                _ => {
                    print!("{}", rows.to_table());
                    if plan.is_empty() {
                        println!("no actions");
                    }
                    for (kind, subject) in &plan {
                        println!(
                            "{} {kind:?} {}",
                            if *apply { "taking:" } else { "would take:" },
                            escape_control(subject)
                        );
                    }
                    if !*apply && !plan.is_empty() {
                        println!("(run again with --apply to take these actions)");
                    }
                }
            }
            let mut outcome = Vec::new();
            if *apply {
                for (kind, subject) in &plan {
                    let result = act(&store, config, &b, *kind, subject, rows.rows.len()).await;
                    outcome.push(serde_json::json!({
                        "kind": format!("{kind:?}"), "subject": subject,
                        "ok": result.is_ok(), "error": result.as_ref().err().map(|e| e.to_string()),
                    }));
                }
            }
            let ev = NewEvent::new(EventType::RUNBOOK_RUN, Severity::Info, Outcome::Success, &config.server.node)
                .user(operator())
                .details(crate::operator::current().annotate(serde_json::json!({
                    "runbook": b.name, "params": given, "rows": rows.rows.len(),
                    "applied": apply, "planned": plan.iter().map(|(k, s)| format!("{k:?} {s}")).collect::<Vec<_>>(),
                    "actions": outcome,
                })));
            store
                .append(&ev)
                .await
                .context("cannot audit the runbook run")?;
            if format == Format::Json {
                let rows_json: serde_json::Value =
                    serde_json::from_str(&rows.to_json()).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({"runbook": b.name, "rows": rows_json, "planned": plan.iter().map(|(k, s)| serde_json::json!({"kind": format!("{k:?}"), "subject": s})).collect::<Vec<_>>(), "applied": apply, "actions": outcome})
                );
            }
            Ok(ExitCode::SUCCESS)
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
            .with_context(|| format!("runbook {}: the query returns no column {col:?}", b.name))?;
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

async fn act(
    store: &Store,
    config: &Config,
    b: &Runbook,
    kind: ActionKind,
    subject: &str,
    rows: usize,
) -> Result<()> {
    let action = b
        .actions
        .iter()
        .find(|a| a.kind == kind)
        .context("action vanished")?;
    let reason = action
        .reason
        .clone()
        .unwrap_or_else(|| format!("runbook {}", b.name));
    let by = format!("runbook:{}", b.name);
    match kind {
        ActionKind::LockUser => {
            if config.user(subject).is_none() {
                bail!("unknown user {subject}");
            }
            let ev = NewEvent::new(
                EventType::USER_LOCKED,
                Severity::Warn,
                Outcome::Success,
                &config.server.node,
            )
            .user(subject)
            .reason(reason.clone())
            .details(serde_json::json!({"by": by}));
            store.append(&ev).await?;
            store.lock_user(subject, &reason, None, &by).await?;
            let live = store
                .query_readonly(&format!(
                    "SELECT session_id FROM sessions WHERE \"user\" = '{}' AND end_time IS NULL",
                    subject.replace('\'', "''")
                ))
                .await?;
            for row in &live.rows {
                if let Some(serde_json::Value::String(sid)) = row.first() {
                    store
                        .request_kill(sid, &format!("user locked: {reason}"), &by)
                        .await?;
                }
            }
        }
        ActionKind::KillSession => {
            store.request_kill(subject, &reason, &by).await?;
        }
        ActionKind::BlockSource => {
            let d = parse_duration(action.duration.as_deref().unwrap_or("15m"))?;
            let until = gatehouse_model::event::format_time(
                chrono::Utc::now() + chrono::Duration::from_std(d)?,
            );
            let ev = NewEvent::new(
                EventType::SOURCE_BLOCKED,
                Severity::High,
                Outcome::Success,
                &config.server.node,
            )
            .source_ip(subject)
            .reason(reason.clone())
            .details(serde_json::json!({"by": by, "until": until}));
            store.append(&ev).await?;
            store.block_source(subject, &until, &reason).await?;
        }
        ActionKind::Notify => {
            let ev = NewEvent::new(
                EventType::ALERT,
                Severity::High,
                Outcome::Success,
                &config.server.node,
            )
            .reason(reason)
            .details(serde_json::json!({"by": by, "rows": rows}));
            store.append(&ev).await?;
        }
    }
    Ok(())
}
