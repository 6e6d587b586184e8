//! The `jsonl` sink: a JSON-lines file, rotated, fsynced per batch, that
//! never holds an event twice.

use std::path::Path;

use gatehouse_model::event::Event;
use tokio::io::AsyncWriteExt;

use crate::{io_error, Shape, SinkError};

/// Appends the batch to the JSON-lines file, rotating it beyond
/// `max_bytes`.
pub async fn deliver(
    path: &Path,
    max_bytes: u64,
    shape: &Shape,
    events: &[&Event],
) -> Result<(), SinkError> {
    let last_id = last_id_in(path).await;
    // Skip what the file already holds (a batch written just
    // before a crash, before its cursor was saved).
    let skip = last_id
        .and_then(|id| events.iter().position(|e| e.event.id == id).map(|i| i + 1))
        .unwrap_or(0);
    let mut text = String::new();
    for e in &events[skip..] {
        text.push_str(&shape.document(e).to_string());
        text.push('\n');
    }
    if let Ok(meta) = tokio::fs::metadata(path).await {
        if meta.len() + text.len() as u64 > max_bytes {
            let rotated = path.with_extension(format!(
                "{}.1",
                path.extension().and_then(|x| x.to_str()).unwrap_or("jsonl")
            ));
            tokio::fs::rename(path, rotated).await.map_err(io_error)?;
        }
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(io_error)?;
    f.write_all(text.as_bytes()).await.map_err(io_error)?;
    f.sync_data().await.map_err(io_error)?;
    Ok(())
}

/// The event id in the last complete line of a JSON-lines file: `id`,
/// or `eventID` of a CloudTrail record (reads only the file's tail).
async fn last_id_in(path: &std::path::Path) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let len = f.metadata().await.ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(std::io::SeekFrom::Start(start)).await.ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).await.ok()?;
    let tail = String::from_utf8_lossy(&tail).to_string();
    let line = tail.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("id")
        .or_else(|| v.get("eventID"))?
        .as_str()
        .map(str::to_string)
}
