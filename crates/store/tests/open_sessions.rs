//! What `serve` closes at start (`recover_crashed_sessions`), found from
//! `active_sessions` and the kills without an end rather than from every
//! event, and what `Store::open` does once the `active_sessions` backfill
//! is recorded. On SQLite and on PostgreSQL (127.0.0.1:5432, user
//! postgres, trust), each in a new database.

use std::sync::Arc;

use gatehouse_model::{EventType, NewEvent, Outcome, Severity};
use gatehouse_store::recordings::LocalDir;
use gatehouse_store::{recover_crashed_sessions, Store};
use serde_json::json;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn start(node: &str, session: &str) -> NewEvent {
    NewEvent::new(
        EventType::SESSION_START,
        Severity::Info,
        Outcome::Success,
        node,
    )
    .user("alice")
    .source_ip("127.0.0.1")
    .session(session)
    .target("web01")
    .login("deploy")
}

fn of(kind: &str, node: &str, session: &str) -> NewEvent {
    NewEvent::new(kind, Severity::Info, Outcome::Success, node)
        .session(session)
        .details(json!({}))
}

async fn active(store: &Store) -> Vec<String> {
    let r = store
        .query_readonly("SELECT session_id FROM active_sessions ORDER BY session_id")
        .await
        .unwrap();
    r.rows
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

/// One statement on a connection of its own.
async fn raw(url: &str, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

async fn scenario(url: &str) {
    let store = Store::open(url).await.unwrap();
    store
        .append_batch(vec![
            // Running when n1 died: in active_sessions.
            start("n1", "A"),
            // Killed, but n1 died before its session.end.
            start("n1", "K"),
            of(EventType::SESSION_KILLED, "n1", "K"),
            // Ended; and killed then ended.
            start("n1", "E"),
            of(EventType::SESSION_END, "n1", "E"),
            start("n1", "KE"),
            of(EventType::SESSION_KILLED, "n1", "KE"),
            of(EventType::SESSION_END, "n1", "KE"),
            // Another node's, running and killed: not n1's to close.
            start("n2", "B"),
            start("n2", "BK"),
            of(EventType::SESSION_KILLED, "n2", "BK"),
            // Started after K: closed after it.
            start("n1", "A2"),
        ])
        .await
        .unwrap();
    assert_eq!(active(&store).await, ["A", "A2", "B"]);
    let dir = tempfile::tempdir().unwrap();
    let recordings = || Arc::new(LocalDir::new(dir.path()));
    let r = recover_crashed_sessions(&store, "n1", recordings())
        .await
        .unwrap();
    assert_eq!(r.sessions, ["A", "K", "A2"], "in the order they started");
    assert_eq!(active(&store).await, ["B"]);
    let again = recover_crashed_sessions(&store, "n1", recordings())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let n2 = recover_crashed_sessions(&store, "n2", recordings())
        .await
        .unwrap();
    assert_eq!(n2.sessions, ["B", "BK"]);
    assert!(store.verify_chain().await.unwrap().first_bad.is_none());
    store.close().await;

    // A store from before active_sessions (no backfill recorded): the
    // next open fills it, and serve's start finds the running session.
    let store = Store::open(url).await.unwrap();
    store.append(&start("n3", "C")).await.unwrap();
    raw(url, "DELETE FROM active_sessions").await;
    raw(url, "DELETE FROM store_backfills").await;
    store.close().await;
    let store = Store::open(url).await.unwrap();
    assert_eq!(active(&store).await, ["C"]);
    // Recorded once: later opens leave the table alone (they do not run
    // the backfill's query again).
    raw(url, "DELETE FROM active_sessions").await;
    store.close().await;
    let store = Store::open(url).await.unwrap();
    assert!(active(&store).await.is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!("sqlite://{}/audit.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    use sqlx::postgres::PgPool;
    let admin = PgPool::connect(PG_ADMIN).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth): {e}")
    });
    let name = format!(
        "gh_open_sessions_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    scenario(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
}
