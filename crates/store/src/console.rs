//! What the web console keeps and reads: its sign-in sessions, API
//! tokens, and the paged, filtered lists of sessions and events.
//!
//! Secrets never reach the store in clear: a console session is found by
//! the SHA-256 of its cookie's token, an API token by its own SHA-256
//! ([`token_hash`]).
//!
//! The lists read `audit_events` directly, newest first, one page at a
//! time with a keyset cursor (never OFFSET), so that a page costs the same
//! on the millionth session as on the first. Each filter is a condition on
//! an indexed column; `active` is answered from `active_sessions` (kept by
//! triggers, see schema.rs) and the command filter, on SQLite, from the
//! `command_text` trigram index when the text matches few commands.

use std::time::Duration;

use gatehouse_model::event::{format_time, Event};
use gatehouse_model::{Outcome, Severity};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{decode_event, Backend, Pool, Store, StoreError};

/// Lowercase hex SHA-256 of a secret (a console cookie's token, an API
/// token): what the store keeps in its place.
pub fn token_hash(secret: &str) -> String {
    gatehouse_model::hex(&Sha256::digest(secret.as_bytes()))
}

/// A console sign-in to record.
#[derive(Debug, Clone)]
pub struct NewConsoleSession {
    /// [`token_hash`] of the cookie's token.
    pub id_hash: String,
    pub user: String,
    /// The session's CSRF token (sent back in a header by the page).
    pub csrf: String,
    pub source_ip: Option<String>,
    /// The user gave a second factor when signing in.
    pub mfa: bool,
    /// How long the session lasts however active it is.
    pub absolute: Duration,
    /// Roles an identity provider granted this sign-in (its groups
    /// through `role_map`), added to the user's own.
    pub granted_roles: Vec<String>,
}

/// A console sign-in session in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub id_hash: String,
    pub user: String,
    pub csrf: String,
    pub source_ip: Option<String>,
    pub mfa: bool,
    pub created_at: String,
    pub last_seen: String,
    pub expires_at: String,
    /// See [`NewConsoleSession::granted_roles`].
    pub granted_roles: Vec<String>,
}

/// An API token. Only the SHA-256 of the token is stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// A ULID.
    pub id: String,
    pub user: String,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: String,
    pub created_by: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// Which sessions the reader may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    All,
    /// Sessions of `user`, and sessions on any of `targets` (names).
    Visible { user: String, targets: Vec<String> },
}

/// The console's session list filters; every one set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub login: Option<String>,
    /// RFC 3339: sessions that started at or after it.
    pub since: Option<String>,
    /// RFC 3339: sessions that started before it.
    pub until: Option<String>,
    /// Some(true): running (no `session.end`, no `session.killed`, as the
    /// `sessions` view's `active`); Some(false): the others.
    pub active: Option<bool>,
    /// Text one of the session's `command` events' `details.command`
    /// contains, in any case.
    pub command: Option<String>,
    pub source_ip: Option<String>,
    /// The last row of the previous page: (start time, session id).
    pub before: Option<(String, String)>,
    pub scope: Scope,
}

/// One row of the console's session list: the `sessions` view's columns
/// plus the number of commands and why it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRow {
    pub session_id: String,
    pub user: String,
    pub source_ip: Option<String>,
    pub node: String,
    pub target: String,
    pub login: String,
    pub mfa: bool,
    pub start_time: String,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
    pub exit_status: Option<i64>,
    pub recording_id: Option<String>,
    pub recording_sha256: Option<String>,
    pub active: bool,
    /// `command` events of the session.
    pub commands: i64,
    /// The `session.end`'s reason; for a killed session without one,
    /// `killed by BY: REASON`.
    pub end_reason: Option<String>,
}

/// The console's event list filters; every one set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// An event type, or a prefix ending in `*` (`sftp.*`).
    pub kind: Option<String>,
    pub user: Option<String>,
    pub target: Option<String>,
    pub result: Option<Outcome>,
    /// This severity or a higher one.
    pub severity: Option<Severity>,
    /// RFC 3339: events at or after it.
    pub since: Option<String>,
    /// RFC 3339: events before it.
    pub until: Option<String>,
    /// Text the reason or the details contain, in any case.
    pub text: Option<String>,
    pub session_id: Option<String>,
    /// Events older than this seq (the last seq of the previous page).
    pub before_seq: Option<i64>,
}

fn now() -> String {
    format_time(chrono::Utc::now())
}

