//! Sinks: every event (or only alerts) forwarded to a JSON-lines file,
//! syslog (RFC 5424 over UDP or TCP), a PostgreSQL table, or over HTTP(S)
//! as a webhook (JSON with a Slack-compatible `text`), Elasticsearch
//! `_bulk` NDJSON or Splunk HEC. The HTTP sinks share one client type
//! ([`http::Client`]: reqwest over rustls, kept-alive connections, proxies
//! from the environment, timeouts, no redirects).
//!
//! Each sink is a task that reads the event log after its cursor, delivers
//! a batch, and only then advances the cursor, which lives in the store:
//! after an outage or a restart it resumes where it left off. Delivery is
//! retried with exponential backoff (0.5 s doubling to 30 s). Events carry
//! their `id`, so a receiver can drop the rare duplicate of a batch that
//! was delivered just before a crash; the JSON-lines sink drops those
//! itself by checking the last id in its file. Sinks never touch the data
//! path: a dead sink only falls behind.
//!
//! A receiver that takes part of a batch (Elasticsearch answers per
//! document) is retried with only the documents it may still take; the
//! ones it rejected for good go to the sink's dead-letter file with a
//! `sink.dead_letter` event ([`dead_letter`]), so one bad document never
//! stalls the sink.

mod dead_letter;
mod elasticsearch;
mod http;
mod jsonl;
mod lake;
mod postgres;
mod syslog;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_model::config::SinkFormat;
use gatehouse_model::event::Event;
use gatehouse_model::{SinkConfig, SinkKind};
use gatehouse_store::Store;

pub use syslog::syslog_line;

const BATCH: i64 = 2000;
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
    Jsonl {
        path: PathBuf,
        max_bytes: u64,
    },
    SyslogUdp(String),
    SyslogTcp(String),
    /// A `gatehouse_events` table in another PostgreSQL database.
    Postgres {
        url: String,
        pool: Option<sqlx::PgPool>,
    },
    /// JSON with a Slack-compatible `text`, one POST per batch.
    Webhook {
        client: http::Client,
        token: Option<String>,
    },
    /// `_bulk` NDJSON; rejected documents go to `dead_letter`.
    Elasticsearch {
        client: http::Client,
        token: Option<String>,
        dead_letter: PathBuf,
    },
    SplunkHec {
        client: http::Client,
        token: String,
    },
    /// `PutAuditEvents` calls; events that keep failing go to
    /// `dead_letter`.
    CloudtrailLake {
        channel: lake::Channel,
        dead_letter: PathBuf,
    },
}

/// What a sink would send: where, and the exact text.
pub struct Preview {
    /// `POST URL` (without credentials), a file, or a syslog address.
    pub to: String,
    pub body: String,
}

/// What a delivery achieved.
enum Delivered {
    /// Every event reached the receiver or the dead-letter file.
    All,
    /// The receiver asks for these events again (429, 5xx items).
    Partly { retry: HashSet<String>, why: String },
}

/// What a sink sends for an event: the event itself, or its CloudTrail
/// record with `eventSource` = `server.service_name`.
pub struct Shape {
    format: SinkFormat,
    service_name: String,
}

impl Shape {
    fn document(&self, e: &Event) -> serde_json::Value {
        match self.format {
            SinkFormat::Gatehouse => serde_json::to_value(e).unwrap_or_default(),
            SinkFormat::Cloudtrail => gatehouse_model::cloudtrail::record(e, &self.service_name),
        }
    }
}

pub struct Sink {
    name: String,
    only_alerts: bool,
    /// `server.node`, for the events the sink itself writes.
    node: String,
    shape: Shape,
    target: Target,
    tcp: Option<tokio::net::TcpStream>,
    /// After a partial delivery: the batch's last seq, and the ids in it
    /// still to deliver.
    retry_only: Option<(i64, HashSet<String>)>,
}

