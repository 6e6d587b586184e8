//! Sinks: every event (or only alerts) forwarded to a JSON-lines file,
//! syslog (RFC 5424 over UDP or TCP), or over HTTP(S) as a webhook (JSON
//! with a Slack-compatible `text`), Elasticsearch `_bulk` NDJSON or Splunk
//! HEC. HTTPS verifies the server against the public web roots plus the
//! sink's `ca_file` (rustls with the ring provider).
//!
//! Each sink is a task that reads the event log after its cursor, delivers
//! a batch, and only then advances the cursor, which lives in the store:
//! after an outage or a restart it resumes where it left off. Delivery is
//! retried with exponential backoff (0.5 s doubling to 30 s). Events carry
//! their `id`, so a receiver can drop the rare duplicate of a batch that
//! was delivered just before a crash; the JSON-lines sink drops those
//! itself by checking the last id in its file. Sinks never touch the data
//! path: a dead sink only falls behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::event::Event;
use gatehouse_model::{SinkConfig, SinkKind};
use gatehouse_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

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
    /// webhook, elasticsearch (`_bulk`), splunk_hec: an HTTP POST per batch.
    Http {
        kind: HttpKind,
        url: HttpUrl,
        token: Option<String>,
        /// Set for `https://`.
        tls: Option<tokio_rustls::TlsConnector>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpKind {
    Webhook,
    Elasticsearch,
    SplunkHec,
}

struct HttpUrl {
    host_port: String,
    host: String,
    path: String,
    https: bool,
}

/// `http://HOST[:PORT]/PATH` or `https://...`.
fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err("the url must start with http:// or https://".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("the url has no host".into());
    }
    let host = authority.split(':').next().unwrap_or(authority).to_string();
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    Ok(HttpUrl {
        host_port,
        host,
        path: path.to_string(),
        https,
    })
}

/// A TLS client that trusts the public web roots and the certificates in
/// `ca_file`.
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file {} is not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One HTTP/1.1 exchange with `Connection: close`: the whole response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(request).await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut response = Vec::new();
    match s.read_to_end(&mut response).await {
        Ok(_) => Ok(response),
        // A TLS server that closes without close_notify: the response is
        // still whole (Connection: close).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(e),
    }
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
        let target = match &cfg.kind {
            SinkKind::Jsonl { path, max_bytes } => Target::Jsonl {
                path: path.clone(),
                max_bytes: *max_bytes,
            },
            SinkKind::Syslog { url } => {
                if let Some(a) = url.strip_prefix("udp://") {
                    Target::SyslogUdp(a.to_string())
                } else if let Some(a) = url.strip_prefix("tcp://") {
                    Target::SyslogTcp(a.to_string())
                } else {
                    return Err(bad("syslog url must start with udp:// or tcp://"));
                }
            }
            SinkKind::Postgres { url } => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(bad(
                        "a postgres sink needs url = \"postgres://USER@HOST/DB\"",
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
            } => http_target(HttpKind::Webhook, url, token.clone(), ca_file.as_deref())
                .map_err(|m| bad(&m))?,
            SinkKind::Elasticsearch {
                url,
                token,
                ca_file,
            } => http_target(
                HttpKind::Elasticsearch,
                url,
                token.clone(),
                ca_file.as_deref(),
            )
            .map_err(|m| bad(&m))?,
            SinkKind::SplunkHec {
                url,
                token,
                ca_file,
            } => http_target(
                HttpKind::SplunkHec,
                url,
                Some(token.clone()),
                ca_file.as_deref(),
            )
            .map_err(|m| bad(&m))?,
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
                .filter(|e| !self.only_alerts || routed_here(e, &self.name))
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
                    if let Target::Postgres { pool, .. } = &mut self.target {
                        *pool = None;
                    }
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
        match &mut self.target {
            Target::Jsonl { path, max_bytes } => deliver_jsonl(path, *max_bytes, events).await,
            Target::Postgres { url, pool } => deliver_postgres(url, pool, events).await,
            Target::Http {
                kind,
                url,
                token,
                tls,
            } => deliver_http(*kind, url, token.as_deref(), tls.as_ref(), events).await,
            Target::SyslogUdp(addr) => deliver_syslog_udp(addr, events).await,
            Target::SyslogTcp(addr) => deliver_syslog_tcp(&mut self.tcp, addr, events).await,
        }
    }
}