/// `now + d` (or `- d`), saturating at the clock's ends.
fn shifted(d: Duration, forward: bool) -> String {
    let now = chrono::Utc::now();
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let t = if forward {
        now.checked_add_signed(d)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    } else {
        now.checked_sub_signed(d)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    };
    format_time(t)
}

/// A time the caller gave, as the store writes times (so that string
/// comparison is time order); text that is not RFC 3339 (a date prefix
/// such as `2026-03`) is compared as it is.
fn norm_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| format_time(t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|_| t.to_string())
}

/// `%text%` for LIKE with `\` as the escape character, lowercased.
fn contains_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// An FTS5 query matching `text` as one phrase (with the trigram
/// tokenizer: as a substring).
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Below this many matching command lines the command filter starts from
/// the trigram index's matches; above it, from the newest sessions.
const FEW_COMMANDS: i64 = 5000;

/// More target branches than this are read as one `IN` list.
const TARGET_BRANCHES: usize = 16;

/// Most rows one page may have.
const MAX_PAGE: i64 = 1000;

enum Arg {
    Text(String),
    Int(i64),
}

/// SQL text with `?N` placeholders and the values they stand for.
struct Query {
    sql: String,
    args: Vec<Arg>,
}

impl Query {
    fn new() -> Query {
        Query {
            sql: String::new(),
            args: Vec::new(),
        }
    }

    /// A placeholder for `text`.
    fn text(&mut self, text: impl Into<String>) -> String {
        self.args.push(Arg::Text(text.into()));
        format!("?{}", self.args.len())
    }

    fn int(&mut self, n: i64) -> String {
        self.args.push(Arg::Int(n));
        format!("?{}", self.args.len())
    }
}

/// Runs `$q` on the store's pool and decodes each row with `$decode`.
macro_rules! fetch_query {
    ($store:expr, $q:expr, $decode:expr) => {{
        let q: Query = $q;
        let text = $crate::bind::sql($store.backend(), &q.sql);
        match &$store.inner.pool {
            Pool::Sqlite { rw, .. } => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
                for a in q.args {
                    query = match a {
                        Arg::Text(s) => query.bind(s),
                        Arg::Int(i) => query.bind(i),
                    };
                }
                query
                    .fetch_all(rw)
                    .await?
                    .iter()
                    .map($decode)
                    .collect::<Vec<_>>()
            }
            Pool::Postgres(pg) => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
                for a in q.args {
                    query = match a {
                        Arg::Text(s) => query.bind(s),
                        Arg::Int(i) => query.bind(i),
                    };
                }
                // A plan for these values (a generic plan guesses every
                // LIKE alike), and no JIT compiling for a page of rows.
                let mut tx = pg.begin().await?;
                sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
                let rows = query.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.iter().map($decode).collect::<Vec<_>>()
            }
        }
    }};
}

type ConsoleRow = (
    String,
    String,
    String,
    Option<String>,
    bool,
    String,
    String,
    String,
    Option<String>,
);

type TokenRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

const TOKEN_COLUMNS: &str =
    "id, user_name, name, token_hash, created_at, created_by, last_used_at, revoked_at";

fn token(r: TokenRow) -> ApiToken {
    ApiToken {
        id: r.0,
        user: r.1,
        name: r.2,
        token_hash: r.3,
        created_at: r.4,
        created_by: r.5,
        last_used_at: r.6,
        revoked_at: r.7,
    }
}

/// How long after a token's last use its next use is audited again.
const TOKEN_USE_QUIET: Duration = Duration::from_secs(60);

impl Store {
    /// Records a console sign-in; expired sessions are purged on the way.
    pub async fn create_console_session(&self, s: &NewConsoleSession) -> Result<(), StoreError> {
        let now = now();
        exec!(
            self,
            "DELETE FROM console_sessions WHERE expires_at <= ?1",
            now.as_str()
        );
        exec!(
            self,
            "DELETE FROM console_session_roles WHERE id_hash NOT IN (SELECT id_hash FROM console_sessions)"
        );
        if !s.granted_roles.is_empty() {
            let roles = serde_json::to_string(&s.granted_roles)
                .map_err(|e| StoreError::Query(e.to_string()))?;
            exec!(
                self,
                "INSERT INTO console_session_roles (id_hash, roles) VALUES (?1, ?2)",
                s.id_hash.as_str(),
                roles
            );
        }
        exec!(
            self,
            "INSERT INTO console_sessions (id_hash, user_name, csrf, source_ip, mfa, created_at, last_seen, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            s.id_hash.as_str(),
            s.user.as_str(),
            s.csrf.as_str(),
            s.source_ip.as_deref(),
            s.mfa,
            now.as_str(),
            shifted(s.absolute, true)
        );
        Ok(())
    }

