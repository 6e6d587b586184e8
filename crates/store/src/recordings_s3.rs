//! Recordings in an S3-protocol bucket (`[recording] url =
//! "s3://BUCKET/PREFIX"`), spoken to with a small HTTP/1.1 client and
//! AWS Signature Version 4, path-style (`ENDPOINT/BUCKET/KEY`) so that a
//! local server works as well as AWS.
//!
//! A recording is a series of numbered chunk objects
//! `PREFIX/ID.cast/00000001`, `…/00000002`, …; reading it back lists them
//! and concatenates them in order. Chunk objects rather than a multipart
//! upload: the parts of a multipart upload are invisible until it is
//! completed, so a node that died mid-session would leave nothing
//! readable, whereas each chunk is a complete object the moment its PUT
//! returns. A node that dies loses at most the chunk being buffered
//! ([`CHUNK_INTERVAL`] or [`CHUNK_BYTES`]).
//!
//! The client is blocking (std sockets with timeouts): the CLI reads from
//! plain threads, and the recorder's writer hands its chunks to a thread
//! of its own, so the gateway's runtime never waits on the network except
//! for the first chunk (the header), which is uploaded at once so that a
//! bucket that cannot be written is known before anything runs.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_model::hex;
use sha2::{Digest, Sha256};

use super::{of_session, valid_recording_id, RecordingStorage, RecordingWriter};

/// A chunk is uploaded at least this often while data comes in.
pub const CHUNK_INTERVAL: Duration = Duration::from_secs(2);
/// … or as soon as this much is buffered.
pub const CHUNK_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits before the 2nd, 3rd and 4th try of a request that failed on the
/// network or with a status worth retrying (408, 429, 5xx).
const RETRY_WAITS: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Chunks cut and not yet stored, by when they were cut (for
/// [`upload_lag`]), across every recording of this process.
static PENDING: Mutex<std::collections::BTreeMap<u64, Instant>> =
    Mutex::new(std::collections::BTreeMap::new());
static NEXT_CHUNK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FAILED_UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long the oldest chunk not yet stored has waited (zero when every
/// chunk cut is in the bucket): what a node that died now would lose
/// beyond the chunk being buffered.
pub fn upload_lag() -> Duration {
    let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    pending
        .values()
        .next()
        .map(|t| t.elapsed())
        .unwrap_or_default()
}

/// Chunks given up on after every retry, since the process started.
pub fn failed_uploads() -> u64 {
    FAILED_UPLOADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A chunk cut now: counted in [`upload_lag`] until dropped.
struct Pending(u64);

impl Pending {
    fn new() -> Pending {
        let n = NEXT_CHUNK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, Instant::now());
        Pending(n)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Where the bucket is and who we are, from the environment.
#[derive(Clone)]
pub struct S3Storage {
    client: Arc<Client>,
    prefix: String,
}

struct Client {
    tls: bool,
    host: String,
    port: u16,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl S3Storage {
    /// `url` is `s3://BUCKET/PREFIX`; endpoint, region and credentials
    /// come from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION`
    /// (default us-east-1), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and optionally `AWS_SESSION_TOKEN`.
    pub fn from_env(url: &str) -> io::Result<S3Storage> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            invalid(format!(
                "recording.url {url:?}: only s3://BUCKET/PREFIX is supported"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("recording.url {url:?} names no bucket")));
        }
        let region = env("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        let endpoint = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let (tls, hostport) = if let Some(h) = endpoint.strip_prefix("https://") {
            (true, h)
        } else if let Some(h) = endpoint.strip_prefix("http://") {
            (false, h)
        } else {
            return Err(invalid(format!(
                "AWS_ENDPOINT_URL {endpoint:?} must start with http:// or https://"
            )));
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.to_string(),
                p.parse()
                    .map_err(|_| invalid(format!("AWS_ENDPOINT_URL {endpoint:?}: bad port")))?,
            ),
            _ => (hostport.to_string(), if tls { 443 } else { 80 }),
        };
        let need = |k: &str| {
            env(k).ok_or_else(|| {
                invalid(format!(
                    "recording.url is {url:?} but {k} is not set in the environment"
                ))
            })
        };
        Ok(S3Storage {
            client: Arc::new(Client {
                tls,
                host,
                port,
                bucket: bucket.to_string(),
                region,
                access_key: need("AWS_ACCESS_KEY_ID")?,
                secret_key: need("AWS_SECRET_ACCESS_KEY")?,
                token: env("AWS_SESSION_TOKEN"),
            }),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// `PREFIX/ID.cast/` — the chunks' common prefix.
    fn dir(&self, id: &str) -> io::Result<String> {
        if !valid_recording_id(id) {
            return Err(invalid(format!("invalid recording id {id:?}")));
        }
        Ok(if self.prefix.is_empty() {
            format!("{id}.cast/")
        } else {
            format!("{}/{id}.cast/", self.prefix)
        })
    }
}

impl RecordingStorage for S3Storage {
    fn create(&self, id: &str) -> io::Result<Box<dyn RecordingWriter>> {
        let dir = self.dir(id)?;
        // Also proves the credentials before the session starts.
        if !self.client.list(&dir, None)?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("recording {} already exists", self.locate(id)),
            ));
        }
        Ok(Box::new(ChunkWriter {
            client: self.client.clone(),
            dir,
            buf: Vec::new(),
            next: 1,
            last: Instant::now(),
            uploader: None,
            error: Arc::new(Mutex::new(None)),
        }))
    }

    fn open(&self, id: &str) -> io::Result<Box<dyn Read + Send>> {
        let dir = self.dir(id)?;
        let keys = self.client.list(&dir, None)?;
        if keys.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no recording at {}", self.locate(id)),
            ));
        }
        Ok(Box::new(ChunkReader {
            client: self.client.clone(),
            dir,
            keys: keys.into(),
            last: String::new(),
            cur: io::Cursor::new(Vec::new()),
        }))
    }

    fn locate(&self, id: &str) -> String {
        match self.dir(id) {
            Ok(dir) => format!("s3://{}/{}", self.client.bucket, dir),
            Err(_) => format!("<invalid id {id:?}>"),
        }
    }

    fn session_recordings(&self, session: &str) -> io::Result<Vec<String>> {
        // `PREFIX/SESSION` lists SESSION.cast/… and SESSION-N.cast/….
        let dir = self.dir(session)?;
        let base = dir.trim_end_matches('/').trim_end_matches(".cast");
        let start = base.len() - session.len();
        let mut ids: Vec<String> = self
            .client
            .list(base, None)?
            .into_iter()
            .filter_map(|k| {
                let (id, _) = k.get(start..)?.split_once(".cast/")?;
                Some(id.to_string())
            })
            .collect();
        ids.dedup();
        Ok(of_session(session, ids))
    }
}