/// An HTTP target (webhook, elasticsearch, splunk_hec): a TLS client for
/// `https://`, and `ca_file` only with it.
fn http_target(
    kind: HttpKind,
    url: &str,
    token: Option<String>,
    ca_file: Option<&Path>,
) -> Result<Target, String> {
    let url = parse_http_url(url)?;
    let tls = if url.https {
        Some(tls_connector(ca_file)?)
    } else {
        if ca_file.is_some() {
            return Err("ca_file applies to https:// urls only".into());
        }
        None
    };
    Ok(Target::Http {
        kind,
        url,
        token,
        tls,
    })
}

fn io_error(e: std::io::Error) -> SinkError {
    SinkError::Delivery(e.to_string())
}

/// Appends the batch to the JSON-lines file, rotating it beyond
/// `max_bytes`.
async fn deliver_jsonl(path: &Path, max_bytes: u64, events: &[&Event]) -> Result<(), SinkError> {
    let last_id = last_id_in(path).await;
    // Skip what the file already holds (a batch written just
    // before a crash, before its cursor was saved).
    let skip = last_id
        .and_then(|id| events.iter().position(|e| e.event.id == id).map(|i| i + 1))
        .unwrap_or(0);
    let mut text = String::new();
    for e in &events[skip..] {
        text.push_str(&serde_json::to_string(e).map_err(|e| SinkError::Delivery(e.to_string()))?);
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

/// Inserts the batch into `gatehouse_events`, connecting (and creating the
/// table) first when there is no pool.
async fn deliver_postgres(
    url: &str,
    pool: &mut Option<sqlx::PgPool>,
    events: &[&Event],
) -> Result<(), SinkError> {
    let db = |e: sqlx::Error| SinkError::Delivery(e.to_string());
    if pool.is_none() {
        let p = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(db)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS gatehouse_events (id TEXT PRIMARY KEY, time TEXT NOT NULL, type TEXT NOT NULL, event JSONB NOT NULL)",
        )
        .execute(&p)
        .await
        .map_err(db)?;
        *pool = Some(p);
    }
    let Some(p) = pool.as_ref() else {
        return Err(SinkError::Delivery("no connection".into()));
    };
    let mut tx = p.begin().await.map_err(db)?;
    for e in events {
        // The event id as key: re-delivery changes nothing.
        sqlx::query(
            "INSERT INTO gatehouse_events (id, time, type, event) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&e.event.id)
        .bind(&e.event.time)
        .bind(&e.event.kind)
        .bind(serde_json::to_string(e).unwrap_or_default())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// POSTs the batch; anything but a 2xx (or an Elasticsearch bulk
/// response with errors) is a failed delivery.
async fn deliver_http(
    kind: HttpKind,
    url: &HttpUrl,
    token: Option<&str>,
    tls: Option<&tokio_rustls::TlsConnector>,
    events: &[&Event],
) -> Result<(), SinkError> {
    let (body, content_type) = http_body(kind, events);
    let auth = match (kind, token) {
        (HttpKind::SplunkHec, Some(t)) => format!("Authorization: Splunk {t}\r\n"),
        (_, Some(t)) => format!("Authorization: Bearer {t}\r\n"),
        _ => String::new(),
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        url.path,
        url.host,
        body.len()
    );
    let io = async {
        let tcp = tokio::net::TcpStream::connect(&url.host_port).await?;
        match tls {
            Some(connector) => {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let s = connector.connect(name, tcp).await?;
                exchange(s, request.as_bytes(), body.as_bytes()).await
            }
            None => exchange(tcp, request.as_bytes(), body.as_bytes()).await,
        }
    };
    let response = tokio::time::timeout(Duration::from_secs(15), io)
        .await
        .map_err(|_| SinkError::Delivery(format!("{} did not answer in 15 s", url.host_port)))?
        .map_err(io_error)?;
    let status = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    if !status.starts_with('2') {
        return Err(SinkError::Delivery(format!(
            "{} answered HTTP {status}",
            url.host_port
        )));
    }
    // Elasticsearch reports per-document failures in a 200.
    if kind == HttpKind::Elasticsearch
        && String::from_utf8_lossy(&response).contains("\"errors\":true")
    {
        return Err(SinkError::Delivery(
            "elasticsearch reported errors in the bulk response".into(),
        ));
    }
    Ok(())
}

/// One datagram per event.
async fn deliver_syslog_udp(addr: &str, events: &[&Event]) -> Result<(), SinkError> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(io_error)?;
    for e in events {
        sock.send_to(syslog_line(e).as_bytes(), addr)
            .await
            .map_err(io_error)?;
    }
    Ok(())
}

/// The batch over the sink's TCP connection (RFC 6587 octet counting),
/// reconnecting when there is none or the receiver closed it.
async fn deliver_syslog_tcp(
    tcp: &mut Option<tokio::net::TcpStream>,
    addr: &str,
    events: &[&Event],
) -> Result<(), SinkError> {
    // A receiver sends nothing on syslog TCP: if the socket is
    // readable, the receiver closed it, and writing would only
    // fill a dead connection's buffer. Reconnect first.
    if let Some(stream) = tcp.as_ref() {
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => *tcp = None,
        }
    }
    if tcp.is_none() {
        let s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| SinkError::Delivery(format!("connect to {addr} timed out")))?
            .map_err(io_error)?;
        *tcp = Some(s);
    }
    let Some(stream) = tcp.as_mut() else {
        return Err(SinkError::Delivery("no connection".into()));
    };
    let mut buf = Vec::new();
    for e in events {
        // RFC 6587 octet counting.
        let line = syslog_line(e);
        buf.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
    }
    stream.write_all(&buf).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    Ok(())
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

/// The request body for a batch, and its content type.
fn http_body(kind: HttpKind, events: &[&Event]) -> (String, &'static str) {
    match kind {
        HttpKind::Webhook => {
            // One JSON object per batch; `text` makes it a valid Slack
            // incoming-webhook message too.
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
            let body = serde_json::json!({ "text": text, "events": events });
            (body.to_string(), "application/json")
        }
        HttpKind::Elasticsearch => {
            // _bulk NDJSON; the event id as _id makes re-delivery idempotent.
            let mut body = String::new();
            for e in events {
                body.push_str(&serde_json::json!({ "index": { "_id": e.event.id } }).to_string());
                body.push('\n');
                body.push_str(&serde_json::to_string(e).unwrap_or_default());
                body.push('\n');
            }
            (body, "application/x-ndjson")
        }
        HttpKind::SplunkHec => {
            let mut body = String::new();
            for e in events {
                body.push_str(
                    &serde_json::json!({ "event": e, "sourcetype": "gatehouse", "source": e.event.node })
                        .to_string(),
                );
            }
            (body, "application/json")
        }
    }
}

/// The id in the last complete line of a JSON-lines file (reads only
/// the file's tail).
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
    fn https_urls_and_their_ca_files() {
        let u = parse_http_url("https://es.example/gh/_bulk").unwrap();
        assert!(u.https);
        assert_eq!(u.host_port, "es.example:443");
        assert_eq!(u.path, "/gh/_bulk");
        assert_eq!(parse_http_url("http://h").unwrap().host_port, "h:80");
        assert!(parse_http_url("ftp://h").is_err());
        let cfg = |url: &str, ca: Option<&str>| SinkConfig {
            name: "s".into(),
            only_alerts: false,
            kind: SinkKind::Webhook {
                url: url.into(),
                token: None,
                ca_file: ca.map(PathBuf::from),
            },
        };
        assert!(Sink::new(&cfg("https://h/x", None)).is_ok());
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
