//! The audit store: an append-only, hash-chained event log plus the little
//! runtime state the gateway keeps (trust-on-first-use host keys), behind
//! one [`Store`] type with SQLite and PostgreSQL backends.
//!
//! Callers never see which backend is in use. Both expose the same SQL
//! views (`events`, `sessions`, `commands`) with the same columns, so the
//! queries people write in `gatehouse audit query` and in runbooks are
//! portable.

#[macro_use]
mod bind;
mod approvals;
mod checkpoint;
mod cloudtrail;
mod console;
mod format;
mod identity;
mod nodes;
mod query;
pub mod recordings;
mod recovery;
mod schema;
mod sso;
pub mod wake;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::event::Event;
use gatehouse_model::{NewEvent, Outcome, Severity};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, TypeInfo, ValueRef};

pub use approvals::{Approval, ApprovalState};
pub use checkpoint::{append_anchor, AnchorReport, Checkpoint, CheckpointReport, Signer};
pub use console::{
    token_hash, ApiToken, ConsoleSession, EventFilter, NewConsoleSession, Scope, SessionFilter,
    SessionRow,
};
pub use format::QueryResult;
pub use identity::{SessionLine, SessionRef, UserLock};
pub use nodes::{Node, NodeState, StaleNode};
pub use query::{DEFAULT_QUERY_TIMEOUT, MAX_RESULT_BYTES};
pub use recovery::{
    close_lost_node, lost_reason, recover_crashed_sessions, Recovery, CRASH_REASON,
};
pub use sso::SsoKey;

/// The hash that the first event's `prev_hash` holds.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most rows `query_readonly` returns.
pub const MAX_ROWS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {url}: {message}; check store.url and that the database is reachable and writable")]
    Open { url: String, message: String },
    #[error("unsupported store URL {0:?}; use sqlite://PATH or postgres://USER@HOST/DB")]
    Url(String),
    #[error("audit query is read-only: the statement tried to change the database and was refused ({0})")]
    ReadOnly(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("the query ran longer than {0:?} and was stopped; narrow it (WHERE, LIMIT) or raise audit.query_timeout")]
    Timeout(Duration),
    #[error("store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored event {id} is unreadable: {message}")]
    Corrupt { id: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    pub seq: i64,
    pub id: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub events_checked: u64,
    pub first_bad: Option<BadEvent>,
}

/// A request to end a live session (`gatehouse sessions kill`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    pub id: i64,
    pub session_id: String,
    pub reason: String,
    pub requested_by: String,
}

enum Pool {
    Sqlite { rw: SqlitePool, ro: SqlitePool },
    Postgres(PgPool),
}

