//! `gatehouse sinks send NAME [--dry-run]`: what a sink sends next, shown
//! exactly or delivered once.

use std::process::ExitCode;

use anyhow::{Context, Result};
use gatehouse_model::Config;
use gatehouse_store::Store;

use crate::cli::SinksCmd;

pub async fn run(cmd: &SinksCmd, config: &Config, store: &Store) -> Result<ExitCode> {
    let SinksCmd::Send {
        name,
        dry_run,
        limit,
    } = cmd;
    let Some(cfg) = config.sinks.iter().find(|s| &s.name == name) else {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "no sink {name:?} in the config (its [[sinks]] are: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let mut sink = gatehouse_sinks::Sink::new(cfg)?
        .node(&config.server.node)
        .service_name(&config.server.service_name);
    if *dry_run {
        // The bodies on stdout, exactly as they would be sent; where they
        // would go on stderr.
        let previews = sink.dry_run(store, *limit).await?;
        if previews.is_empty() {
            eprintln!("sink {name}: nothing after its cursor");
        }
        for p in previews {
            eprintln!("sink {name}: {}", p.to);
            println!("{}", p.body);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = sink
        .send_next(store, *limit)
        .await
        .with_context(|| format!("sink {name}: delivery failed; its cursor stays"))?;
    eprintln!("sink {name}: {n} event(s) delivered");
    Ok(ExitCode::SUCCESS)
}
