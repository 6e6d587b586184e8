//! Events a receiver rejected for good (an Elasticsearch item answered
//! 400, a CloudTrail Lake entry that kept failing): appended to the sink's
//! dead-letter file (NDJSON, fsynced) and announced by one
//! `sink.dead_letter` event, so the sink moves on instead of retrying a
//! document that can never be accepted.

use std::path::Path;

use gatehouse_model::event::{Event, EventType, NewEvent};
use gatehouse_model::{Outcome, Severity};
use gatehouse_store::Store;
use tokio::io::AsyncWriteExt;

use crate::SinkError;

/// At most this many rejected events are listed in the event's details
/// (the file has them all).
const LISTED: usize = 20;

/// One event the receiver will not take.
pub struct Rejected<'a> {
    pub event: &'a Event,
    /// The document as it was sent (the Gatehouse event or its CloudTrail
    /// record).
    pub sent: serde_json::Value,
    /// The receiver's status for this item, when it gives one.
    pub status: Option<u16>,
    /// The receiver's reason, e.g. `mapper_parsing_exception: failed to
    /// parse field [details.bytes]`.
    pub error: String,
}

/// Who rejected and where the file is.
pub struct DeadLetters<'a> {
    pub sink: &'a str,
    pub kind: &'a str,
    pub node: &'a str,
    pub path: &'a Path,
}

impl DeadLetters<'_> {
    /// Appends `rejected` to the file, then writes the `sink.dead_letter`
    /// event. Either failing is a failed delivery (the batch is retried,
    /// so a line may be written twice).
    pub async fn record(&self, store: &Store, rejected: &[Rejected<'_>]) -> Result<(), SinkError> {
        if rejected.is_empty() {
            return Ok(());
        }
        self.append(rejected).await?;
        // A dead-letter event this sink itself rejected again would make
        // another, and so on: those are only logged.
        let own = |r: &Rejected| {
            r.event.event.kind == EventType::SINK_DEAD_LETTER
                && r.event.event.details.get("sink").and_then(|s| s.as_str()) == Some(self.sink)
        };
        if rejected.iter().all(own) {
            tracing::warn!(sink = %self.sink, count = rejected.len(), file = %self.path.display(), "the receiver rejected this sink's own sink.dead_letter events; written to the dead-letter file only");
            return Ok(());
        }
        let listed: Vec<serde_json::Value> = rejected
            .iter()
            .take(LISTED)
            .map(|r| {
                serde_json::json!({
                    "id": r.event.event.id,
                    "type": r.event.event.kind,
                    "status": r.status,
                    "error": r.error,
                })
            })
            .collect();
        let ev = NewEvent::new(
            EventType::SINK_DEAD_LETTER,
            Severity::High,
            Outcome::Failure,
            self.node,
        )
        .reason(format!(
            "{} rejected {} event(s) for good; written to {}",
            self.kind,
            rejected.len(),
            self.path.display()
        ))
        .details(serde_json::json!({
            "sink": self.sink,
            "kind": self.kind,
            "file": self.path.display().to_string(),
            "count": rejected.len(),
            "events": listed,
        }));
        store
            .append(&ev)
            .await
            .map_err(|e| SinkError::Delivery(format!("cannot write sink.dead_letter: {e}")))?;
        tracing::warn!(sink = %self.sink, count = rejected.len(), file = %self.path.display(), "events rejected for good went to the dead-letter file");
        Ok(())
    }

    async fn append(&self, rejected: &[Rejected<'_>]) -> Result<(), SinkError> {
        let io = |e: std::io::Error| {
            SinkError::Delivery(format!(
                "cannot write the dead-letter file {}: {e}",
                self.path.display()
            ))
        };
        let now = gatehouse_model::event::format_time(chrono::Utc::now());
        let mut text = String::new();
        for r in rejected {
            let line = serde_json::json!({
                "time": now,
                "sink": self.sink,
                "event_id": r.event.event.id,
                "event_type": r.event.event.kind,
                "status": r.status,
                "error": r.error,
                "document": r.sent,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path)
            .await
            .map_err(io)?;
        f.write_all(text.as_bytes()).await.map_err(io)?;
        f.sync_data().await.map_err(io)?;
        Ok(())
    }
}