/// The append connection (`Inner::writer`): one per store.
enum Writer {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

type Waiting = (
    Vec<NewEvent>,
    tokio::sync::oneshot::Sender<Result<Vec<Event>, StoreError>>,
);

struct Inner {
    pool: Pool,
    /// The connection appends commit on, kept apart from `pool`: a burst
    /// of sessions queues many reads (locks, blocks, approvals) on the
    /// shared pool, and the commit that every one of those sessions is
    /// waiting for must not wait behind them.
    writer: Writer,
    /// Serialises appends within this process so the chain never forks.
    /// PostgreSQL additionally takes an advisory lock per append so that
    /// several gateway nodes cannot fork it either. It holds the chain's
    /// head as this process last committed it (PostgreSQL commits in one
    /// round trip while no other node has appended since).
    append: tokio::sync::Mutex<Option<String>>,
    /// Appends waiting for the current commit to finish. Whoever takes the
    /// lock next commits all of them in one transaction (group commit):
    /// every caller still returns only once its event is durable, but
    /// concurrent callers share one fsync.
    queue: std::sync::Mutex<Vec<Waiting>>,
    /// How long a read-only query may run, in milliseconds.
    query_timeout_ms: std::sync::atomic::AtomicU64,
    /// Wake-ups for subscribers in this process (`wake`).
    wake: tokio::sync::broadcast::Sender<String>,
    /// Whether the LISTEN connection (PostgreSQL) was started.
    listening: std::sync::atomic::AtomicBool,
    /// Told how long each commit took (the gateway's metrics).
    on_commit: std::sync::OnceLock<CommitObserver>,
}

/// Called with the duration of every audit commit (the transaction
/// alone, not the time its appends waited for it).
pub type CommitObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Lowercase hex SHA-256 of `ev` chained to `prev_hash`.
pub fn chain_hash(ev: &NewEvent, prev_hash: &str) -> String {
    let mut hasher = Sha256::new();
    // Hashing cannot fail; the encoding goes into the digest as it is made.
    let _ = ev.write_canonical(&mut hasher, prev_hash);
    gatehouse_model::hex(&hasher.finalize())
}

const PG_APPEND_LOCK: i64 = 0x6761_7465_686f; // "gateho"

impl Store {
    /// Opens (creating when needed) the store at `url` and brings its
    /// schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            url: redact(url),
            message: e.to_string(),
        };
        let (pool, writer) = if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreError::Url(url.to_string()));
            }
            let memory = path == ":memory:";
            if !memory {
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).map_err(|e| open_err(&e))?;
                    }
                }
            }
            let base = SqliteConnectOptions::new()
                .filename(path)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let rw_opts = base
                .clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            let rw = SqlitePoolOptions::new()
                .max_connections(if memory { 1 } else { 4 })
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(rw_opts.clone())
                .await
                .map_err(|e| open_err(&e))?;
            for stmt in schema::SQLITE {
                sqlx::query(*stmt)
                    .execute(&rw)
                    .await
                    .map_err(|e| open_err(&e))?;
            }
            cloudtrail::install_sqlite(&rw)
                .await
                .map_err(|e| open_err(&e))?;
            // An in-memory database lives in its one connection.
            let writer = if memory {
                Writer::Sqlite(rw.clone())
            } else {
                Writer::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(writer_options(rw_opts.clone()))
                        .await
                        .map_err(|e| open_err(&e))?,
                )
            };
            let ro = if memory {
                rw.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _| Box::pin(query::restrict_sqlite(conn)))
                    .connect_with(base.read_only(true).pragma("query_only", "ON"))
                    .await
                    .map_err(|e| open_err(&e))?
            };
            (Pool::Sqlite { rw, ro }, writer)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| open_err(&e))?;
            let pg = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
                .await
                .map_err(|e| open_err(&e))?;
            let writer = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(opts);
            let mut tx = pg.begin().await.map_err(|e| open_err(&e))?;
            // Two nodes starting at once must not race on CREATE.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_APPEND_LOCK + 1)
                .execute(&mut *tx)
                .await
                .map_err(|e| open_err(&e))?;
            for stmt in schema::POSTGRES {
                sqlx::query(*stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| open_err(&e))?;
            }
            cloudtrail::install_postgres(&mut tx)
                .await
                .map_err(|e| open_err(&e))?;
            tx.commit().await.map_err(|e| open_err(&e))?;
            (Pool::Postgres(pg), Writer::Postgres(writer))
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                writer,
                append: tokio::sync::Mutex::new(None),
                queue: std::sync::Mutex::new(Vec::new()),
                query_timeout_ms: std::sync::atomic::AtomicU64::new(
                    query::DEFAULT_QUERY_TIMEOUT.as_millis() as u64,
                ),
                wake: tokio::sync::broadcast::channel(64).0,
                listening: std::sync::atomic::AtomicBool::new(false),
                on_commit: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.inner.pool {
            Pool::Sqlite { .. } => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Has `observer` told how long each audit commit takes, from now
    /// on; the first observer set stays.
    pub fn observe_commits(&self, observer: CommitObserver) {
        let _ = self.inner.on_commit.set(observer);
    }

    /// Appends `ev` to the chain and commits before returning.
    pub async fn append(&self, ev: &NewEvent) -> Result<Event, StoreError> {
        let mut events = self.append_batch(vec![ev.clone()]).await?;
        events
            .pop()
            .ok_or_else(|| StoreError::Query("the store returned no event".into()))
    }

    /// Appends `events` in order, in one transaction with whatever other
    /// appends are waiting, and commits before returning.
    pub async fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.inner
            .queue
            .lock()
            .map_err(|_| StoreError::Query("append queue poisoned".into()))?
            .push((events, tx));
        loop {
            tokio::select! {
                reply = &mut rx => {
                    return reply.map_err(|_| StoreError::Query("the committing task went away".into()))?;
                }
                mut guard = self.inner.append.lock() => {
                    let batch: Vec<Waiting> = self
                        .inner
                        .queue
                        .lock()
                        .map(|mut q| std::mem::take(&mut *q))
                        .unwrap_or_default();
                    if !batch.is_empty() {
                        self.commit(batch, &mut guard).await;
                    }
                    drop(guard);
                }
            }
        }
    }

    /// Writes every waiting append in one transaction and answers each.
    async fn commit(&self, batch: Vec<Waiting>, head: &mut Option<String>) {
        let mut all: Vec<NewEvent> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for (evs, reply) in batch {
            replies.push((evs.len(), reply));
            all.extend(evs);
        }
        let count = all.len();
        let started = std::time::Instant::now();
        let result = match &self.inner.writer {
            Writer::Sqlite(w) => commit_sqlite(w, all).await,
            Writer::Postgres(w) => commit_postgres(w, all, head).await,
        };
        let took = started.elapsed();
        if let Some(observe) = self.inner.on_commit.get() {
            observe(took);
        }
        if took > SLOW_COMMIT {
            tracing::warn!(
                events = count,
                ms = took.as_millis() as u64,
                "slow audit commit: every session waiting on these events waited this long"
            );
        }
        match result {
            Ok(stored) => {
                let mut stored = stored.into_iter();
                for (n, reply) in replies {
                    let mine: Vec<Event> = stored.by_ref().take(n).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in replies {
                    let _ = reply.send(Err(StoreError::Query(message.clone())));
                }
            }
        }
    }

    /// Events after `seq` in chain order (at most `limit`), with their seq.
    pub async fn events_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let sql = format!(
            "SELECT {} FROM audit_events WHERE seq > {seq} ORDER BY seq LIMIT {}",
            self.select_columns(),
            limit.max(0)
        );
        self.fetch_events(&sql)
            .await?
            .into_iter()
            .map(|(s, e)| e.map(|e| (s, e)))
            .collect()
    }

    /// The seq of the newest event (0 when empty).
    pub async fn head_seq(&self) -> Result<i64, StoreError> {
        let n: Option<i64> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
                    .fetch_one(rw)
                    .await?
            }
            Pool::Postgres(pg) => {
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
                    .fetch_one(pg)
                    .await?
            }
        };
        Ok(n.unwrap_or(0))
    }

    /// The latest `limit` events, oldest first.
    pub async fn recent_events(&self, limit: i64) -> Result<Vec<Event>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {} FROM audit_events ORDER BY seq DESC LIMIT {}) t ORDER BY seq",
            self.select_columns(),
            limit.max(0)
        );
        let rows = self.fetch_events(&sql).await?;
        rows.into_iter().map(|(_, e)| e).collect()
    }

    fn select_columns(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => schema::SQLITE_SELECT,
            Backend::Postgres => schema::POSTGRES_SELECT,
        }
    }

    async fn fetch_events(
        &self,
        sql: &str,
    ) -> Result<Vec<(i64, Result<Event, StoreError>)>, StoreError> {
        let sql = sql.to_string();
        let out = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(rw)
                .await?
                .iter()
                .map(decode_event)
                .collect(),
            Pool::Postgres(pg) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pg)
                .await?
                .iter()
                .map(decode_event)
                .collect(),
        };
        Ok(out)
    }

    /// Walks the chain in order and reports the first event that was
    /// modified, removed, inserted or reordered.
    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let sql = format!(
            "SELECT {} FROM audit_events ORDER BY seq",
            self.select_columns()
        );
        let rows = self.fetch_events(&sql).await?;
        let mut prev = GENESIS.to_string();
        let mut checked = 0u64;
        for (seq, row) in rows {
            let ev = match row {
                Ok(ev) => ev,
                Err(e) => {
                    return Ok(ChainReport {
                        events_checked: checked,
                        first_bad: Some(BadEvent {
                            seq,
                            id: String::new(),
                            problem: format!("unreadable row: {e}"),
                        }),
                    })
                }
            };
            let bad = |problem: String| BadEvent {
                seq,
                id: ev.event.id.clone(),
                problem,
            };
            if ev.prev_hash != prev {
                return Ok(ChainReport {
                    events_checked: checked,
                    first_bad: Some(bad(
                        "its prev_hash does not match the previous event's hash: an event before it was removed, inserted or reordered".into(),
                    )),
                });
            }
            let expected = chain_hash(&ev.event, &prev);
            if expected != ev.hash {
                return Ok(ChainReport {
                    events_checked: checked,
                    first_bad: Some(bad(
                        "its contents do not match its hash: the event was modified".into(),
                    )),
                });
            }
            prev = ev.hash.clone();
            checked += 1;
        }
        Ok(ChainReport {
            events_checked: checked,
            first_bad: None,
        })
    }

    pub async fn known_host_key(&self, target: &str) -> Result<Option<String>, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT fingerprint FROM host_keys WHERE target = ?1",
            Backend::Postgres => "SELECT fingerprint FROM host_keys WHERE target = $1",
        };
        Ok(match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query_scalar(sql)
                    .bind(target)
                    .fetch_optional(rw)
                    .await?
            }
            Pool::Postgres(pg) => {
                sqlx::query_scalar(sql)
                    .bind(target)
                    .fetch_optional(pg)
                    .await?
            }
        })
    }

    /// Remembers a target's host key the first time it is seen; an
    /// existing entry is never replaced.
    pub async fn remember_host_key(
        &self,
        target: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let now = gatehouse_model::event::format_time(chrono::Utc::now());
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query("INSERT OR IGNORE INTO host_keys (target, fingerprint, first_seen) VALUES (?1, ?2, ?3)")
                    .bind(target)
                    .bind(fingerprint)
                    .bind(now)
                    .execute(rw)
                    .await?;
            }
            Pool::Postgres(pg) => {
                sqlx::query(
                    "INSERT INTO host_keys (target, fingerprint, first_seen) VALUES ($1, $2, $3) ON CONFLICT (target) DO NOTHING",
                )
                .bind(target)
                .bind(fingerprint)
                .bind(now)
                .execute(pg)
                .await?;
            }
        }
        Ok(())
    }

    /// Asks whichever gateway node runs `session_id` to end it. The
    /// request is in the store so that it works across processes and
    /// nodes; gateways poll for it.
    pub async fn request_kill(
        &self,
        session_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        let now = gatehouse_model::event::format_time(chrono::Utc::now());
        let sql = match self.backend() {
            Backend::Sqlite => "INSERT INTO session_kills (session_id, reason, requested_by, requested_at) VALUES (?1, ?2, ?3, ?4)",
            Backend::Postgres => "INSERT INTO session_kills (session_id, reason, requested_by, requested_at) VALUES ($1, $2, $3, $4)",
        };
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query(sql)
                    .bind(session_id)
                    .bind(reason)
                    .bind(by)
                    .bind(now)
                    .execute(rw)
                    .await?;
            }
            Pool::Postgres(pg) => {
                sqlx::query(sql)
                    .bind(session_id)
                    .bind(reason)
                    .bind(by)
                    .bind(now)
                    .execute(pg)
                    .await?;
            }
        }
        self.wake(wake::WAKE_KILL).await?;
        Ok(())
    }

    /// Kill requests not yet carried out.
    pub async fn pending_kills(&self) -> Result<Vec<KillRequest>, StoreError> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT id, session_id, reason, requested_by FROM session_kills WHERE done = 0 ORDER BY id",
            Backend::Postgres => "SELECT id, session_id, reason, requested_by FROM session_kills WHERE NOT done ORDER BY id",
        };
        let rows: Vec<(i64, String, String, String)> = match &self.inner.pool {
            Pool::Sqlite { rw, .. } => sqlx::query_as(sql).fetch_all(rw).await?,
            Pool::Postgres(pg) => sqlx::query_as(sql).fetch_all(pg).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(id, session_id, reason, requested_by)| KillRequest {
                id,
                session_id,
                reason,
                requested_by,
            })
            .collect())
    }

    pub async fn kill_done(&self, id: i64) -> Result<(), StoreError> {
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query("UPDATE session_kills SET done = 1 WHERE id = ?1")
                    .bind(id)
                    .execute(rw)
                    .await?;
            }
            Pool::Postgres(pg) => {
                sqlx::query("UPDATE session_kills SET done = TRUE WHERE id = $1")
                    .bind(id)
                    .execute(pg)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite { rw, ro } => {
                ro.close().await;
                rw.close().await;
            }
            Pool::Postgres(pg) => pg.close().await,
        }
        match &self.inner.writer {
            Writer::Sqlite(w) => w.close().await,
            Writer::Postgres(w) => w.close().await,
        }
    }
}