    /// The console session whose cookie hashes to `id_hash`, unless it is
    /// unknown, past its absolute end, or unused for longer than `idle`
    /// (such a session is deleted).
    pub async fn console_session(
        &self,
        id_hash: &str,
        idle: Duration,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row = fetch_opt!(
            self,
            ConsoleRow,
            "SELECT s.id_hash, s.user_name, s.csrf, s.source_ip, s.mfa, s.created_at, s.last_seen, s.expires_at, r.roles
             FROM console_sessions s LEFT JOIN console_session_roles r ON r.id_hash = s.id_hash
             WHERE s.id_hash = ?1",
            id_hash
        );
        let Some(r) = row else { return Ok(None) };
        let now = now();
        if r.7 <= now || r.6 < shifted(idle, false) {
            exec!(
                self,
                "DELETE FROM console_sessions WHERE id_hash = ?1 OR expires_at <= ?2",
                id_hash,
                now.as_str()
            );
            return Ok(None);
        }
        Ok(Some(ConsoleSession {
            id_hash: r.0,
            user: r.1,
            csrf: r.2,
            source_ip: r.3,
            mfa: r.4,
            created_at: r.5,
            last_seen: r.6,
            expires_at: r.7,
            granted_roles: r
                .8
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default(),
        }))
    }