impl Sink {
    pub fn new(cfg: &SinkConfig) -> Result<Sink, SinkError> {
        let bad = |m: String| SinkError::Config {
            name: cfg.name.clone(),
            message: m,
        };
        let target = match &cfg.kind {
            SinkKind::Jsonl {
                path, max_bytes, ..
            } => Target::Jsonl {
                path: path.clone(),
                max_bytes: *max_bytes,
            },
            SinkKind::Syslog { url, .. } => {
                if let Some(a) = url.strip_prefix("udp://") {
                    Target::SyslogUdp(a.to_string())
                } else if let Some(a) = url.strip_prefix("tcp://") {
                    Target::SyslogTcp(a.to_string())
                } else {
                    return Err(bad("syslog url must start with udp:// or tcp://".into()));
                }
            }
            SinkKind::Postgres { url } => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(bad(
                        "a postgres sink needs url = \"postgres://USER@HOST/DB\"".into(),
                    ));
                }
                Target::Postgres {
                    url: url.clone(),
                    pool: None,
                }
            }
            SinkKind::Webhook {
                url,
                token,
                ca_file,
                ..
            } => Target::Webhook {
                client: http::Client::new(url, ca_file.as_deref()).map_err(bad)?,
                token: token.clone(),
            },
            SinkKind::Elasticsearch {
                url,
                token,
                ca_file,
                dead_letter_file,
                ..
            } => Target::Elasticsearch {
                client: http::Client::new(url, ca_file.as_deref()).map_err(bad)?,
                token: token.clone(),
                dead_letter: dead_letter_file.clone().unwrap_or_else(|| {
                    gatehouse_model::config::default_dead_letter_file(&cfg.name)
                }),
            },
            SinkKind::SplunkHec {
                url,
                token,
                ca_file,
                ..
            } => Target::SplunkHec {
                client: http::Client::new(url, ca_file.as_deref()).map_err(bad)?,
                token: token.clone(),
            },
            SinkKind::CloudtrailLake {
                channel_arn,
                region,
                endpoint_url,
                external_id,
                ca_file,
                dead_letter_file,
            } => Target::CloudtrailLake {
                channel: lake::Channel::new(
                    channel_arn,
                    region.as_deref(),
                    endpoint_url.as_deref(),
                    external_id.as_deref(),
                    ca_file.as_deref(),
                )
                .map_err(bad)?,
                dead_letter: dead_letter_file.clone().unwrap_or_else(|| {
                    gatehouse_model::config::default_dead_letter_file(&cfg.name)
                }),
            },
        };
        Ok(Sink {
            name: cfg.name.clone(),
            only_alerts: cfg.only_alerts,
            node: "gatehouse".into(),
            shape: Shape {
                format: format_of(&cfg.kind),
                service_name: gatehouse_model::cloudtrail::DEFAULT_SERVICE_NAME.into(),
            },
            target,
            tcp: None,
            retry_only: None,
        })
    }

    /// The node name (`server.node`) on the events the sink writes
    /// (`sink.dead_letter`).
    pub fn node(mut self, node: &str) -> Sink {
        self.node = node.to_string();
        self
    }

    /// `server.service_name`, the `eventSource` of CloudTrail records.
    pub fn service_name(mut self, name: &str) -> Sink {
        self.shape.service_name = name.to_string();
        self
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
            let Some((newest, _)) = batch.last() else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            // A partly delivered batch is finished first, and only with
            // what the receiver asked for again.
            let (last, retry) = match &self.retry_only {
                Some((upto, ids)) => (*upto, Some(ids)),
                None => (*newest, None),
            };
            let events: Vec<&Event> = batch
                .iter()
                .filter(|(seq, _)| *seq <= last)
                .map(|(_, e)| e)
                .filter(|e| !self.only_alerts || routed_here(e, &self.name))
                .filter(|e| retry.is_none_or(|ids| ids.contains(&e.event.id)))
                .collect();
            let failure = match self.deliver(&store, &events).await {
                Ok(Delivered::All) => {
                    backoff = Duration::from_millis(500);
                    self.retry_only = None;
                    cursor = last;
                    if let Err(e) = store.set_sink_cursor(&self.name, cursor).await {
                        tracing::warn!(sink = %self.name, error = %e, "cannot save the sink cursor");
                    }
                    continue;
                }
                Ok(Delivered::Partly { retry, why }) => {
                    self.retry_only = Some((last, retry));
                    why
                }
                Err(e) => {
                    self.tcp = None;
                    if let Target::Postgres { pool, .. } = &mut self.target {
                        *pool = None;
                    }
                    e.to_string()
                }
            };
            tracing::warn!(sink = %self.name, error = %failure, retry_in = ?backoff, "delivery failed; will retry");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn deliver(&mut self, store: &Store, events: &[&Event]) -> Result<Delivered, SinkError> {
        if events.is_empty() {
            return Ok(Delivered::All);
        }
        let shape = &self.shape;
        match &mut self.target {
            Target::Jsonl { path, max_bytes } => {
                jsonl::deliver(path, *max_bytes, shape, events).await?
            }
            Target::Postgres { url, pool } => postgres::deliver(url, pool, events).await?,
            Target::SyslogUdp(addr) => syslog::deliver_udp(addr, shape, events).await?,
            Target::SyslogTcp(addr) => {
                syslog::deliver_tcp(&mut self.tcp, addr, shape, events).await?
            }
            Target::Webhook { client, token } => {
                let headers = bearer(token.as_deref());
                client
                    .post(&client.url, &headers, webhook_body(shape, events))
                    .await?;
            }
            Target::SplunkHec { client, token } => {
                let headers = [
                    ("content-type", "application/json".to_string()),
                    ("authorization", format!("Splunk {token}")),
                ];
                client
                    .post(&client.url, &headers, splunk_body(shape, events))
                    .await?;
            }
            Target::Elasticsearch {
                client,
                token,
                dead_letter,
            } => {
                let letters = dead_letter::DeadLetters {
                    sink: &self.name,
                    kind: "elasticsearch",
                    node: &self.node,
                    path: dead_letter,
                };
                return deliver_elasticsearch(
                    client,
                    token.as_deref(),
                    &letters,
                    shape,
                    store,
                    events,
                )
                .await;
            }
            Target::CloudtrailLake {
                channel,
                dead_letter,
            } => {
                let letters = dead_letter::DeadLetters {
                    sink: &self.name,
                    kind: "cloudtrail_lake",
                    node: &self.node,
                    path: dead_letter,
                };
                return deliver_lake(channel, &letters, shape, store, events).await;
            }
        }
        Ok(Delivered::All)
    }

    /// The events after the sink's cursor (at most `limit`) that it
    /// would send next.
    async fn next_events(&self, store: &Store, limit: i64) -> Result<(i64, Vec<Event>), SinkError> {
        let db = |e: gatehouse_store::StoreError| SinkError::Delivery(e.to_string());
        let cursor = store.sink_cursor(&self.name).await.map_err(db)?;
        let batch = store.events_after(cursor, limit).await.map_err(db)?;
        let last = batch.last().map_or(cursor, |(seq, _)| *seq);
        let events = batch
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !self.only_alerts || routed_here(e, &self.name))
            .collect();
        Ok((last, events))
    }

    /// What the sink would send next (at most `limit` events after its
    /// cursor), exactly, without sending it or moving the cursor.
    pub async fn dry_run(&self, store: &Store, limit: i64) -> Result<Vec<Preview>, SinkError> {
        let (_, events) = self.next_events(store, limit).await?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events: Vec<&Event> = events.iter().collect();
        Ok(self.preview(&events))
    }

    /// Delivers the events after the cursor (at most `limit`) once, as
    /// the running sink would, and moves the cursor past them when they
    /// all arrived (or went to the dead-letter file). Returns how many.
    pub async fn send_next(&mut self, store: &Store, limit: i64) -> Result<usize, SinkError> {
        let (last, events) = self.next_events(store, limit).await?;
        let refs: Vec<&Event> = events.iter().collect();
        match self.deliver(store, &refs).await? {
            Delivered::All => {}
            Delivered::Partly { why, .. } => return Err(SinkError::Delivery(why)),
        }
        store
            .set_sink_cursor(&self.name, last)
            .await
            .map_err(|e| SinkError::Delivery(e.to_string()))?;
        Ok(events.len())
    }

    fn preview(&self, events: &[&Event]) -> Vec<Preview> {
        let shape = &self.shape;
        let lines = |f: &dyn Fn(&Event) -> String| {
            events.iter().map(|e| f(e)).collect::<Vec<_>>().join("\n")
        };
        let post = |client: &http::Client, body: Vec<u8>| Preview {
            to: format!("POST {}{}", http::origin(&client.url), client.url.path()),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        match &self.target {
            Target::Jsonl { path, .. } => vec![Preview {
                to: path.display().to_string(),
                body: lines(&|e| shape.document(e).to_string()),
            }],
            Target::SyslogUdp(a) | Target::SyslogTcp(a) => vec![Preview {
                to: a.clone(),
                body: lines(&|e| syslog::line(e, shape)),
            }],
            Target::Postgres { .. } => vec![Preview {
                to: "table gatehouse_events".into(),
                body: lines(&|e| serde_json::to_string(e).unwrap_or_default()),
            }],
            Target::Webhook { client, .. } => vec![post(client, webhook_body(shape, events))],
            Target::SplunkHec { client, .. } => vec![post(client, splunk_body(shape, events))],
            Target::Elasticsearch { client, .. } => {
                let docs: Vec<(&str, String)> = events
                    .iter()
                    .map(|e| (e.event.id.as_str(), shape.document(e).to_string()))
                    .collect();
                vec![post(client, elasticsearch::body(&docs))]
            }
            Target::CloudtrailLake { channel, .. } => channel
                .bodies(&shape.service_name, events)
                .into_iter()
                .map(|(_, body)| Preview {
                    to: format!("POST {}", channel.url),
                    body,
                })
                .collect(),
        }
    }
}