/// Binds an event's columns, in the order of the INSERT statements.
macro_rules! bind_event {
    ($query:expr, $e:expr, $details:expr) => {{
        let ev = &$e.event;
        $query
            .bind(&ev.id)
            .bind(&ev.time)
            .bind(&ev.kind)
            .bind(ev.severity.as_str())
            .bind(&ev.user)
            .bind(&ev.source_ip)
            .bind(&ev.node)
            .bind(&ev.session_id)
            .bind(&ev.target)
            .bind(&ev.login)
            .bind(ev.mfa)
            .bind(ev.result.as_str())
            .bind(&ev.reason)
            .bind($details)
            .bind(&$e.prev_hash)
            .bind(&$e.hash)
    }};
}

fn chained(events: Vec<NewEvent>, mut prev: String) -> Result<Vec<(Event, String)>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    for mut ev in events {
        let mut details =
            serde_json::to_string(&ev.details).map_err(|e| StoreError::Query(e.to_string()))?;
        without_nul(&mut ev);
        // serde_json writes a NUL as \u0000 (a false alarm for the text
        // `\u0000` is only a second look).
        if details.contains("\\u0000") {
            scrub_json(&mut ev.details);
            details =
                serde_json::to_string(&ev.details).map_err(|e| StoreError::Query(e.to_string()))?;
        }
        let hash = chain_hash(&ev, &prev);
        out.push((
            Event {
                event: ev,
                prev_hash: prev,
                hash: hash.clone(),
            },
            details,
        ));
        prev = hash;
    }
    Ok(out)
}

