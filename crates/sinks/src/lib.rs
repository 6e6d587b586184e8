//! Sinks: every event (or only alerts) forwarded to a JSON-lines file or
//! syslog (RFC 5424 over UDP or TCP).
//!
//! Each sink is a task that reads the event log after its cursor, delivers
//! a batch, and only then advances the cursor, which lives in the store:
//! after an outage or a restart it resumes where it left off. Delivery is
//! retried with exponential backoff (0.5 s doubling to 30 s). Events carry
//! their `id`, so a receiver can drop the rare duplicate of a batch that
//! was delivered just before a crash; the JSON-lines sink drops those
//! itself by checking the last id in its file. Sinks never touch the data
//! path: a dead sink only falls behind.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_model::event::Event;
use gatehouse_model::SinkConfig;
use gatehouse_store::Store;
use tokio::io::AsyncWriteExt;

const BATCH: i64 = 500;
const IDLE_POLL: Duration = Duration::from_millis(300);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {name}: {message}")]
    Config { name: String, message: String },
    #[error("{0}")]
    Delivery(String),
}

enum Target {
    Jsonl { path: PathBuf, max_bytes: u64 },
    SyslogUdp(String),
    SyslogTcp(String),
}

pub struct Sink {
    name: String,
    only_alerts: bool,
    target: Target,
    tcp: Option<tokio::net::TcpStream>,
}

