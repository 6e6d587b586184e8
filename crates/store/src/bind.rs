//! Statements with bound parameters on either backend: written once with
//! `?1`, `?2`, … (and `{now}` for the store's own clock), translated for
//! PostgreSQL. The macros run one statement on the read-write pool.

use crate::Backend;

/// `?N` for SQLite, `$N` for PostgreSQL; `{now}` becomes the store's
/// clock as RFC 3339 with milliseconds, like every time the store keeps.
pub(crate) fn sql(backend: Backend, text: &str) -> String {
    let now = match backend {
        Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        Backend::Postgres => {
            "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        }
    };
    let text = text.replace("{now}", now);
    match backend {
        Backend::Sqlite => text,
        Backend::Postgres => text.replace('?', "$"),
    }
}

/// Rows affected.
macro_rules! exec {
    ($store:expr, $sql:expr $(, $arg:expr)*) => {{
        let q = $crate::bind::sql($store.backend(), $sql);
        match &$store.inner.pool {
            $crate::Pool::Sqlite { rw, .. } => sqlx::query(sqlx::AssertSqlSafe(q))$(.bind($arg))*.execute(rw).await?.rows_affected(),
            $crate::Pool::Postgres(pg) => sqlx::query(sqlx::AssertSqlSafe(q))$(.bind($arg))*.execute(pg).await?.rows_affected(),
        }
    }};
}

macro_rules! fetch_opt {
    ($store:expr, $ty:ty, $sql:expr $(, $arg:expr)*) => {{
        let q = $crate::bind::sql($store.backend(), $sql);
        let r: Option<$ty> = match &$store.inner.pool {
            $crate::Pool::Sqlite { rw, .. } => sqlx::query_as(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_optional(rw).await?,
            $crate::Pool::Postgres(pg) => sqlx::query_as(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_optional(pg).await?,
        };
        r
    }};
}

macro_rules! fetch_all {
    ($store:expr, $ty:ty, $sql:expr $(, $arg:expr)*) => {{
        let q = $crate::bind::sql($store.backend(), $sql);
        let r: Vec<$ty> = match &$store.inner.pool {
            $crate::Pool::Sqlite { rw, .. } => sqlx::query_as(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_all(rw).await?,
            $crate::Pool::Postgres(pg) => sqlx::query_as(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_all(pg).await?,
        };
        r
    }};
}

/// One scalar.
macro_rules! fetch_one {
    ($store:expr, $ty:ty, $sql:expr $(, $arg:expr)*) => {{
        let q = $crate::bind::sql($store.backend(), $sql);
        let r: $ty = match &$store.inner.pool {
            $crate::Pool::Sqlite { rw, .. } => sqlx::query_scalar(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_one(rw).await?,
            $crate::Pool::Postgres(pg) => sqlx::query_scalar(sqlx::AssertSqlSafe(q))$(.bind($arg))*.fetch_one(pg).await?,
        };
        r
    }};
}