    /// The session was used now; false when it does not exist.
    pub async fn touch_console_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "UPDATE console_sessions SET last_seen = ?1 WHERE id_hash = ?2",
            now(),
            id_hash
        );
        Ok(n == 1)
    }

    /// Signs a console session out; false when it did not exist.
    pub async fn end_console_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "DELETE FROM console_sessions WHERE id_hash = ?1",
            id_hash
        );
        Ok(n == 1)
    }

    /// Signs every console session of `user` out; how many there were.
    pub async fn end_console_sessions_of(&self, user: &str) -> Result<u64, StoreError> {
        Ok(exec!(
            self,
            "DELETE FROM console_sessions WHERE user_name = ?1",
            user
        ))
    }

    /// Stores a new API token of `user` by its hash.
    pub async fn create_api_token(
        &self,
        user: &str,
        name: &str,
        token_hash: &str,
        created_by: &str,
    ) -> Result<ApiToken, StoreError> {
        let t = ApiToken {
            id: ulid::Ulid::new().to_string(),
            user: user.to_string(),
            name: name.to_string(),
            token_hash: token_hash.to_string(),
            created_at: now(),
            created_by: created_by.to_string(),
            last_used_at: None,
            revoked_at: None,
        };
        exec!(
            self,
            "INSERT INTO api_tokens (id, user_name, name, token_hash, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            t.id.as_str(),
            user,
            name,
            token_hash,
            t.created_at.as_str(),
            created_by
        );
        Ok(t)
    }

    /// The token whose SHA-256 is `hash`, unless it was revoked.
    pub async fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let q = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?1 AND revoked_at IS NULL"
        );
        Ok(fetch_opt!(self, TokenRow, &q, hash).map(token))
    }

    /// Every token (revoked ones too) of `user`, or of everyone, oldest
    /// first.
    pub async fn api_tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        let q = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE (?1 IS NULL OR user_name = ?1)
             ORDER BY created_at, id"
        );
        Ok(fetch_all!(self, TokenRow, &q, user)
            .into_iter()
            .map(token)
            .collect())
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let q = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1");
        Ok(fetch_opt!(self, TokenRow, &q, id).map(token))
    }

    /// Revokes token `id`; false when it is unknown or already revoked.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = exec!(
            self,
            "UPDATE api_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            now(),
            id
        );
        Ok(n == 1)
    }

    /// Token `id` was used now. True when its previous use was more than
    /// a minute ago, or there was none: the console audits `token.used`
    /// only then, so that a busy script does not flood the trail.
    pub async fn touch_api_token(&self, id: &str) -> Result<bool, StoreError> {
        let now = now();
        let first = exec!(
            self,
            "UPDATE api_tokens SET last_used_at = ?1
             WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
            now.as_str(),
            id,
            shifted(TOKEN_USE_QUIET, false)
        );
        if first == 1 {
            return Ok(true);
        }
        exec!(
            self,
            "UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2",
            now.as_str(),
            id
        );
        Ok(false)
    }

    /// The newest signed checkpoint: (seq, time).
    pub async fn last_checkpoint(&self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(fetch_opt!(
            self,
            (i64, String),
            "SELECT seq, time FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
        ))
    }

    /// One page of sessions matching `filter`, newest first (by start
    /// time, then session id). The next page: `before` = the last row's
    /// (start_time, session_id).
    pub async fn sessions_page(
        &self,
        filter: &SessionFilter,
        limit: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let limit = limit.min(MAX_PAGE);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let driver = self.session_driver(filter).await?;
        let rows = self.sessions_from(filter, limit, &driver).await?;
        if matches!(driver, Driver::Recent) && (rows.len() as i64) < limit {
            // The newest sessions held too few: from the matching lines.
            return self.sessions_from(filter, limit, &Driver::Commands).await;
        }
        Ok(rows)
    }

    async fn sessions_from(
        &self,
        filter: &SessionFilter,
        limit: i64,
        driver: &Driver,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let backend = self.backend();
        let mut q = Query::new();
        let conds = session_conditions(filter, &mut q);
        let command = command_condition(backend, filter, driver, &mut q);
        let lim = q.int(limit);
        let scan = match driver {
            Driver::Recent => q.int(RECENT_SCAN),
            _ => String::new(),
        };
        let from = driver.from(backend, filter, &mut q);
        let branch = |cond: &str| {
            let from = match driver {
                Driver::Recent => format!(
                    "(SELECT s.* FROM audit_events s WHERE s.type = 'session.start' AND {cond}{conds}
                      ORDER BY s.time DESC, s.session_id DESC LIMIT {scan}) s"
                ),
                _ => from.clone(),
            };
            format!(
                "SELECT seq, time, session_id FROM (SELECT s.seq, s.time, s.session_id FROM {from}
                 WHERE s.type = 'session.start' AND {cond}{conds}{command}
                 ORDER BY s.time DESC, s.session_id DESC LIMIT {lim}) b"
            )
        };
        let branches: Vec<String> = match &filter.scope {
            Scope::All => vec![branch("1 = 1")],
            Scope::Visible { user, targets } => {
                let mut b = vec![branch(&format!("s.user_name = {}", q.text(user.as_str())))];
                if targets.len() <= TARGET_BRANCHES {
                    for t in targets {
                        b.push(branch(&format!("s.target = {}", q.text(t.as_str()))));
                    }
                } else {
                    let list: Vec<String> = targets.iter().map(|t| q.text(t.as_str())).collect();
                    b.push(branch(&format!("s.target IN ({})", list.join(", "))));
                }
                b
            }
        };
        q.sql = format!(
            "WITH page AS ({} ORDER BY time DESC, session_id DESC LIMIT {lim}) {}",
            branches.join(" UNION "),
            session_select(backend, "page p JOIN audit_events s ON s.seq = p.seq")
        );
        fetch_query!(self, q, decode_session).into_iter().collect()
    }

    /// The console's row for session `id`, None when it never started.
    pub async fn session_row(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let mut q = Query::new();
        let id = q.text(id);
        q.sql = format!(
            "WITH page AS (SELECT seq, time, session_id FROM audit_events
                           WHERE session_id = {id} AND type = 'session.start'
                           ORDER BY seq LIMIT 1) {}",
            session_select(
                self.backend(),
                "page p JOIN audit_events s ON s.seq = p.seq"
            )
        );
        let rows: Result<Vec<SessionRow>, StoreError> =
            fetch_query!(self, q, decode_session).into_iter().collect();
        Ok(rows?.pop())
    }

    /// Where the session list starts reading (see [`Driver`]).
    async fn session_driver(&self, filter: &SessionFilter) -> Result<Driver, StoreError> {
        if filter.active == Some(true) {
            return Ok(Driver::Active);
        }
        let Some(text) = filter.command.as_deref() else {
            return Ok(Driver::Starts);
        };
        if self.backend() == Backend::Postgres {
            return Ok(Driver::Recent);
        }
        if text.chars().count() < 3 {
            return Ok(Driver::Starts);
        }
        // FTS5 counts lazily: this reads at most FEW_COMMANDS + 1 matches.
        let n = fetch_one!(
            self,
            i64,
            "SELECT COUNT(*) FROM (SELECT rowid FROM command_text WHERE command_text MATCH ?1 LIMIT ?2) m",
            fts_phrase(text),
            FEW_COMMANDS + 1
        );
        Ok(if n <= FEW_COMMANDS {
            Driver::Commands
        } else {
            Driver::Starts
        })
    }

    /// One page of events matching `filter`, newest first, each with its
    /// seq (by seq; a user's events by time, then seq). The next page:
    /// `before_seq` = the last row's seq.
    pub async fn events_page(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let limit = limit.min(MAX_PAGE);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let q = self.events_query(filter, limit).await?;
        fetch_query!(self, q, decode_event)
            .into_iter()
            .map(|(seq, ev)| ev.map(|e| (seq, e)))
            .collect()
    }

    /// The query behind [`Store::events_page`].
    async fn events_query(&self, filter: &EventFilter, limit: i64) -> Result<Query, StoreError> {
        let narrow = self.narrow_events(filter).await?;
        let mut q = Query::new();
        let conds = event_conditions(self.backend(), filter, narrow, &mut q);
        let lim = q.int(limit);
        // `seq + 0`: read the narrow filter's few rows through its index
        // and sort them, rather than walk the whole trail in seq order.
        let order = match narrow {
            Narrow::None => "seq DESC",
            Narrow::User => "time DESC, seq DESC",
            Narrow::Type | Narrow::Window => "seq + 0 DESC",
        };
        // SQLite, without statistics, can as well walk the whole trail
        // through `time` (same order) as read the user's own rows.
        let from = match (narrow, self.backend()) {
            (Narrow::User, Backend::Sqlite) => "audit_events INDEXED BY audit_events_user_time",
            _ => "audit_events",
        };
        q.sql = format!(
            "SELECT {} FROM {from} WHERE 1 = 1{conds} ORDER BY {order} LIMIT {lim}",
            self.select_columns()
        );
        Ok(q)
    }

    /// SQLite's plan for [`Store::events_page`]'s query, one line per step.
    #[cfg(test)]
    pub(crate) async fn events_plan(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<String>, StoreError> {
        let mut q = self.events_query(filter, 100).await?;
        q.sql = format!("EXPLAIN QUERY PLAN {}", q.sql);
        let rows: Vec<Result<String, sqlx::Error>> =
            fetch_query!(self, q, |r| r.try_get::<String, &str>("detail"));
        Ok(rows.into_iter().collect::<Result<_, _>>()?)
    }

    /// Which filter, if any, matches few enough events to read them all
    /// through its index and sort: counted, up to a cap, through that
    /// index (neither database can guess it: SQLite keeps no statistics,
    /// and PostgreSQL's for `time` do not know where the window falls).
    async fn narrow_events(&self, f: &EventFilter) -> Result<Narrow, StoreError> {
        // PostgreSQL reads a type in seq order through (type, seq).
        if let (Some(kind), Backend::Sqlite) = (&f.kind, self.backend()) {
            let mut q = Query::new();
            let cond = type_condition("type", kind, &mut q);
            let cap = q.int(NARROW_TYPE + 1);
            q.sql = format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE 1 = 1{cond} LIMIT {cap}) m"
            );
            if self.count(q).await? <= NARROW_TYPE {
                return Ok(Narrow::Type);
            }
        }
        if f.since.is_some() || f.until.is_some() {
            let mut q = Query::new();
            let cond = time_condition("time", f, &mut q);
            let cap = q.int(NARROW_WINDOW + 1);
            q.sql = format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE 1 = 1{cond} LIMIT {cap}) m"
            );
            if self.count(q).await? <= NARROW_WINDOW {
                return Ok(Narrow::Window);
            }
        }
        // A session's few events are better read through its own index.
        if f.user.is_some() && f.session_id.is_none() {
            return Ok(Narrow::User);
        }
        Ok(Narrow::None)
    }

    async fn count(&self, q: Query) -> Result<i64, StoreError> {
        let n: Vec<Result<i64, sqlx::Error>> =
            fetch_query!(self, q, |r| r.try_get::<i64, usize>(0));
        Ok(n.into_iter().next().transpose()?.unwrap_or(0))
    }
}