impl Sink {
    pub fn new(cfg: &SinkConfig) -> Result<Sink, SinkError> {
        let bad = |m: &str| SinkError::Config {
            name: cfg.name.clone(),
            message: m.to_string(),
        };
        let target = match cfg.kind.as_str() {
            "jsonl" => Target::Jsonl {
                path: cfg.path.clone().ok_or_else(|| bad("a jsonl sink needs path = \"FILE\""))?,
                max_bytes: cfg.max_bytes.unwrap_or(100 * 1024 * 1024),
            },
            "syslog" => {
                let url = cfg.url.clone().ok_or_else(|| bad("a syslog sink needs url = \"udp://HOST:PORT\" or \"tcp://HOST:PORT\""))?;
                if let Some(a) = url.strip_prefix("udp://") {
                    Target::SyslogUdp(a.to_string())
                } else if let Some(a) = url.strip_prefix("tcp://") {
                    Target::SyslogTcp(a.to_string())
                } else {
                    return Err(bad("syslog url must start with udp:// or tcp://"));
                }
            }
            other => {
                return Err(bad(&format!(
                    "kind {other:?} is not supported by this build yet (supported: jsonl, syslog); remove the sink or change its kind"
                )))
            }
        };
        Ok(Sink {
            name: cfg.name.clone(),
            only_alerts: cfg.only_alerts,
            target,
            tcp: None,
        })
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self, store: Store) {
        let mut cursor = match store.sink_cursor(&self.name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot read the sink cursor; starting from the beginning");
                0
            }
        };
        let mut backoff = Duration::from_millis(500);
        loop {
            let batch = match store.events_after(cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "cannot read events");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let Some((last, _)) = batch.last() else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            let last = *last;
            let events: Vec<&Event> = batch
                .iter()
                .map(|(_, e)| e)
                .filter(|e| !self.only_alerts || e.event.kind == "alert")
                .collect();
            match self.deliver(&events).await {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    cursor = last;
                    if let Err(e) = store.set_sink_cursor(&self.name, cursor).await {
                        tracing::warn!(sink = %self.name, error = %e, "cannot save the sink cursor");
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, retry_in = ?backoff, "delivery failed; will retry");
                    self.tcp = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn deliver(&mut self, events: &[&Event]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let err = |e: std::io::Error| SinkError::Delivery(e.to_string());
        match &self.target {
            Target::Jsonl { path, max_bytes } => {
                let last_id = last_id_in(path).await;
                // Skip what the file already holds (a batch written just
                // before a crash, before its cursor was saved).
                let skip = last_id
                    .and_then(|id| events.iter().position(|e| e.event.id == id).map(|i| i + 1))
                    .unwrap_or(0);
                let mut text = String::new();
                for e in &events[skip..] {
                    text.push_str(
                        &serde_json::to_string(e)
                            .map_err(|e| SinkError::Delivery(e.to_string()))?,
                    );
                    text.push('\n');
                }
                if let Ok(meta) = tokio::fs::metadata(path).await {
                    if meta.len() + text.len() as u64 > *max_bytes {
                        let rotated = path.with_extension(format!(
                            "{}.1",
                            path.extension().and_then(|x| x.to_str()).unwrap_or("jsonl")
                        ));
                        tokio::fs::rename(path, rotated).await.map_err(err)?;
                    }
                }
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(err)?;
                f.write_all(text.as_bytes()).await.map_err(err)?;
                f.sync_data().await.map_err(err)?;
                Ok(())
            }
            Target::SyslogUdp(addr) => {
                let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
                    .await
                    .map_err(err)?;
                for e in events {
                    sock.send_to(syslog_line(e).as_bytes(), addr)
                        .await
                        .map_err(err)?;
                }
                Ok(())
            }
            Target::SyslogTcp(addr) => {
                // A receiver sends nothing on syslog TCP: if the socket is
                // readable, the receiver closed it, and writing would only
                // fill a dead connection's buffer. Reconnect first.
                if let Some(stream) = self.tcp.as_ref() {
                    let mut probe = [0u8; 1];
                    match stream.try_read(&mut probe) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => self.tcp = None,
                    }
                }
                if self.tcp.is_none() {
                    let s = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    .map_err(|_| SinkError::Delivery(format!("connect to {addr} timed out")))?
                    .map_err(err)?;
                    self.tcp = Some(s);
                }
                let Some(stream) = self.tcp.as_mut() else {
                    return Err(SinkError::Delivery("no connection".into()));
                };
                let mut buf = Vec::new();
                for e in events {
                    // RFC 6587 octet counting.
                    let line = syslog_line(e);
                    buf.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
                }
                stream.write_all(&buf).await.map_err(err)?;
                stream.flush().await.map_err(err)?;
                Ok(())
            }
        }
    }
}

/// The id in the last complete line of a JSON-lines file.
async fn last_id_in(path: &std::path::Path) -> Option<String> {
    let text = tokio::fs::read(path).await.ok()?;
    let end = text.len().saturating_sub(64 * 1024);
    let tail = String::from_utf8_lossy(&text[end..]).to_string();
    let line = tail.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("id")?.as_str().map(str::to_string)
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG`, facility
/// local0, the event as JSON for the message.
pub fn syslog_line(e: &Event) -> String {
    use gatehouse_model::Severity;
    let sev = match e.event.severity {
        Severity::Info => 6,
        Severity::Warn => 4,
        Severity::High => 3,
        Severity::Critical => 2,
    };
    let pri = 16 * 8 + sev;
    let json = serde_json::to_string(e).unwrap_or_default();
    format!(
        "<{pri}>1 {} {} gatehouse - {} - {json}",
        e.event.time, e.event.node, e.event.kind
    )
}

/// Validates sink definitions (for `gatehouse check`).
pub fn check(configs: &[SinkConfig]) -> Vec<String> {
    configs
        .iter()
        .filter_map(|c| Sink::new(c).err().map(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_model::{NewEvent, Outcome, Severity};

    #[test]
    fn syslog_lines_follow_rfc5424() {
        let ev = Event {
            event: NewEvent::new("auth.failure", Severity::Warn, Outcome::Failure, "gw1"),
            prev_hash: "0".into(),
            hash: "1".into(),
        };
        let line = syslog_line(&ev);
        assert!(line.starts_with("<132>1 "), "{line}");
        assert!(line.contains(" gw1 gatehouse - auth.failure - {"), "{line}");
        assert!(line.contains(&ev.event.id));
    }
}