/// Chunks waiting for upload: at most [`QUEUED`] (then `write` waits,
/// as it would for a slow disk), and the thread that uploads them.
type Uploader = (
    mpsc::SyncSender<(String, Vec<u8>, Pending)>,
    std::thread::JoinHandle<()>,
);
const QUEUED: usize = 16;

/// Buffers what the recorder writes and uploads it as numbered chunks.
struct ChunkWriter {
    client: Arc<Client>,
    dir: String,
    buf: Vec<u8>,
    next: u32,
    last: Instant,
    /// Started after the first chunk: takes (key, body) in order.
    uploader: Option<Uploader>,
    /// The first upload that failed; every later call returns it.
    error: Arc<Mutex<Option<String>>>,
}

impl ChunkWriter {
    fn failed(&self) -> io::Result<()> {
        match &*self.error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    /// Hands the buffer over as the next chunk; the first is uploaded
    /// here and now, the others by the uploader thread.
    fn cut(&mut self) -> io::Result<()> {
        self.last = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let key = format!("{}{:08}", self.dir, self.next);
        let body = std::mem::take(&mut self.buf);
        self.next += 1;
        let pending = Pending::new();
        match &self.uploader {
            None => {
                self.client.put(&key, &body).inspect_err(|_| {
                    FAILED_UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })?;
                drop(pending);
                let (tx, rx) = mpsc::sync_channel::<(String, Vec<u8>, Pending)>(QUEUED);
                let client = self.client.clone();
                let error = self.error.clone();
                let thread = std::thread::Builder::new()
                    .name("s3-recording".into())
                    .spawn(move || {
                        for (key, body, pending) in rx {
                            let r = client.put(&key, &body);
                            drop(pending);
                            if let Err(e) = r {
                                FAILED_UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::error!(error = %e, "recording chunk upload failed");
                                let mut slot = error.lock().unwrap_or_else(|e| e.into_inner());
                                slot.get_or_insert_with(|| e.to_string());
                                return;
                            }
                        }
                    })?;
                self.uploader = Some((tx, thread));
                Ok(())
            }
            Some((tx, _)) => tx.send((key, body, pending)).map_err(|_| {
                self.failed()
                    .err()
                    .unwrap_or_else(|| io::Error::other("recording uploader stopped"))
            }),
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.failed()?;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES || self.last.elapsed() >= CHUNK_INTERVAL {
            self.cut()?;
        }
        Ok(data.len())
    }

    /// The recorder flushes often; a chunk is cut when the first one
    /// (the header) is pending or the interval has passed.
    fn flush(&mut self) -> io::Result<()> {
        self.failed()?;
        if self.uploader.is_none() || self.last.elapsed() >= CHUNK_INTERVAL {
            self.cut()?;
        }
        Ok(())
    }
}

impl RecordingWriter for ChunkWriter {
    fn publish(&mut self) -> io::Result<()> {
        self.failed()?;
        if !self.buf.is_empty() {
            self.cut()?;
        }
        Ok(())
    }

    /// The last chunk, and a wait until every chunk is stored (the
    /// recorder computes the digest it reports only after this).
    fn finish(&mut self) -> io::Result<()> {
        self.failed()?;
        let last = self.cut();
        if let Some((tx, thread)) = self.uploader.take() {
            drop(tx);
            let _ = thread.join();
        }
        last?;
        self.failed()
    }
}

impl Drop for ChunkWriter {
    /// A writer dropped without [`RecordingWriter::finish`] (a panic)
    /// still stores what it holds.
    fn drop(&mut self) {
        if self.uploader.is_some() || !self.buf.is_empty() {
            if let Err(e) = self.finish() {
                tracing::error!(error = %e, dir = %self.dir, "last recording chunk not uploaded");
            }
        }
    }
}

/// The chunks of a recording, fetched one at a time.
struct ChunkReader {
    client: Arc<Client>,
    dir: String,
    keys: VecDeque<String>,
    last: String,
    cur: io::Cursor<Vec<u8>>,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.cur.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            if self.keys.is_empty() {
                // A recording still being written grows: look again.
                self.keys = self.client.list(&self.dir, Some(&self.last))?.into();
            }
            let Some(key) = self.keys.pop_front() else {
                return Ok(0);
            };
            self.last.clone_from(&key);
            self.cur = io::Cursor::new(self.client.get(&key)?);
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Client {
    fn put(&self, key: &str, body: &[u8]) -> io::Result<()> {
        self.expect_ok("PUT", key, self.retried("PUT", key, &[], body))
            .map(|_| ())
    }

    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        self.expect_ok("GET", key, self.retried("GET", key, &[], &[]))
    }

    /// [`Client::request`], tried again after [`RETRY_WAITS`] when the
    /// network failed or the server answered 408, 429 or 5xx (every
    /// request here is idempotent: a chunk PUT writes the same bytes).
    fn retried(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut waits = RETRY_WAITS.iter();
        loop {
            let r = self.request(method, key, query, body);
            let again = match &r {
                Ok(resp) => matches!(resp.status, 408 | 429 | 500..=599),
                Err(e) => e.kind() != io::ErrorKind::InvalidInput,
            };
            match waits.next() {
                Some(wait) if again => {
                    tracing::warn!(method, key, "S3 request failed; trying again");
                    std::thread::sleep(*wait);
                }
                _ => return r,
            }
        }
    }

    /// Every key under `prefix` (after `start_after`), in order
    /// (ListObjectsV2, all pages).
    fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_string()),
                ("prefix", prefix.to_string()),
            ];
            if let Some(a) = start_after {
                query.push(("start-after", a.to_string()));
            }
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let body = self.expect_ok("LIST", prefix, self.retried("GET", "", &query, &[]))?;
            let text = String::from_utf8_lossy(&body);
            keys.extend(tags(&text, "Key"));
            token = match tags(&text, "IsTruncated").first().map(String::as_str) {
                Some("true") => tags(&text, "NextContinuationToken").into_iter().next(),
                _ => None,
            };
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// A non-2xx answer as one error naming the bucket, key and S3's
    /// own code and message.
    fn expect_ok(&self, what: &str, key: &str, r: io::Result<Response>) -> io::Result<Vec<u8>> {
        let place = format!("s3://{}/{}", self.bucket, key);
        let r = r.map_err(|e| io::Error::new(e.kind(), format!("{what} {place}: {e}")))?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        let text = String::from_utf8_lossy(&r.body);
        let code = tags(&text, "Code").into_iter().next().unwrap_or_default();
        let msg = tags(&text, "Message")
            .into_iter()
            .next()
            .unwrap_or_default();
        let kind = match r.status {
            404 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Err(io::Error::new(
            kind,
            format!("{what} {place}: HTTP {} {code} {msg}", r.status)
                .trim_end()
                .to_string(),
        ))
    }

    fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// One signed request on a connection of its own.
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> io::Result<Response> {
        let path = if key.is_empty() {
            format!("/{}", uri_encode(&self.bucket, false))
        } else {
            format!(
                "/{}/{}",
                uri_encode(&self.bucket, false),
                uri_encode(key, false)
            )
        };
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        q.sort();
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let host = self.host_header();
        let headers = sign(self, method, &path, &query, &host, body, chrono::Utc::now());
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let mut req = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        let mut data = req.into_bytes();
        data.extend_from_slice(body);
        let raw = self.exchange(&data)?;
        parse_response(&raw)
    }

    fn exchange(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let addr = (self.host.trim_matches(['[', ']']), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("cannot resolve {}", self.host)))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut raw = Vec::new();
        if self.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(
                self.host.trim_matches(['[', ']']).to_string(),
            )
            .map_err(|e| invalid(format!("endpoint host {}: {e}", self.host)))?;
            let conn =
                rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(data)?;
            tls.flush()?;
            match tls.read_to_end(&mut raw) {
                Ok(_) => {}
                // Servers that close without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                Err(e) => return Err(e),
            }
        } else {
            let mut tcp = tcp;
            tcp.write_all(data)?;
            tcp.read_to_end(&mut raw)?;
        }
        Ok(raw)
    }
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP answer: {m}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let mut body = &raw[end + 4..];
    if chunked {
        let mut out = Vec::new();
        loop {
            let nl = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size = std::str::from_utf8(&body[..nl])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| bad("bad chunk size"))?;
            body = &body[nl + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&body[..size]);
            body = body.get(size + 2..).unwrap_or_default();
        }
        return Ok(Response { status, body: out });
    }
    if let Some(n) = length {
        if body.len() < n {
            return Err(bad("truncated body"));
        }
        body = &body[..n];
    }
    Ok(Response {
        status,
        body: body.to_vec(),
    })
}