/// The event filter read through its own index, see
/// [`Store::narrow_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Narrow {
    None,
    Type,
    Window,
    /// A user's events, newest first in time order through
    /// `(user_name, time)`, equal times by seq (on SQLite the index ends
    /// in the row's seq). There is no `(user_name, seq)` index: a second
    /// index that every batch writes at one place per user halved batched
    /// ingest (BENCHMARKS.md).
    User,
}

/// Most events of a type read and sorted (SQLite).
const NARROW_TYPE: i64 = 20_000;

/// Most events of a time window read and sorted.
const NARROW_WINDOW: i64 = 100_000;

/// The rows the session list starts from. The database's planner cannot
/// tell how many sessions a filter matches (SQLite keeps no statistics;
/// PostgreSQL guesses LIKE wrong), so the store chooses.
enum Driver {
    /// `session.start` events through the start-time indexes, newest
    /// first: every filter is an index column or is met often.
    Starts,
    /// `active_sessions`: few rows.
    Active,
    /// Sessions with a matching command line: on SQLite those the trigram
    /// index finds when it finds few; on PostgreSQL those of every
    /// matching line (the trigram index when pg_trgm is there).
    Commands,
    /// PostgreSQL with a command filter: only the newest `RECENT_SCAN`
    /// sessions that meet the other filters; when they hold less than a
    /// page, the page is read again from [`Driver::Commands`].
    Recent,
}