/// What a NUL character in an event's text becomes: PostgreSQL's text
/// and jsonb cannot hold NUL (a client can put one in a user name or a
/// command line), and both backends store the same chain.
const NUL_STANDS_FOR: &str = "\u{fffd}";

/// Replaces NUL characters in the event's text fields (not `details`).
fn without_nul(ev: &mut NewEvent) {
    let fields = [&mut ev.id, &mut ev.time, &mut ev.kind, &mut ev.node];
    let optional = [
        &mut ev.user,
        &mut ev.source_ip,
        &mut ev.session_id,
        &mut ev.target,
        &mut ev.login,
        &mut ev.reason,
    ];
    for text in fields.into_iter().chain(optional.into_iter().flatten()) {
        if text.contains('\0') {
            *text = text.replace('\0', NUL_STANDS_FOR);
        }
    }
}

/// Replaces NUL characters in every string and key of `value`.
fn scrub_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => {
            *s = s.replace('\0', NUL_STANDS_FOR);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', NUL_STANDS_FOR), v))
                    .collect();
            }
            map.values_mut().for_each(scrub_json);
        }
        _ => {}
    }
}

/// A commit slower than this is logged (a sign of an overloaded store or
/// machine: gating events wait for it).
const SLOW_COMMIT: Duration = Duration::from_millis(500);

