//! Wake-ups for cross-node control: a kill request or an approval
//! decision written by any node or the CLI wakes the node that holds the
//! session at once, instead of that node polling the store.
//!
//! On PostgreSQL the writer sends `NOTIFY gatehouse_control` once the row
//! it wrote is committed (so a wake-up never arrives before the row is
//! visible), and every store that subscribed keeps one `LISTEN`
//! connection, reconnected when it drops. On SQLite (one node) a wake-up
//! reaches the subscribers of the same process; the CLI is another
//! process, so subscribers there keep a short poll as well.
//!
//! A wake-up carries no data to act on: the receiver reads the store. It
//! only says which kind of row to look at: [`WAKE_KILL`], or
//! `approval:ID` ([`approval_wake`]). One kind carries no row at all:
//! `watch:SESSION` ([`watch_wake`]), sent every [`WATCH_RENEW`] by whoever
//! follows a running session, tells the node that records it to put its
//! output in object storage at every flush rather than every few seconds.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::{Backend, Pool, Store, StoreError};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "gatehouse_control";

/// A kill request was written.
pub const WAKE_KILL: &str = "kill";

/// The wake-up for approval request `id` being decided.
pub fn approval_wake(id: &str) -> String {
    format!("approval:{id}")
}

/// The wake-up saying that session `id` is being watched live.
pub fn watch_wake(id: &str) -> String {
    format!("{WATCH_PREFIX}{id}")
}

/// What [`watch_wake`] puts before the session id.
pub const WATCH_PREFIX: &str = "watch:";

/// How often a live viewer renews its [`watch_wake`]; the recording node
/// treats a session as watched for [`WATCH_LEASE`] after the last one.
pub const WATCH_RENEW: Duration = Duration::from_secs(2);
pub const WATCH_LEASE: Duration = Duration::from_secs(5);

/// How often a subscriber still looks at the store without a wake-up:
/// the safety net for a notification lost while a LISTEN connection was
/// being re-established (PostgreSQL), or written by another process
/// (SQLite).
pub fn fallback_interval(backend: Backend) -> Duration {
    match backend {
        Backend::Postgres => Duration::from_secs(5),
        Backend::Sqlite => Duration::from_millis(200),
    }
}

/// Wake-ups as they arrive. `recv` may report `Lagged` after a burst;
/// that only means "look at the store now", like any wake-up.
pub type WakeUps = broadcast::Receiver<String>;

impl Store {
    /// Subscribes to wake-ups; on PostgreSQL the first subscription
    /// starts this store's LISTEN connection.
    pub fn wake_ups(&self) -> WakeUps {
        let rx = self.inner.wake.subscribe();
        if let Pool::Postgres(pg) = &self.inner.pool {
            let started = self
                .inner
                .listening
                .swap(true, std::sync::atomic::Ordering::AcqRel);
            if !started {
                tokio::spawn(listen(pg.clone(), self.inner.wake.clone()));
            }
        }
        rx
    }

    /// Tells the node recording session `id` that someone follows it live
    /// (renewed every [`WATCH_RENEW`] while they do).
    pub async fn announce_watch(&self, id: &str) -> Result<(), StoreError> {
        self.wake(&watch_wake(id)).await
    }

    /// Sends `payload` to every subscriber on every node, after the row it
    /// announces is committed.
    pub(crate) async fn wake(&self, payload: &str) -> Result<(), StoreError> {
        match &self.inner.pool {
            Pool::Postgres(pg) => {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(pg)
                    .await?;
            }
            Pool::Sqlite { .. } => {
                let _ = self.inner.wake.send(payload.to_string());
            }
        }
        Ok(())
    }
}

/// One LISTEN connection, kept open: each notification is handed to the
/// subscribers; a lost connection is re-established after a pause (and a
/// wake-up is sent then, since notifications may have been missed).
async fn listen(pg: sqlx::PgPool, tx: broadcast::Sender<String>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pg).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot LISTEN {CHANNEL}; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let _ = tx.send(WAKE_KILL.to_string());
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                // The connection dropped; notifications may be lost.
                Ok(None) => {
                    let _ = tx.send(WAKE_KILL.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                    break;
                }
            }
            if tx.receiver_count() == 0 {
                // Nobody listens any more (the store is being dropped).
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
