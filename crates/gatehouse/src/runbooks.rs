//! `gatehouse runbook list|show|run`: investigators' questions as files,
//! answers turned into actions. Every run is a `runbook.run` event.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use gatehouse_audit::Runbook;
use gatehouse_control::{ActionOutcome, Control, RunbookPlan};
use gatehouse_model::{escape_control, Config};
use gatehouse_store::Store;

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
            let store = open_store().await?;
            let ops = Control::new(&store, config, crate::operator::actor());
            let plan = ops.plan_runbook(b, given).await?;
            let outcome = ops.run_runbook(&plan, *apply).await?;
            report(&plan, &outcome, *apply, format);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What was found, planned and done.
fn report(plan: &RunbookPlan, outcome: &[ActionOutcome], apply: bool, format: Format) {
    let planned = || {
        plan.actions
            .iter()
            .map(|(k, s)| serde_json::json!({"kind": format!("{k:?}"), "subject": s}))
    };
    if format == Format::Json {
        let rows: serde_json::Value =
            serde_json::from_str(&plan.rows.to_json()).unwrap_or_default();
        let actions: Vec<_> = outcome
            .iter()
            .map(|o| serde_json::json!({"kind": format!("{:?}", o.kind), "subject": o.subject, "ok": o.error.is_none(), "error": o.error}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"runbook": plan.book.name, "rows": rows, "planned": planned().collect::<Vec<_>>(), "applied": apply, "actions": actions})
        );
        return;
    }
    print!("{}", plan.rows.to_table());
    if plan.actions.is_empty() {
        println!("no actions");
    }
    for (kind, subject) in &plan.actions {
        println!(
            "{} {kind:?} {}",
            if apply { "taking:" } else { "would take:" },
            escape_control(subject)
        );
    }
    for o in outcome {
        if let Some(e) = &o.error {
            println!(
                "failed: {:?} {}: {}",
                o.kind,
                escape_control(&o.subject),
                escape_control(e)
            );
        }
    }
    if !apply && !plan.actions.is_empty() {
        println!("(run again with --apply to take these actions)");
    }
}