/// Rows per INSERT statement (16 parameters each, well below SQLite's
/// and PostgreSQL's parameter limits).
const MULTI_ROW: usize = 64;

fn multi_row_insert(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_events (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// A connection with a transaction opened by hand (`BEGIN` sent as SQL).
/// Dropped before [`Open::finish`] (the commit's future was cancelled), the
/// connection is closed rather than put back in the pool, so that the
/// server rolls back and releases the chain's lock.
struct Open<DB: sqlx::Database>(Option<sqlx::pool::PoolConnection<DB>>);

impl<DB: sqlx::Database> Open<DB> {
    /// Puts the connection back after a transaction that finished itself.
    fn release(mut self) {
        drop(self.0.take());
    }

    fn conn(&mut self) -> Result<&mut DB::Connection, StoreError> {
        self.0
            .as_deref_mut()
            .ok_or_else(|| StoreError::Query("the transaction is finished".into()))
    }

    /// COMMIT when `result` is Ok, else ROLLBACK. After one that failed,
    /// the connection is closed instead of put back.
    async fn finish(
        mut self,
        result: Result<Vec<Event>, StoreError>,
    ) -> Result<Vec<Event>, StoreError>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        let sql = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let finished = sqlx::raw_sql(sql).execute(self.conn()?).await;
        if finished.is_ok() {
            self.0.take();
        }
        let events = result?;
        finished?;
        Ok(events)
    }
}

impl<DB: sqlx::Database> Drop for Open<DB> {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(c.detach());
        }
    }
}

