//! File transfers seen inside a channel: SFTP operations in the `sftp`
//! subsystem and files moved by legacy `scp -t/-f`, each an audit event
//! (`sftp.open`, `sftp.close`, ..., `scp`). Parsing happens on the data
//! path (it counts payloads, never copies them); writing the events does
//! not: they go through a bounded queue to a task that appends them in
//! order.

use std::sync::Mutex;

use gatehouse_model::{NewEvent, Outcome, Severity};
use gatehouse_record::scp_ops::ScpTracker;
use gatehouse_record::sftp_ops::{SftpOp, SftpTracker};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::session::Events;

enum Tracker {
    Sftp(SftpTracker),
    Scp(ScpTracker),
}

pub(crate) struct TransferAudit {
    tracker: Mutex<Tracker>,
    tx: mpsc::Sender<NewEvent>,
    events: Events,
}

impl TransferAudit {
    /// For an `sftp` subsystem channel.
    pub fn sftp(events: &Events) -> (TransferAudit, JoinHandle<()>) {
        Self::with(Tracker::Sftp(SftpTracker::new()), events)
    }

    /// For an exec channel running legacy scp; None for other commands.
    pub fn scp(command: &str, events: &Events) -> Option<(TransferAudit, JoinHandle<()>)> {
        let t = ScpTracker::from_command(command)?;
        Some(Self::with(Tracker::Scp(t), events))
    }

    fn with(tracker: Tracker, events: &Events) -> (TransferAudit, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(1024);
        let writer_events = events.clone();
        let writer = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                writer_events.fact(ev).await;
            }
        });
        (
            TransferAudit {
                tracker: Mutex::new(tracker),
                tx,
                events: events.clone(),
            },
            writer,
        )
    }

    /// Bytes from the user towards the target.
    pub async fn client(&self, data: &[u8]) {
        let events = self.parse(data, true);
        self.send(events).await;
    }

    /// Bytes from the target towards the user.
    pub async fn server(&self, data: &[u8]) {
        let events = self.parse(data, false);
        self.send(events).await;
    }

    fn parse(&self, data: &[u8], from_client: bool) -> Vec<NewEvent> {
        let Ok(mut tracker) = self.tracker.lock() else {
            return Vec::new();
        };
        match &mut *tracker {
            Tracker::Sftp(t) => {
                let ops = if from_client {
                    t.client_bytes(data)
                } else {
                    t.server_bytes(data)
                };
                ops.into_iter().map(|op| self.sftp_event(op)).collect()
            }
            Tracker::Scp(t) => {
                let files = if from_client {
                    t.client_bytes(data)
                } else {
                    t.server_bytes(data)
                };
                files
                    .into_iter()
                    .map(|f| {
                        self.events
                            .event("scp", Severity::Info, Outcome::Success)
                            .details(serde_json::to_value(&f).unwrap_or_default())
                    })
                    .collect()
            }
        }
    }

    fn sftp_event(&self, op: SftpOp) -> NewEvent {
        let ok = matches!(op.status, None | Some(0)) && op.op != "malformed";
        let (sev, result) = if op.op == "malformed" {
            (Severity::Warn, Outcome::Error)
        } else if ok {
            (Severity::Info, Outcome::Success)
        } else {
            (Severity::Info, Outcome::Failure)
        };
        let mut ev = self
            .events
            .event(&format!("sftp.{}", op.op), sev, result)
            .details(serde_json::to_value(&op).unwrap_or_default());
        ev.reason = op.error.clone();
        ev
    }

    async fn send(&self, events: Vec<NewEvent>) {
        for ev in events {
            let _ = self.tx.send(ev).await;
        }
    }
}
