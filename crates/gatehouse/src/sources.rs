//! `gatehouse sources list|block|unblock`: addresses the gateway refuses
//! (blocked by hand, by an alert or runbook, or after repeated failures).

use std::process::ExitCode;

use anyhow::Result;
use gatehouse_control::Control;
use gatehouse_model::{escape_control, parse_duration, Config};
use gatehouse_store::Store;

use crate::cli::{Format, SourcesCmd};

pub async fn run(
    cmd: &SourcesCmd,
    config: &Config,
    store: &Store,
    format: Format,
) -> Result<ExitCode> {
    let ops = Control::new(store, config, crate::operator::actor());
    match cmd {
        SourcesCmd::List => {
            let blocks = store.blocked_sources().await?;
            if format == Format::Json {
                let list: Vec<_> = blocks
                    .iter()
                    .map(|(ip, until, reason)| serde_json::json!({"source_ip": ip, "until": until, "reason": reason}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if blocks.is_empty() {
                println!("no source is blocked");
            } else {
                for (ip, until, reason) in blocks {
                    println!(
                        "{}  until {}  {}",
                        escape_control(&ip),
                        escape_control(&until),
                        escape_control(&reason)
                    );
                }
            }
        }
        SourcesCmd::Block {
            ip,
            duration,
            reason,
        } => {
            let until = ops
                .block_source(ip, parse_duration(duration)?, reason)
                .await?;
            println!("blocked {} until {until}", escape_control(ip));
        }
        SourcesCmd::Unblock { ip } => {
            if ops.unblock_source(ip).await? {
                println!("unblocked {}", escape_control(ip));
            } else {
                println!("{} was not blocked", escape_control(ip));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