async fn commit_sqlite(rw: &SqlitePool, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError> {
    let mut open = Open(Some(rw.acquire().await?));
    let conn = open.conn()?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = async {
        let prev: Option<String> =
            sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
        let rows = chained(events, prev.unwrap_or_else(|| GENESIS.to_string()))?;
        // Multi-row INSERTs: per-statement overhead, not the rows, is what
        // a batch spends its time on.
        for chunk in rows.chunks(MULTI_ROW) {
            let sql = multi_row_insert(chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (e, details) in chunk {
                q = bind_event!(q, e, details);
            }
            q.execute(&mut *conn).await?;
        }
        Ok::<_, StoreError>(rows.into_iter().map(|(e, _)| e).collect::<Vec<_>>())
    }
    .await;
    open.finish(result).await
}

/// Commits `events` on PostgreSQL and leaves the new head in `head`.
async fn commit_postgres(
    pg: &PgPool,
    events: Vec<NewEvent>,
    head: &mut Option<String>,
) -> Result<Vec<Event>, StoreError> {
    let mut open = Open(Some(pg.acquire().await?));
    // Round trips are what a commit costs on a busy machine (each one
    // waits for both processes to be scheduled). While the head is the one
    // this process last wrote, the whole transaction is one round trip;
    // when another node appended since, nothing is inserted and the
    // commit takes the general path below.
    let events = match head.take() {
        Some(prev) => match one_trip(&mut open, events, prev).await? {
            Ok(stored) => {
                *head = stored.last().map(|e| e.hash.clone());
                open.release();
                return Ok(stored);
            }
            Err(events) => events,
        },
        None => events,
    };
    let conn = open.conn()?;
    // The transaction, the chain's lock and the head go in one simple
    // query: its statements each take their own snapshot under READ
    // COMMITTED, so the head is read after the lock is held.
    let begin = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({PG_APPEND_LOCK}); SELECT hash AS head FROM audit_events ORDER BY seq DESC LIMIT 1"
    );
    let result = async {
        let rows = sqlx::raw_sql(AssertSqlSafe(begin))
            .fetch_all(&mut *conn)
            .await?;
        let prev = rows
            .iter()
            .find_map(|r| r.try_get::<String, _>("head").ok());
        let rows = chained(events, prev.unwrap_or_else(|| GENESIS.to_string()))?;
        for chunk in rows.chunks(MULTI_ROW) {
            let sql = schema::postgres_multi_insert(chunk.len());
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (e, details) in chunk {
                q = bind_event!(q, e, details);
            }
            q.execute(&mut *conn).await?;
        }
        Ok::<_, StoreError>(rows.into_iter().map(|(e, _)| e).collect::<Vec<_>>())
    }
    .await;
    let stored = open.finish(result).await?;
    *head = stored.last().map(|e| e.hash.clone());
    Ok(stored)
}

/// The whole commit in one simple query, on the assumption that the head
/// is still `prev`: the rows are inserted only if it is. `Ok(Err(events))`
/// gives the events back when it was not (the transaction committed
/// nothing) or when a value cannot be written as a literal.
async fn one_trip(
    open: &mut Open<sqlx::Postgres>,
    events: Vec<NewEvent>,
    prev: String,
) -> Result<Result<Vec<Event>, Vec<NewEvent>>, StoreError> {
    let rows = chained(events, prev.clone())?;
    let back = |rows: Vec<(Event, String)>| rows.into_iter().map(|(e, _)| e.event).collect();
    let Some(sql) = schema::postgres_one_trip_insert(&rows, &prev, PG_APPEND_LOCK) else {
        return Ok(Err(back(rows)));
    };
    let conn = open.conn()?;
    let returned = sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let inserted = returned
        .iter()
        .filter(|r| r.try_get::<i64, _>("seq").is_ok())
        .count();
    if inserted == rows.len() {
        return Ok(Ok(rows.into_iter().map(|(e, _)| e).collect()));
    }
    if inserted == 0 {
        return Ok(Err(back(rows)));
    }
    Err(StoreError::Query(format!(
        "a one-round-trip commit inserted {inserted} of {} events",
        rows.len()
    )))
}

/// The append connection's settings (SQLite): the triggers on
/// audit_events make every multi-row INSERT keep a statement journal,
/// kept in memory instead of a temporary file (about a quarter more
/// events per second in batches of a thousand; BENCHMARKS.md).
fn writer_options(opts: SqliteConnectOptions) -> SqliteConnectOptions {
    opts.pragma("temp_store", "memory")
}

/// Hides a password in a URL before it goes into a message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn classify(e: sqlx::Error) -> StoreError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("readonly") || lower.contains("read-only") || lower.contains("read only") {
        StoreError::ReadOnly(text)
    } else {
        StoreError::Query(text)
    }
}