fn io_error(e: std::io::Error) -> SinkError {
    SinkError::Delivery(e.to_string())
}

/// `content-type: application/json` and the bearer token, if any.
fn bearer(token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("content-type", "application/json".to_string())];
    if let Some(t) = token {
        h.push(("authorization", format!("Bearer {t}")));
    }
    h
}

/// One `_bulk` request; stored documents are done, rejected ones go to
/// the dead-letter file, and those answered 429/5xx are asked for again.
async fn deliver_elasticsearch(
    client: &http::Client,
    token: Option<&str>,
    letters: &dead_letter::DeadLetters<'_>,
    shape: &Shape,
    store: &Store,
    events: &[&Event],
) -> Result<Delivered, SinkError> {
    let docs: Vec<(&str, String)> = events
        .iter()
        .map(|e| (e.event.id.as_str(), shape.document(e).to_string()))
        .collect();
    let mut headers = bearer(token);
    headers[0].1 = "application/x-ndjson".into();
    let answer = client
        .post(&client.url, &headers, elasticsearch::body(&docs))
        .await?;
    let ids: Vec<&str> = docs.iter().map(|(id, _)| *id).collect();
    let items = elasticsearch::items(&answer.body, &ids).map_err(|m| {
        SinkError::Delivery(format!(
            "{} (HTTP {}): {m}",
            http::origin(&client.url),
            answer.status
        ))
    })?;
    let mut retry = HashSet::new();
    let mut rejected = Vec::new();
    for (e, item) in events.iter().zip(items) {
        match item {
            elasticsearch::Item::Stored => {}
            elasticsearch::Item::Retry(_) => {
                retry.insert(e.event.id.clone());
            }
            elasticsearch::Item::Rejected(status, error) => rejected.push(dead_letter::Rejected {
                event: e,
                sent: shape.document(e),
                status: Some(status),
                error,
            }),
        }
    }
    letters.record(store, &rejected).await?;
    if retry.is_empty() {
        return Ok(Delivered::All);
    }
    let why = format!(
        "{} answered 429 or 5xx for {} of {} documents; retrying those",
        http::origin(&client.url),
        retry.len(),
        events.len()
    );
    Ok(Delivered::Partly { retry, why })
}

