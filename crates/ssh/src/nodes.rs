//! This node among the nodes sharing the store: it registers when the
//! gateway starts, heartbeats every `server.heartbeat_interval` until the
//! gateway has stopped (its sessions ended or were told to), and then
//! marks itself stopped. After each heartbeat it looks for
//! nodes silent for longer than `server.node_lost_after`; for each one it
//! wins the claim on (one claimer however many nodes notice), it closes
//! the lost node's open sessions in the trail
//! ([`gatehouse_store::close_lost_node`]).
//!
//! A node claims others only after its own heartbeats have reached the
//! store for a whole `node_lost_after`: after a store outage every node
//! looks silent, and each must get the chance to heartbeat again before
//! anyone is declared lost.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::Config;
use gatehouse_store::recordings::{self, RecordingStorage};
use gatehouse_store::Store;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

/// This node's heartbeat task: it runs while this value lives, and when
/// it is dropped (the gateway's `run` has returned) the task marks the
/// node stopped and ends. A node that drains its sessions on SIGTERM thus
/// heartbeats until they have ended, and one killed while draining is
/// lost, not stopped.
pub(crate) struct Heartbeat {
    _alive: oneshot::Sender<()>,
}

/// Starts this node's heartbeat task.
pub(crate) fn start(store: &Store, config: &Arc<Config>) -> Heartbeat {
    // The workspace has one version: the binary's is this crate's.
    let version = env!("CARGO_PKG_VERSION");
    let (alive, stopped) = oneshot::channel();
    tokio::spawn(keep_alive(store.clone(), config.clone(), version, stopped));
    Heartbeat { _alive: alive }
}

/// Heartbeats until `stopped` resolves (its sender is dropped), then
/// marks the node stopped. `version` is the Gatehouse version it runs.
async fn keep_alive(
    store: Store,
    config: Arc<Config>,
    version: &'static str,
    mut stopped: oneshot::Receiver<()>,
) {
    let node = config.server.node.clone();
    let address = config.server.listen.clone();
    let lost_after = config.server.node_lost_after.get();
    let recordings: Arc<dyn RecordingStorage> = match recordings::from_config(&config.recording) {
        Ok(s) => Arc::from(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot use the recording storage; a lost node's recordings will be read from recording.dir");
            Arc::new(recordings::LocalDir::new(config.recording.dir.clone()))
        }
    };
    let mut tick = tokio::time::interval(config.server.heartbeat_interval.get());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Since when every heartbeat has reached the store (None: the last
    // one failed, or none was written yet).
    let mut healthy_since: Option<Instant> = None;
    let mut registered = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopped => break,
        }
        let beat = if registered {
            store.heartbeat(&node, &address, version).await
        } else {
            store
                .register_node(&node, &address, version)
                .await
                .map(|()| None)
        };
        match beat {
            Ok(declared_lost_by) => {
                registered = true;
                if let Some(by) = declared_lost_by {
                    tracing::error!(%by, "node {by} declared this node lost while it was running and closed its open sessions in the audit trail; check the store's reachability and server.node_lost_after");
                }
                let since = *healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= lost_after {
                    close_lost_nodes(&store, &node, lost_after, &recordings).await;
                }
            }
            Err(e) => {
                healthy_since = None;
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
            }
        }
    }
    if let Err(e) = store.node_stopped(&node).await {
        tracing::warn!(error = %e, "cannot mark this node stopped; other nodes will report it lost");
    }
}

/// Claims every node silent for longer than `lost_after` and closes what
/// it left open. A claim whose sessions cannot be closed is given up, so
/// that a later look tries again.
async fn close_lost_nodes(
    store: &Store,
    me: &str,
    lost_after: Duration,
    recordings: &Arc<dyn RecordingStorage>,
) {
    let stale = match store.stale_nodes(lost_after).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for lost nodes");
            return;
        }
    };
    for lost in stale.iter().filter(|n| n.name != me) {
        match store.claim_lost_node(lost, me).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, node = %lost.name, "cannot claim a lost node");
                continue;
            }
        }
        match gatehouse_store::close_lost_node(store, &lost.name, me, recordings.clone()).await {
            Ok(r) => tracing::warn!(
                node = %lost.name,
                silent_for = ?lost.silent_for,
                sessions = r.sessions.len(),
                transfers = r.transfers,
                port_forwards = r.port_forwards,
                kill_requests = r.kill_requests,
                "a node stopped heartbeating; closed the sessions it left open"
            ),
            Err(e) => {
                tracing::error!(error = %e, node = %lost.name, "cannot close the sessions of a lost node; trying again later");
                if let Err(e) = store.release_lost_node(&lost.name, me).await {
                    tracing::warn!(error = %e, node = %lost.name, "cannot give up the claim on a lost node");
                }
            }
        }
    }
}
