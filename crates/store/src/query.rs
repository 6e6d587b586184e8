//! Read-only SQL (`gatehouse audit query`, runbooks, the CLI's views).
//!
//! A query must not take the process down or outlive its welcome: rows
//! are streamed and the result stops at [`MAX_ROWS`] rows or
//! [`MAX_RESULT_BYTES`] of cell data, and a statement timeout (the store's
//! query timeout, `audit.query_timeout`) stops it on the database side:
//! `SET LOCAL statement_timeout` in PostgreSQL's read-only transaction, a
//! progress handler with a deadline in SQLite. SQLite's read-only
//! connections may not attach databases, which also refuses `VACUUM INTO`
//! (it attaches the file it creates): a read-only query creates no file.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Column, Connection, Row};

use crate::{classify, pg_value, sqlite_value, Pool, QueryResult, Store, StoreError, MAX_ROWS};

/// Most bytes of cell data a read-only query returns (a bound on memory
/// that the row cap alone is not: rows can be wide).
pub const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;

/// Longest string or blob a read-only SQLite query may build.
const SQLITE_MAX_LENGTH: i32 = 64 * 1024 * 1024;

/// SQLite virtual machine steps between two deadline checks.
const PROGRESS_STEPS: i32 = 10_000;

/// The default of `audit.query_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits put on every read-only SQLite connection when it is opened: no
/// ATTACH (so no `VACUUM INTO`, which creates a file) and bounded values.
pub(crate) async fn restrict_sqlite(
    conn: &mut sqlx::sqlite::SqliteConnection,
) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the open connection's handle, held locked (no other
    // thread uses it) for the duration of the calls; sqlite3_limit only
    // sets a per-connection integer.
    unsafe {
        libsqlite3_sys::sqlite3_limit(db, libsqlite3_sys::SQLITE_LIMIT_ATTACHED, 0);
        libsqlite3_sys::sqlite3_limit(db, libsqlite3_sys::SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH);
    }
    Ok(())
}

/// Rows gathered so far and whether the caps cut the result short.
struct Collected {
    result: QueryResult,
    truncated: bool,
}

/// Reads rows from `stream` until it ends or a cap is reached; the caller
/// drops the stream, which stops the statement.
async fn collect<R, S>(
    mut stream: S,
    value: fn(&R, usize) -> serde_json::Value,
) -> Result<Collected, sqlx::Error>
where
    R: Row,
    S: futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let mut columns: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = false;
    while let Some(row) = stream.try_next().await? {
        if rows.len() >= MAX_ROWS || bytes >= MAX_RESULT_BYTES {
            truncated = true;
            break;
        }
        if columns.is_none() {
            columns = Some(row.columns().iter().map(|c| c.name().to_string()).collect());
        }
        let cells: Vec<serde_json::Value> =
            (0..row.columns().len()).map(|i| value(&row, i)).collect();
        bytes += cells.iter().map(cell_bytes).sum::<usize>();
        rows.push(cells);
    }
    Ok(Collected {
        result: QueryResult {
            columns: columns.unwrap_or_default(),
            rows,
        },
        truncated,
    })
}

fn cell_bytes(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => s.len() + 24,
        _ => 24,
    }
}

fn timed_out(limit: Duration) -> StoreError {
    StoreError::Timeout(limit)
}

impl Store {
    /// How long a read-only query may run (`audit.query_timeout`).
    pub fn set_query_timeout(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner
            .query_timeout_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(
            self.inner
                .query_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Runs `sql` read-only; the database refuses any write. The result
    /// holds at most [`MAX_ROWS`] rows (see [`Store::query_readonly_capped`]
    /// to learn whether it was cut short).
    pub async fn query_readonly(&self, sql: &str) -> Result<QueryResult, StoreError> {
        Ok(self.query_readonly_capped(sql).await?.0)
    }

    /// As [`Store::query_readonly`], and whether the result was cut short
    /// at the row or size cap (`Some(rows kept)`).
    pub async fn query_readonly_capped(
        &self,
        sql: &str,
    ) -> Result<(QueryResult, Option<usize>), StoreError> {
        self.readonly(sql, &[]).await
    }

    /// As [`Store::query_readonly`], with `?1`, `?2`, … bound to `params`
    /// (the program's own queries about a user- or operator-given value:
    /// the value is never spliced into the SQL text).
    pub async fn query_readonly_with(
        &self,
        sql: &str,
        params: &[&str],
    ) -> Result<QueryResult, StoreError> {
        Ok(self.readonly(sql, params).await?.0)
    }

    async fn readonly(
        &self,
        sql: &str,
        params: &[&str],
    ) -> Result<(QueryResult, Option<usize>), StoreError> {
        let mut sql = sql.trim().trim_end_matches(';').to_string();
        if !params.is_empty() && self.backend() == crate::Backend::Postgres {
            sql = sql.replace('?', "$");
        }
        let limit = self.query_timeout();
        let collected = match &self.inner.pool {
            Pool::Sqlite { ro, .. } => {
                let mut conn = ro.acquire().await?;
                let deadline = Instant::now() + limit;
                conn.lock_handle()
                    .await?
                    .set_progress_handler(PROGRESS_STEPS, move || Instant::now() < deadline);
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for p in params {
                    query = query.bind(*p);
                }
                let collected = collect(query.fetch(&mut *conn), sqlite_value).await;
                let cleared = match conn.lock_handle().await {
                    Ok(mut h) => {
                        h.remove_progress_handler();
                        true
                    }
                    Err(_) => false,
                };
                if !cleared {
                    // The connection is unusable: do not return it to the pool.
                    conn.close_on_drop();
                }
                collected.map_err(|e| {
                    if Instant::now() >= deadline && is_sqlite_interrupt(&e) {
                        timed_out(limit)
                    } else if e.to_string().contains("too many attached databases") {
                        StoreError::ReadOnly(
                            "a read-only query may not attach or create database files (ATTACH, VACUUM INTO)".into(),
                        )
                    } else {
                        classify(e)
                    }
                })?
            }
            Pool::Postgres(pg) => {
                let mut conn = pg.acquire().await?;
                let mut tx = conn.begin().await?;
                sqlx::query("SET TRANSACTION READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {}",
                    limit.as_millis().clamp(1, i32::MAX as u128)
                )))
                .execute(&mut *tx)
                .await?;
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for p in params {
                    query = query.bind(*p);
                }
                let collected = collect(query.fetch(&mut *tx), pg_value).await;
                match &collected {
                    Ok(c) if c.truncated => {
                        // The statement may still be producing rows: rather
                        // than drain them, drop the connection (the server
                        // stops the statement when it cannot send).
                        drop(tx);
                        conn.close_on_drop();
                    }
                    _ => {
                        let _ = tx.rollback().await;
                    }
                }
                collected.map_err(|e| {
                    let code = e
                        .as_database_error()
                        .and_then(|d| d.code().map(|c| c.into_owned()));
                    if code.as_deref() == Some("57014") {
                        timed_out(limit)
                    } else {
                        classify(e)
                    }
                })?
            }
        };
        let kept = collected.result.rows.len();
        Ok((collected.result, collected.truncated.then_some(kept)))
    }
}

fn is_sqlite_interrupt(e: &sqlx::Error) -> bool {
    match e.as_database_error() {
        Some(d) => d.code().as_deref() == Some("9") || d.message().contains("interrupt"),
        None => false,
    }
}