/// `PutAuditEvents` calls in order. Events the channel took are done;
/// failed ones are asked for again, and after [`lake::MAX_ATTEMPTS`]
/// failures go to the dead-letter file. A call that fails as a whole
/// after others went through leaves its events and the rest for the
/// retry, so nothing is sent twice.
async fn deliver_lake(
    channel: &mut lake::Channel,
    letters: &dead_letter::DeadLetters<'_>,
    shape: &Shape,
    store: &Store,
    events: &[&Event],
) -> Result<Delivered, SinkError> {
    let by_id: HashMap<&str, &Event> = events.iter().map(|e| (e.event.id.as_str(), *e)).collect();
    let mut retry = HashSet::new();
    let mut rejected = Vec::new();
    let mut refused = Vec::new();
    let mut broken: Option<String> = None;
    let mut sent_any = false;
    for (ids, body) in channel.bodies(&shape.service_name, events) {
        if broken.is_some() {
            retry.extend(ids);
            continue;
        }
        let (ok, failed) = match channel.put(&ids, body).await {
            Ok(answer) => answer,
            Err(e) if !sent_any => return Err(e),
            Err(e) => {
                broken = Some(e.to_string());
                retry.extend(ids);
                continue;
            }
        };
        sent_any = true;
        for id in &ok {
            channel.attempts.remove(id);
        }
        for (id, error) in failed {
            let n = channel.attempts.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n < lake::MAX_ATTEMPTS {
                refused.push(format!("{id} ({error})"));
                retry.insert(id);
                continue;
            }
            channel.attempts.remove(&id);
            let Some(e) = by_id.get(id.as_str()) else {
                continue;
            };
            let record = gatehouse_model::cloudtrail::record(e, &shape.service_name);
            rejected.push(dead_letter::Rejected {
                event: e,
                sent: lake::event_data(&record, &channel.account),
                status: None,
                error,
            });
        }
    }
    letters.record(store, &rejected).await?;
    if retry.is_empty() {
        return Ok(Delivered::All);
    }
    let why = broken.unwrap_or_else(|| {
        format!(
            "{}: the channel refused {} event(s), e.g. {}; retrying those",
            http::origin(&channel.url),
            refused.len(),
            refused.first().map_or("", String::as_str)
        )
    });
    Ok(Delivered::Partly { retry, why })
}