impl Driver {
    fn from(&self, backend: Backend, f: &SessionFilter, q: &mut Query) -> String {
        let text = f.command.as_deref().unwrap_or_default();
        match (self, backend) {
            (Driver::Starts | Driver::Recent, _) => "audit_events s".into(),
            // CROSS JOIN keeps SQLite from reordering: the small side first.
            (Driver::Active, Backend::Sqlite) => {
                "active_sessions a CROSS JOIN audit_events s ON s.session_id = a.session_id".into()
            }
            (Driver::Active, Backend::Postgres) => {
                "active_sessions a JOIN audit_events s ON s.session_id = a.session_id".into()
            }
            (Driver::Commands, Backend::Sqlite) => format!(
                "(SELECT DISTINCT c.session_id AS session_id FROM command_text
                  CROSS JOIN audit_events c ON c.seq = command_text.rowid
                  WHERE command_text MATCH {} AND c.type = 'command') m
                 CROSS JOIN audit_events s ON s.session_id = m.session_id",
                q.text(fts_phrase(text))
            ),
            (Driver::Commands, Backend::Postgres) => format!(
                "(SELECT DISTINCT c.session_id AS session_id FROM audit_events c
                  WHERE c.type = 'command' AND lower(c.details->>'command') LIKE {} ESCAPE '\\') m
                 JOIN audit_events s ON s.session_id = m.session_id",
                q.text(contains_pattern(text))
            ),
        }
    }
}

/// How many of the newest sessions [`Driver::Recent`] reads.
const RECENT_SCAN: i64 = 5000;

/// ` AND …` for every filter set but the command (the scope is added per
/// branch).
fn session_conditions(f: &SessionFilter, q: &mut Query) -> String {
    let mut c = String::new();
    for (col, v) in [
        ("user_name", &f.user),
        ("target", &f.target),
        ("login", &f.login),
        ("source_ip", &f.source_ip),
    ] {
        if let Some(v) = v {
            c.push_str(&format!(" AND s.{col} = {}", q.text(v.as_str())));
        }
    }
    if let Some(t) = &f.since {
        c.push_str(&format!(" AND s.time >= {}", q.text(norm_time(t))));
    }
    if let Some(t) = &f.until {
        c.push_str(&format!(" AND s.time < {}", q.text(norm_time(t))));
    }
    if let Some((time, id)) = &f.before {
        let (t, i) = (q.text(time.as_str()), q.text(id.as_str()));
        c.push_str(&format!(
            " AND s.time <= {t} AND (s.time < {t} OR s.session_id < {i})"
        ));
    }
    let ended = "EXISTS (SELECT 1 FROM audit_events k WHERE k.session_id = s.session_id
                 AND k.type IN ('session.end', 'session.killed'))";
    match f.active {
        Some(true) => c.push_str(&format!(" AND NOT {ended}")),
        Some(false) => c.push_str(&format!(" AND {ended}")),
        None => {}
    }
    c
}

