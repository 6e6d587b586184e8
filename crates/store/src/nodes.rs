//! The gateway nodes that share this store: each registers when it starts
//! and heartbeats while it runs; a clean stop marks it stopped. A node
//! whose heartbeat is older than `server.node_lost_after` is lost: one
//! live node claims it ([`Store::claim_lost_node`], a conditional UPDATE
//! that only one claimer can win) and closes its open sessions
//! ([`crate::close_lost_node`]).
//!
//! Heartbeat times come from the database's clock, not the nodes' own, so
//! that nodes whose clocks disagree still agree on who is silent.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

/// A node as the `nodes` table holds it, with the sessions it has open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Its `server.listen`.
    pub address: String,
    /// The Gatehouse version it runs.
    pub version: String,
    /// When its process registered (RFC 3339, the store's clock).
    pub started_at: String,
    pub last_heartbeat: String,
    /// Set by a clean stop (SIGTERM); cleared when it starts again.
    pub stopped_at: Option<String>,
    /// The node that declared it lost and closed its sessions.
    pub lost_by: Option<String>,
    pub lost_at: Option<String>,
    /// Sessions it started that have no `session.end`.
    pub open_sessions: i64,
    /// How long since its last heartbeat, by the store's clock.
    pub silent_for: Duration,
}

/// What `gatehouse nodes` calls a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// Stopped cleanly.
    Stopped,
    /// Declared lost by another node, or silent for longer than
    /// `node_lost_after` (not yet claimed: no live node noticed).
    Lost,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Stopped => "stopped",
            NodeState::Lost => "lost",
        }
    }
}

impl Node {
    /// Its state when a node silent for longer than `lost_after` is lost.
    pub fn state(&self, lost_after: Duration) -> NodeState {
        if self.stopped_at.is_some() {
            NodeState::Stopped
        } else if self.lost_by.is_some() || self.silent_for > lost_after {
            NodeState::Lost
        } else {
            NodeState::Up
        }
    }
}

/// A node whose heartbeat is too old, as it was read: the claim succeeds
/// only if the heartbeat is still this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleNode {
    pub name: String,
    pub last_heartbeat: String,
    pub silent_for: Duration,
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `now - then`; zero when either is unreadable or `then` is later.
fn silence(then: &str, now: &str) -> Duration {
    match (parse(then), parse(now)) {
        (Some(then), Some(now)) => (now - then).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

type NodeRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
);

impl Store {
    /// A node's process starts: its row is (re)written with this start
    /// time, and whatever an earlier process left (stopped, lost) is
    /// cleared.
    pub async fn register_node(
        &self,
        node: &str,
        address: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        exec!(
            self,
            "INSERT INTO nodes (name, address, version, started_at, last_heartbeat, stopped_at, lost_by, lost_at)
             VALUES (?1, ?2, ?3, {now}, {now}, NULL, NULL, NULL)
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, version = excluded.version,
             started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat,
             stopped_at = NULL, lost_by = NULL, lost_at = NULL",
            node,
            address,
            version
        );
        Ok(())
    }

    /// The node is alive. Returns the node that declared it lost, when one
    /// did while this process was running (its sessions were then closed
    /// in the trail); the row is registered afresh in that case, so that
    /// the node can be noticed again.
    pub async fn heartbeat(
        &self,
        node: &str,
        address: &str,
        version: &str,
    ) -> Result<Option<String>, StoreError> {
        let n = exec!(
            self,
            "UPDATE nodes SET last_heartbeat = {now}, address = ?2, version = ?3
             WHERE name = ?1 AND lost_by IS NULL AND stopped_at IS NULL",
            node,
            address,
            version
        );
        if n == 1 {
            return Ok(None);
        }
        let lost_by = fetch_all!(
            self,
            (Option<String>,),
            "SELECT lost_by FROM nodes WHERE name = ?1",
            node
        )
        .into_iter()
        .next()
        .and_then(|r| r.0);
        self.register_node(node, address, version).await?;
        Ok(lost_by)
    }

    /// A clean stop: the node is not lost, and its state says so until it
    /// starts again.
    pub async fn node_stopped(&self, node: &str) -> Result<(), StoreError> {
        exec!(
            self,
            "UPDATE nodes SET stopped_at = {now} WHERE name = ?1",
            node
        );
        Ok(())
    }

    /// Every node with the number of sessions it has open, by name.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = fetch_all!(
            self,
            NodeRow,
            "SELECT n.name, n.address, n.version, n.started_at, n.last_heartbeat, n.stopped_at,
                    n.lost_by, n.lost_at,
                    (SELECT COUNT(*) FROM sessions s WHERE s.node = n.name AND s.end_time IS NULL),
                    {now}
             FROM nodes n ORDER BY n.name"
        );
        Ok(rows
            .into_iter()
            .map(
                |(
                    name,
                    address,
                    version,
                    started_at,
                    last_heartbeat,
                    stopped_at,
                    lost_by,
                    lost_at,
                    open_sessions,
                    now,
                )| Node {
                    silent_for: silence(&last_heartbeat, &now),
                    name,
                    address,
                    version,
                    started_at,
                    last_heartbeat,
                    stopped_at,
                    lost_by,
                    lost_at,
                    open_sessions,
                },
            )
            .collect())
    }

    /// Nodes neither stopped nor already declared lost whose last
    /// heartbeat is older than `older_than` (the store's clock).
    pub async fn stale_nodes(&self, older_than: Duration) -> Result<Vec<StaleNode>, StoreError> {
        let rows = fetch_all!(
            self,
            (String, String, String),
            "SELECT name, last_heartbeat, {now} FROM nodes
             WHERE stopped_at IS NULL AND lost_by IS NULL ORDER BY name"
        );
        Ok(rows
            .into_iter()
            .map(|(name, last_heartbeat, now)| StaleNode {
                silent_for: silence(&last_heartbeat, &now),
                name,
                last_heartbeat,
            })
            .filter(|n| n.silent_for > older_than)
            .collect())
    }

    /// `by` claims the lost node `stale`: true for exactly one claimer, and
    /// only while the node's heartbeat is still the one read (a node that
    /// heartbeat in between is not lost) and it is neither stopped nor
    /// claimed.
    pub async fn claim_lost_node(&self, stale: &StaleNode, by: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "UPDATE nodes SET lost_by = ?1, lost_at = {now}
             WHERE name = ?2 AND last_heartbeat = ?3 AND lost_by IS NULL AND stopped_at IS NULL",
            by,
            stale.name.as_str(),
            stale.last_heartbeat.as_str()
        );
        Ok(n == 1)
    }

    /// Gives up `by`'s claim on `node` (its sessions could not be closed),
    /// so that a later look claims it again.
    pub async fn release_lost_node(&self, node: &str, by: &str) -> Result<(), StoreError> {
        exec!(
            self,
            "UPDATE nodes SET lost_by = NULL, lost_at = NULL WHERE name = ?1 AND lost_by = ?2",
            node,
            by
        );
        Ok(())
    }
}
