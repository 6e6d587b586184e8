//! `gatehouse nodes`: the gateway nodes sharing the store, with their
//! open sessions, last heartbeat and state. A node is `up` while it
//! heartbeats, `stopped` after a clean stop, and `lost` when another node
//! declared it so (and closed its sessions) or its heartbeat is older than
//! `server.node_lost_after`.

use std::process::ExitCode;

use anyhow::Result;
use gatehouse_model::{escape_control, Config};
use gatehouse_store::Store;

use crate::cli::Format;

pub async fn run(config: &Config, store: &Store, format: Format) -> Result<ExitCode> {
    let lost_after = config.server.node_lost_after.get();
    let nodes = store.nodes().await?;
    if format == Format::Json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name,
                    "address": n.address,
                    "version": n.version,
                    "open_sessions": n.open_sessions,
                    "started_at": n.started_at,
                    "last_heartbeat": n.last_heartbeat,
                    "silent_ms": n.silent_for.as_millis() as u64,
                    "state": n.state(lost_after).as_str(),
                    "stopped_at": n.stopped_at,
                    "lost_by": n.lost_by,
                    "lost_at": n.lost_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    if nodes.is_empty() {
        println!("no node has registered in this store yet");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<22} {:<10} {:>8}  {:<34} state",
        "node", "address", "version", "sessions", "last heartbeat"
    );
    for n in &nodes {
        let state = match (n.state(lost_after).as_str(), &n.lost_by) {
            ("lost", Some(by)) => format!("lost (sessions closed by {})", escape_control(by)),
            (s, _) => s.to_string(),
        };
        let heartbeat = format!(
            "{} ({} ago)",
            escape_control(&n.last_heartbeat),
            age(n.silent_for)
        );
        println!(
            "{:<20} {:<22} {:<10} {:>8}  {:<34} {state}",
            escape_control(&n.name),
            escape_control(&n.address),
            escape_control(&n.version),
            n.open_sessions,
            heartbeat
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `42s`, `17m`, `5h`, `3d`: how long ago, roughly.
fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