/// ` AND …` for the command filter: the session has a matching line.
fn command_condition(
    backend: Backend,
    f: &SessionFilter,
    driver: &Driver,
    q: &mut Query,
) -> String {
    let Some(text) = &f.command else {
        return String::new();
    };
    let pattern = q.text(contains_pattern(text));
    match (backend, driver) {
        // The candidates are the matching lines' sessions already.
        (Backend::Postgres, Driver::Commands) => String::new(),
        // A scalar subquery: PostgreSQL runs it per session through the
        // session index, rather than joining every matching line.
        (Backend::Postgres, _) => format!(
            " AND (SELECT 1 FROM audit_events x WHERE x.session_id = s.session_id
               AND x.type = 'command' AND lower(x.details->>'command') LIKE {pattern} ESCAPE '\\'
               LIMIT 1) IS NOT NULL"
        ),
        // Exact, also where the trigram index chose the candidates.
        (Backend::Sqlite, _) => format!(
            " AND EXISTS (SELECT 1 FROM audit_events x WHERE x.session_id = s.session_id
               AND x.type = 'command' AND lower(json_extract(x.details, '$.command')) LIKE {pattern} ESCAPE '\\')"
        ),
    }
}

/// The row's columns for the sessions in `from` (which names `p`, the
/// page's start events, and `s`, their `session.start`), newest first.
fn session_select(backend: Backend, from: &str) -> String {
    let int = |key: &str| match backend {
        Backend::Sqlite => format!(
            "CASE WHEN json_type(e.details, '$.{key}') IN ('integer', 'real')
             THEN CAST(json_extract(e.details, '$.{key}') AS BIGINT) END"
        ),
        Backend::Postgres => format!(
            "CASE WHEN jsonb_typeof(e.details->'{key}') = 'number'
             THEN (e.details->>'{key}')::numeric::bigint END"
        ),
    };
    let text = |key: &str| {
        match backend {
        Backend::Sqlite => format!(
            "CASE WHEN json_type(e.details, '$.{key}') = 'text' THEN json_extract(e.details, '$.{key}') END"
        ),
        Backend::Postgres => format!(
            "CASE WHEN jsonb_typeof(e.details->'{key}') = 'string' THEN e.details->>'{key}' END"
        ),
    }
    };
    let by = match backend {
        Backend::Sqlite => "json_extract(k.details, '$.by')",
        Backend::Postgres => "k.details->>'by'",
    };
    format!(
        "SELECT s.session_id, s.user_name, s.source_ip, s.node, s.target, s.login,
                CAST(CASE WHEN s.mfa THEN 1 ELSE 0 END AS BIGINT) AS mfa,
                s.time AS start_time, e.time AS end_time,
                {} AS duration_ms, {} AS bytes_in, {} AS bytes_out, {} AS exit_status,
                {} AS recording_id, {} AS recording_sha256,
                CAST(CASE WHEN e.seq IS NULL AND NOT EXISTS (
                    SELECT 1 FROM audit_events k WHERE k.session_id = s.session_id
                    AND k.type = 'session.killed') THEN 1 ELSE 0 END AS BIGINT) AS active,
                (SELECT COUNT(*) FROM audit_events c WHERE c.session_id = s.session_id
                 AND c.type = 'command') AS commands,
                COALESCE(e.reason, (SELECT 'killed by ' || COALESCE({by}, 'unknown') || ': ' || COALESCE(k.reason, '')
                    FROM audit_events k WHERE k.session_id = s.session_id
                    AND k.type = 'session.killed' ORDER BY k.seq LIMIT 1)) AS end_reason
         FROM {from}
         LEFT JOIN audit_events e ON e.seq = (SELECT MAX(x.seq) FROM audit_events x
             WHERE x.session_id = s.session_id AND x.type = 'session.end')
         ORDER BY p.time DESC, p.session_id DESC",
        int("duration_ms"),
        int("bytes_in"),
        int("bytes_out"),
        int("exit_status"),
        text("recording_id"),
        text("recording_sha256"),
    )
}

fn decode_session<R>(row: &R) -> Result<SessionRow, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let text = |c: &str| -> Result<Option<String>, StoreError> { Ok(row.try_get(c)?) };
    let int = |c: &str| -> Result<Option<i64>, StoreError> { Ok(row.try_get(c)?) };
    Ok(SessionRow {
        session_id: row.try_get("session_id")?,
        user: text("user_name")?.unwrap_or_default(),
        source_ip: text("source_ip")?,
        node: row.try_get("node")?,
        target: text("target")?.unwrap_or_default(),
        login: text("login")?.unwrap_or_default(),
        mfa: row.try_get::<i64, _>("mfa")? != 0,
        start_time: row.try_get("start_time")?,
        end_time: text("end_time")?,
        duration_ms: int("duration_ms")?,
        bytes_in: int("bytes_in")?,
        bytes_out: int("bytes_out")?,
        exit_status: int("exit_status")?,
        recording_id: text("recording_id")?,
        recording_sha256: text("recording_sha256")?,
        active: row.try_get::<i64, _>("active")? != 0,
        commands: row.try_get("commands")?,
        end_reason: text("end_reason")?,
    })
}