/// An alert goes to an alerts-only sink when its rule names no sinks or
/// names this one.
fn routed_here(e: &Event, sink: &str) -> bool {
    if e.event.kind != "alert" {
        return false;
    }
    match e.event.details.get("sinks").and_then(|s| s.as_array()) {
        Some(list) if !list.is_empty() => list.iter().any(|s| s.as_str() == Some(sink)),
        _ => true,
    }
}

/// The `format` of a sink kind that has one.
fn format_of(kind: &SinkKind) -> SinkFormat {
    match kind {
        SinkKind::Jsonl { format, .. }
        | SinkKind::Syslog { format, .. }
        | SinkKind::Webhook { format, .. }
        | SinkKind::Elasticsearch { format, .. }
        | SinkKind::SplunkHec { format, .. } => *format,
        // Lake takes CloudTrail records only; a table keeps events.
        SinkKind::Postgres { .. } => SinkFormat::Gatehouse,
        SinkKind::CloudtrailLake { .. } => SinkFormat::Cloudtrail,
    }
}

/// One JSON object per batch; `text` makes it a valid Slack
/// incoming-webhook message too.
fn webhook_body(shape: &Shape, events: &[&Event]) -> Vec<u8> {
    let text = events
        .iter()
        .map(|e| {
            format!(
                "[{}] {} {} {}{}",
                e.event.severity.as_str(),
                e.event.kind,
                e.event.user.as_deref().unwrap_or("-"),
                e.event.target.as_deref().unwrap_or("-"),
                e.event
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let docs: Vec<serde_json::Value> = events.iter().map(|e| shape.document(e)).collect();
    serde_json::json!({ "text": text, "events": docs })
        .to_string()
        .into_bytes()
}

/// HEC events, concatenated; CloudTrail records as sourcetype
/// `aws:cloudtrail`, the one Splunk's AWS add-on reads them as.
fn splunk_body(shape: &Shape, events: &[&Event]) -> Vec<u8> {
    let sourcetype = match shape.format {
        SinkFormat::Gatehouse => "gatehouse",
        SinkFormat::Cloudtrail => "aws:cloudtrail",
    };
    let mut body = String::new();
    for e in events {
        body.push_str(
            &serde_json::json!({ "event": shape.document(e), "sourcetype": sourcetype, "source": e.event.node })
                .to_string(),
        );
    }
    body.into_bytes()
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
    fn http_urls_and_their_ca_files() {
        let cfg = |url: &str, ca: Option<&str>| SinkConfig {
            name: "s".into(),
            only_alerts: false,
            kind: SinkKind::Webhook {
                url: url.into(),
                token: None,
                ca_file: ca.map(PathBuf::from),
                format: SinkFormat::Gatehouse,
            },
        };
        assert!(Sink::new(&cfg("https://h/x", None)).is_ok());
        assert!(Sink::new(&cfg("http://[::1]:9200/_bulk", None)).is_ok());
        let e = Sink::new(&cfg("ftp://h/x", None))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("http:// or https://"), "{e}");
        let e = Sink::new(&cfg("https://h/x", Some("/nonexistent/ca.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read ca_file /nonexistent/ca.pem"), "{e}");
        let e = Sink::new(&cfg("http://h/x", Some("/tmp/ca.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("https:// urls only"), "{e}");
    }

    #[test]
    fn alerts_only_sinks_take_the_alerts_routed_to_them() {
        let alert = |sinks: serde_json::Value| Event {
            event: NewEvent::new("alert", Severity::High, Outcome::Success, "gw1")
                .details(serde_json::json!({ "sinks": sinks })),
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert!(routed_here(&alert(serde_json::json!([])), "siem"));
        assert!(routed_here(&alert(serde_json::json!(["siem"])), "siem"));
        assert!(!routed_here(&alert(serde_json::json!(["pager"])), "siem"));
        let other = Event {
            event: NewEvent::new("command", Severity::Info, Outcome::Success, "gw1"),
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert!(!routed_here(&other, "siem"));
    }

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