fn decode_event<R>(row: &R) -> (i64, Result<Event, StoreError>)
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row.try_get("seq").unwrap_or(-1);
    let id: String = row.try_get("id").unwrap_or_default();
    let result = (|| -> Result<Event, StoreError> {
        let corrupt = |m: String| StoreError::Corrupt {
            id: id.clone(),
            message: m,
        };
        let text = |c: &str| -> Result<String, StoreError> {
            row.try_get::<String, _>(c)
                .map_err(|e| corrupt(e.to_string()))
        };
        let opt = |c: &str| -> Result<Option<String>, StoreError> {
            row.try_get::<Option<String>, _>(c)
                .map_err(|e| corrupt(e.to_string()))
        };
        let severity: Severity =
            serde_json::from_value(serde_json::Value::String(text("severity")?))
                .map_err(|e| corrupt(format!("severity: {e}")))?;
        let result: Outcome = serde_json::from_value(serde_json::Value::String(text("result")?))
            .map_err(|e| corrupt(format!("result: {e}")))?;
        let details: serde_json::Value = serde_json::from_str(&text("details")?)
            .map_err(|e| corrupt(format!("details: {e}")))?;
        let event = NewEvent {
            id: id.clone(),
            time: text("time")?,
            kind: text("type")?,
            severity,
            user: opt("user_name")?,
            source_ip: opt("source_ip")?,
            node: text("node")?,
            session_id: opt("session_id")?,
            target: opt("target")?,
            login: opt("login")?,
            mfa: row
                .try_get::<bool, _>("mfa")
                .map_err(|e| corrupt(e.to_string()))?,
            result,
            reason: opt("reason")?,
            details,
        };
        Ok(Event {
            event,
            prev_hash: text("prev_hash")?,
            hash: text("hash")?,
        })
    })();
    (seq, result)
}

fn sqlite_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> serde_json::Value {
    use serde_json::Value;
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    match raw.type_info().name() {
        "INTEGER" | "BOOLEAN" | "INT" | "BIGINT" => row
            .try_get::<i64, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "REAL" => row
            .try_get::<f64, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "BLOB" => row
            .try_get::<Vec<u8>, _>(i)
            .map(|b| Value::String(gatehouse_model::hex(&b)))
            .unwrap_or(Value::Null),
        _ => row
            .try_get::<String, _>(i)
            .map(Value::String)
            .unwrap_or(Value::Null),
    }
}

fn pg_value(row: &sqlx::postgres::PgRow, i: usize) -> serde_json::Value {
    use serde_json::Value;
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let name = raw.type_info().name().to_string();
    match name.as_str() {
        "INT8" => row
            .try_get::<i64, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "INT4" => row
            .try_get::<i32, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "INT2" => row
            .try_get::<i16, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "FLOAT8" => row
            .try_get::<f64, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "FLOAT4" => row
            .try_get::<f32, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "BOOL" => row
            .try_get::<bool, _>(i)
            .map(Value::from)
            .unwrap_or(Value::Null),
        "JSON" | "JSONB" => row
            .try_get::<Value, _>(i)
            .map(|v| Value::String(v.to_string()))
            .unwrap_or(Value::Null),
        _ => row
            .try_get::<String, _>(i)
            .map(Value::String)
            .unwrap_or_else(|_| Value::String(format!("<{name}: cast to text to display>"))),
    }
}

#[cfg(test)]
mod console_tests;
#[cfg(test)]
mod tests;