/// ` AND …` for `kind`: a type, or a prefix ending in `*` read as the range
/// [prefix, prefix with its last character bumped), which the type index
/// serves.
fn type_condition(col: &str, kind: &str, q: &mut Query) -> String {
    match kind.strip_suffix('*') {
        Some("") => String::new(),
        Some(prefix) => {
            let mut upper: Vec<char> = prefix.chars().collect();
            if let Some(last) = upper.pop() {
                upper.push(char::from_u32(last as u32 + 1).unwrap_or(char::MAX));
            }
            let upper: String = upper.into_iter().collect();
            format!(
                " AND {col} >= {} AND {col} < {}",
                q.text(prefix),
                q.text(upper)
            )
        }
        None => format!(" AND {col} = {}", q.text(kind)),
    }
}

fn time_condition(col: &str, f: &EventFilter, q: &mut Query) -> String {
    let mut c = String::new();
    if let Some(t) = &f.since {
        c.push_str(&format!(" AND {col} >= {}", q.text(norm_time(t))));
    }
    if let Some(t) = &f.until {
        c.push_str(&format!(" AND {col} < {}", q.text(norm_time(t))));
    }
    c
}

/// ` AND …` for every event filter set. On SQLite, the type and time
/// conditions are written so that no index serves them (`col || ''`)
/// unless `narrow` says theirs is the one to read.
fn event_conditions(backend: Backend, f: &EventFilter, narrow: Narrow, q: &mut Query) -> String {
    let sqlite = backend == Backend::Sqlite;
    let col = |name: &'static str, mine: bool| -> String {
        if sqlite && !mine {
            format!("({name} || '')")
        } else {
            name.to_string()
        }
    };
    let mut c = String::new();
    if let Some(kind) = &f.kind {
        c.push_str(&type_condition(
            &col("type", narrow == Narrow::Type),
            kind,
            q,
        ));
    }
    for (name, v) in [
        ("user_name", &f.user),
        ("target", &f.target),
        ("session_id", &f.session_id),
    ] {
        if let Some(v) = v {
            c.push_str(&format!(" AND {name} = {}", q.text(v.as_str())));
        }
    }
    if let Some(r) = f.result {
        c.push_str(&format!(" AND result = {}", q.text(r.as_str())));
        if r != Outcome::Success {
            // The partial index of unsuccessful events.
            c.push_str(" AND result <> 'success'");
        }
    }
    if let Some(min) = f.severity.filter(|s| *s > Severity::Info) {
        let levels: Vec<String> = [
            Severity::Info,
            Severity::Warn,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .filter(|s| *s >= min)
        .map(|s| q.text(s.as_str()))
        .collect();
        // The partial index of events above info.
        c.push_str(&format!(
            " AND severity IN ({}) AND severity <> 'info'",
            levels.join(", ")
        ));
    }
    c.push_str(&time_condition(
        &col("time", matches!(narrow, Narrow::Window | Narrow::User)),
        f,
        q,
    ));
    if let Some(text) = &f.text {
        let p = q.text(contains_pattern(text));
        let details = match backend {
            Backend::Sqlite => "details",
            Backend::Postgres => "details::text",
        };
        c.push_str(&format!(
            " AND (lower(reason) LIKE {p} ESCAPE '\\' OR lower({details}) LIKE {p} ESCAPE '\\')"
        ));
    }
    if let Some(seq) = f.before_seq {
        let s = q.int(seq);
        if narrow == Narrow::User {
            // Pages follow (time, seq): after the cursor's event in that
            // order (none when there is no event `seq`).
            let t = format!("(SELECT time FROM audit_events WHERE seq = {s})");
            c.push_str(&format!(" AND time <= {t} AND (time < {t} OR seq < {s})"));
        } else {
            c.push_str(&format!(" AND seq < {s}"));
        }
    }
    c
}