/// The text of every `<tag>…</tag>`, XML entities decoded.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(
            rest[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}

/// SigV4's URI encoding: unreserved characters kept, `/` kept in paths.
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, data.as_bytes()).as_ref().to_vec()
}

/// The headers of a request signed with AWS Signature Version 4
/// (service `s3`, payload hash sent in `x-amz-content-sha256`).
fn sign(
    c: &Client,
    method: &str,
    path: &str,
    query: &str,
    host: &str,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let payload = hex(&Sha256::digest(body));
    let mut headers = vec![
        ("host".to_string(), host.to_string()),
        ("x-amz-content-sha256".to_string(), payload.clone()),
        ("x-amz-date".to_string(), amz_date.clone()),
    ];
    if let Some(t) = &c.token {
        headers.push(("x-amz-security-token".to_string(), t.clone()));
    }
    headers.sort();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let canonical = format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload}");
    let scope = format!("{date}/{}/s3/aws4_request", c.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", c.secret_key).as_bytes(), date);
    let k = hmac(&k, &c.region);
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let signature = hex(&hmac(&k, &to_sign));
    headers.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            c.access_key
        ),
    ));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from AWS's SigV4 documentation for S3 (GET Object).
    #[test]
    fn signature_matches_the_documented_example() {
        let c = Client {
            tls: true,
            host: "examplebucket.s3.amazonaws.com".into(),
            port: 443,
            bucket: "examplebucket".into(),
            region: "us-east-1".into(),
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        let now = chrono::DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        // The documented example signs a Range header too; this one
        // checks the derivation with the ListObjects example instead.
        let h = sign(
            &c,
            "GET",
            "/",
            "max-keys=2&prefix=J",
            "examplebucket.s3.amazonaws.com",
            b"",
            now,
        );
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert!(
            auth.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{auth}"
        );
    }

    #[test]
    fn responses_and_listings_are_read() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let xml = "<R><Key>a/1</Key><Key>a&amp;2</Key><IsTruncated>false</IsTruncated></R>";
        assert_eq!(tags(xml, "Key"), vec!["a/1", "a&2"]);
        assert_eq!(uri_encode("a b/c~", false), "a%20b/c~");
        assert_eq!(uri_encode("a/c", true), "a%2Fc");
    }
}
