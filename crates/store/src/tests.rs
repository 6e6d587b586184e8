//! Every test runs against SQLite and against the PostgreSQL server on
//! this machine (127.0.0.1:5432, user postgres), each in a database of its
//! own.

use gatehouse_model::{EventType, NewEvent, Outcome, Severity};
use serde_json::json;

use super::*;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Db {
    store: Store,
    url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/audit.db", dir.path().display());
    Db {
        store: Store::open(&url).await.unwrap(),
        url,
        pg_name: None,
        _dir: Some(dir),
    }
}

async fn postgres() -> Db {
    let admin = PgPool::connect(PG_ADMIN).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth) for the store tests: {e}")
    });
    let name = format!("gh_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    Db {
        store: Store::open(&url).await.unwrap(),
        url,
        pg_name: Some(name),
        _dir: None,
    }
}

impl Db {
    /// Runs SQL behind the store's back, as an attacker with file or
    /// database access would.
    async fn tamper(&self, sql: &str) {
        match self.store.backend() {
            Backend::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                    .await
                    .unwrap();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::query(AssertSqlSafe(stmt.to_string()))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = PgPool::connect(&self.url).await.unwrap();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::query(AssertSqlSafe(stmt.to_string()))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            }
        }
    }

    async fn done(self) {
        self.store.close().await;
        if let Some(name) = self.pg_name {
            let admin = PgPool::connect(PG_ADMIN).await.unwrap();
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::postgres().await).await
            }
        }
    };
}

fn ev(kind: &str) -> NewEvent {
    NewEvent::new(kind, Severity::Info, Outcome::Success, "node-1")
        .user("alice")
        .source_ip("127.0.0.1")
        .target("web01")
        .login("deploy")
}

async fn appends_build_a_valid_chain(db: Db) {
    let a = db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let b = db
        .store
        .append(&ev(EventType::SESSION_START))
        .await
        .unwrap();
    assert_eq!(a.prev_hash, GENESIS);
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(b.hash, chain_hash(&b.event, &a.hash));
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!(report.events_checked, 2);
    assert_eq!(report.first_bad, None);
    let recent = db.store.recent_events(10).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0], a);
    assert_eq!(recent[1], b);
    db.done().await;
}
both!(appends_build_a_valid_chain);

async fn concurrent_appends_never_fork_the_chain(db: Db) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(&ev(EventType::COMMAND).details(json!({"command": format!("cmd {i}")})))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!(report.events_checked, 50);
    assert_eq!(report.first_bad, None);
    db.done().await;
}
both!(concurrent_appends_never_fork_the_chain);

/// Two stores on one database, as two gateway nodes: each appends while
/// the head it last wrote is stale (the other appended since) and while it
/// is not, with values that need quoting. Every event reads back exactly as written and the
/// chain verifies.
async fn two_writers_take_turns_without_forking(db: Db) {
    let other = Store::open(&db.url).await.unwrap();
    let awkward = [
        "it's",
        "back\\slash \\' E'x' $$ $q$",
        "line\nbreak\ttab \u{1b}[31m",
        "日本語 ✓",
        "'); DROP TABLE audit_events; --",
    ];
    let mut written = Vec::new();
    for (i, text) in awkward.iter().enumerate() {
        for (n, store) in [&db.store, &other].into_iter().enumerate() {
            let e = ev(EventType::COMMAND)
                .reason(*text)
                .session(format!("s-{i}-{n}"))
                .mfa(n == 1)
                .details(json!({"command": text, "n": i, "nested": {"q": "\"", "z": null}}));
            // The first batch finds the head moved by the other store,
            // the second follows the head this store wrote.
            let batch = vec![e.clone(), ev(EventType::SESSION_END).reason(*text)];
            written.extend(store.append_batch(batch).await.unwrap());
            let next = ev(EventType::COMMAND)
                .user(*text)
                .details(e.details.clone());
            written.push(store.append(&next).await.unwrap());
        }
    }
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!(report.events_checked, written.len() as u64);
    assert_eq!(report.first_bad, None);
    let stored = other.recent_events(100).await.unwrap();
    assert_eq!(stored, written);
    other.close().await;
    db.done().await;
}
both!(two_writers_take_turns_without_forking);

/// An append whose caller gives up while its commit waits for the chain's
/// lock (held here by another connection) leaves nothing half-done: once
/// the lock is free, the next append commits and the chain verifies.
async fn an_abandoned_commit_leaves_the_store_usable(db: Db) {
    db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let blocker: Box<dyn std::any::Any> = match db.store.backend() {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                .await
                .unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .unwrap();
            Box::new((pool, conn))
        }
        Backend::Postgres => {
            let pool = PgPool::connect(&db.url).await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_APPEND_LOCK)
                .execute(&mut *conn)
                .await
                .unwrap();
            Box::new((pool, conn))
        }
    };
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        db.store.append(&ev(EventType::SESSION_START)),
    )
    .await;
    assert!(abandoned.is_err(), "the append did not wait for the lock");
    // Closing the blocker's connection releases its lock.
    drop(blocker);
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        db.store.append(&ev(EventType::SESSION_END)),
    )
    .await;
    assert!(
        matches!(next, Ok(Ok(_))),
        "the append after an abandoned one: {next:?}"
    );
    db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!(report.first_bad, None);
    assert!(report.events_checked >= 3, "{report:?}");
    db.done().await;
}
both!(an_abandoned_commit_leaves_the_store_usable);

async fn seed(db: &Db) -> Vec<Event> {
    let mut out = Vec::new();
    for kind in [
        EventType::AUTH_SUCCESS,
        EventType::SESSION_START,
        EventType::COMMAND,
        EventType::SESSION_END,
    ] {
        out.push(db.store.append(&ev(kind)).await.unwrap());
    }
    out
}

async fn verify_detects_an_edited_event(db: Db) {
    let events = seed(&db).await;
    db.tamper(&format!(
        "UPDATE audit_events SET user_name = 'mallory' WHERE id = '{}'",
        events[2].event.id
    ))
    .await;
    let bad = db
        .store
        .verify_chain()
        .await
        .unwrap()
        .first_bad
        .expect("tampering detected");
    assert_eq!(bad.id, events[2].event.id);
    assert!(bad.problem.contains("modified"), "{}", bad.problem);
    db.done().await;
}
both!(verify_detects_an_edited_event);

async fn verify_detects_a_deleted_event(db: Db) {
    let events = seed(&db).await;
    db.tamper(&format!(
        "DELETE FROM audit_events WHERE id = '{}'",
        events[1].event.id
    ))
    .await;
    let bad = db
        .store
        .verify_chain()
        .await
        .unwrap()
        .first_bad
        .expect("deletion detected");
    assert_eq!(bad.id, events[2].event.id);
    assert!(bad.problem.contains("removed"), "{}", bad.problem);
    db.done().await;
}
both!(verify_detects_a_deleted_event);

async fn verify_detects_reordering(db: Db) {
    let events = seed(&db).await;
    let (a, b) = (&events[1].event.id, &events[2].event.id);
    db.tamper(&format!(
        "UPDATE audit_events SET seq = -1 WHERE id = '{a}'; UPDATE audit_events SET seq = -2 WHERE id = '{b}';
         UPDATE audit_events SET seq = 3 WHERE id = '{a}'; UPDATE audit_events SET seq = 2 WHERE id = '{b}'"
    ))
    .await;
    let bad = db
        .store
        .verify_chain()
        .await
        .unwrap()
        .first_bad
        .expect("reordering detected");
    assert_eq!(bad.id, *b);
    db.done().await;
}
both!(verify_detects_reordering);

async fn views_describe_sessions_and_commands(db: Db) {
    let sid = "01SESSION";
    db.store
        .append(&ev(EventType::SESSION_START).session(sid))
        .await
        .unwrap();
    db.store
        .append(
            &ev(EventType::COMMAND)
                .session(sid)
                .details(json!({"command": "uptime", "source": "exec"})),
        )
        .await
        .unwrap();
    let active = db
        .store
        .query_readonly("SELECT session_id, active, end_time FROM sessions")
        .await
        .unwrap();
    assert_eq!(active.rows.len(), 1);
    assert!(
        active.rows[0][1] == json!(1) || active.rows[0][1] == json!(true),
        "{:?}",
        active.rows
    );
    db.store
        .append(&ev(EventType::SESSION_END).session(sid).details(json!({
            "duration_ms": 1500, "bytes_in": 10, "bytes_out": 20, "exit_status": 3,
            "recording_id": null, "recording_sha256": null
        })))
        .await
        .unwrap();
    let r = db
        .store
        .query_readonly("SELECT session_id, \"user\", target, login, duration_ms, bytes_in, bytes_out, exit_status, active FROM sessions")
        .await
        .unwrap();
    assert_eq!(r.columns[1], "user");
    assert_eq!(r.rows[0][0], json!(sid));
    assert_eq!(r.rows[0][1], json!("alice"));
    assert_eq!(r.rows[0][4], json!(1500));
    assert_eq!(r.rows[0][7], json!(3));
    assert!(r.rows[0][8] == json!(0) || r.rows[0][8] == json!(false));
    let c = db
        .store
        .query_readonly("SELECT \"user\", command, source FROM commands")
        .await
        .unwrap();
    assert_eq!(
        c.rows,
        vec![vec![json!("alice"), json!("uptime"), json!("exec")]]
    );
    let e = db
        .store
        .query_readonly("SELECT id, time, type, severity, \"user\", source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash FROM events")
        .await
        .unwrap();
    assert_eq!(e.rows.len(), 3);
    db.done().await;
}
both!(views_describe_sessions_and_commands);

async fn writes_through_audit_query_are_refused(db: Db) {
    seed(&db).await;
    for sql in [
        "DELETE FROM audit_events",
        "DROP VIEW events",
        "INSERT INTO host_keys (target, fingerprint, first_seen) VALUES ('a', 'b', 'c')",
        "UPDATE audit_events SET user_name = 'x'",
        "CREATE TABLE evil (x INTEGER)",
    ] {
        match db.store.query_readonly(sql).await {
            Err(StoreError::ReadOnly(_)) => {}
            other => panic!("{sql}: expected a read-only refusal, got {other:?}"),
        }
    }
    let n = db
        .store
        .query_readonly("SELECT count(*) AS n FROM events")
        .await
        .unwrap();
    assert_eq!(n.rows[0][0], json!(4));
    assert_eq!(db.store.verify_chain().await.unwrap().first_bad, None);
    db.done().await;
}
both!(writes_through_audit_query_are_refused);

async fn trust_on_first_use_keeps_the_first_key(db: Db) {
    assert_eq!(db.store.known_host_key("web01").await.unwrap(), None);
    db.store
        .remember_host_key("web01", "SHA256:first")
        .await
        .unwrap();
    db.store
        .remember_host_key("web01", "SHA256:second")
        .await
        .unwrap();
    assert_eq!(
        db.store.known_host_key("web01").await.unwrap().as_deref(),
        Some("SHA256:first")
    );
    db.done().await;
}
both!(trust_on_first_use_keeps_the_first_key);

async fn reopening_continues_the_chain(db: Db) {
    let first = db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    db.store.close().await;
    let reopened = Store::open(&db.url).await.unwrap();
    let second = reopened
        .append(&ev(EventType::SESSION_START))
        .await
        .unwrap();
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(reopened.verify_chain().await.unwrap().events_checked, 2);
    reopened.close().await;
    db.done().await;
}
both!(reopening_continues_the_chain);

#[tokio::test]
async fn an_unreachable_store_says_so() {
    let err = Store::open("postgres://postgres@127.0.0.1:1/nothing")
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("check store.url"), "{err}");
    let err = Store::open("mysql://x").await.err().expect("must fail");
    assert!(matches!(err, StoreError::Url(_)));
}

#[test]
fn passwords_are_redacted_from_messages() {
    assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
}

async fn kill_requests_round_trip(db: Db) {
    db.store
        .request_kill("S1", "suspicious", "admin")
        .await
        .unwrap();
    let pending = db.store.pending_kills().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].session_id, "S1");
    assert_eq!(pending[0].requested_by, "admin");
    db.store.kill_done(pending[0].id).await.unwrap();
    assert!(db.store.pending_kills().await.unwrap().is_empty());
    db.done().await;
}
both!(kill_requests_round_trip);

async fn totp_steps_are_single_use_and_locks_expire(db: Db) {
    assert!(db.store.enroll_totp("alice", "sealed").await.unwrap());
    assert!(
        !db.store.enroll_totp("alice", "again").await.unwrap(),
        "no silent re-enrolment"
    );
    assert_eq!(
        db.store.totp("alice").await.unwrap(),
        Some(("sealed".to_string(), 0))
    );
    assert!(db.store.use_totp_step("alice", 100).await.unwrap());
    assert!(
        !db.store.use_totp_step("alice", 100).await.unwrap(),
        "replay"
    );
    assert!(
        !db.store.use_totp_step("alice", 99).await.unwrap(),
        "older step"
    );
    assert!(db.store.use_totp_step("alice", 101).await.unwrap());
    assert!(db.store.reset_totp("alice").await.unwrap());
    assert_eq!(db.store.totp("alice").await.unwrap(), None);

    db.store
        .lock_user("bob", "incident", None, "admin")
        .await
        .unwrap();
    assert_eq!(
        db.store.user_lock("bob").await.unwrap().map(|l| l.reason),
        Some("incident".into())
    );
    db.store
        .lock_user("bob", "expired", Some("2000-01-01T00:00:00.000Z"), "admin")
        .await
        .unwrap();
    assert_eq!(
        db.store.user_lock("bob").await.unwrap(),
        None,
        "an expired lock is not in force"
    );
    db.store
        .lock_user("bob", "again", Some("2999-01-01T00:00:00.000Z"), "admin")
        .await
        .unwrap();
    assert!(db.store.user_lock("bob").await.unwrap().is_some());
    assert!(db.store.unlock_user("bob").await.unwrap());
    assert_eq!(db.store.user_lock("bob").await.unwrap(), None);
    db.done().await;
}
both!(totp_steps_are_single_use_and_locks_expire);

async fn a_batch_is_one_unbroken_stretch_of_the_chain(db: Db) {
    let first = db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let batch: Vec<NewEvent> = (0..500).map(|_| ev(EventType::COMMAND)).collect();
    let stored = db.store.append_batch(batch.clone()).await.unwrap();
    assert_eq!(stored.len(), 500);
    assert_eq!(stored[0].prev_hash, first.hash);
    assert_eq!(stored[0].event, batch[0]);
    assert_eq!(stored[499].event, batch[499]);
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!((report.events_checked, report.first_bad), (501, None));
    db.done().await;
}
both!(a_batch_is_one_unbroken_stretch_of_the_chain);

/// Values that need quoting in every layer a commit writes them through
/// (PostgreSQL's one-round-trip commit carries them as array literals
/// inside escape strings) come back as they went in.
async fn awkward_values_come_back_as_written(db: Db) {
    db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let awkward = [
        "it's",
        "say \"hi\"",
        "back\\slash\\",
        "\\\"",
        "{a,b}",
        "NULL",
        "",
        " padded ",
        "line\nbreak\ttab",
        "$$ E'x' $q$",
        "ünïcødé ✓",
        "\\.",
        "\\N",
        "cr\rlf\r\n",
        "a\\tb\\n",
        "tab\tend\t",
    ];
    // A small batch, then one of several of SQLite's 64-row statements.
    for size in [awkward.len(), 150] {
        awkward_batch(&db, &awkward, size).await;
    }
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!(report.first_bad, None);
    db.done().await;
}
both!(awkward_values_come_back_as_written);

async fn awkward_batch(db: &Db, awkward: &[&str], size: usize) {
    let batch: Vec<NewEvent> = awkward
        .iter()
        .cycle()
        .take(size)
        .enumerate()
        .map(|(i, text)| {
            let mut e = NewEvent::new(EventType::COMMAND, Severity::Info, Outcome::Success, text)
                .user(*text)
                .details(json!({"command": text, "n": i}));
            if i % 2 == 0 {
                e = e.reason(*text).target(*text).mfa(true);
            }
            e
        })
        .collect();
    let stored = db.store.append_batch(batch.clone()).await.unwrap();
    let read = db.store.recent_events(stored.len() as i64).await.unwrap();
    assert_eq!(read.len(), size);
    assert_eq!(read, stored);
    for (e, sent) in read.iter().zip(&batch) {
        assert_eq!(&e.event, sent);
    }
}

/// A NUL character (a client can put one in a user name or a command)
/// is stored as U+FFFD on both backends, alone or in a batch, and the
/// chain covers what was stored.
async fn a_nul_character_is_stored_as_a_replacement_character(db: Db) {
    db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    let nul = || {
        ev(EventType::AUTH_FAILURE)
            .user("ro\0ot")
            .reason("bad\0user")
            .details(json!({"command": "a\0b", "k\0ey": ["x\0", {"y": "\0"}], "text": "\\u0000"}))
    };
    let one = db.store.append(&nul()).await.unwrap();
    let batch = db
        .store
        .append_batch(vec![nul(), ev(EventType::COMMAND)])
        .await
        .unwrap();
    for stored in [&one, &batch[0]] {
        assert_eq!(stored.event.user.as_deref(), Some("ro\u{fffd}ot"));
        assert_eq!(stored.event.reason.as_deref(), Some("bad\u{fffd}user"));
        assert_eq!(
            stored.event.details,
            json!({"command": "a\u{fffd}b", "k\u{fffd}ey": ["x\u{fffd}", {"y": "\u{fffd}"}], "text": "\\u0000"})
        );
    }
    let read = db.store.recent_events(3).await.unwrap();
    assert_eq!(read, vec![one, batch[0].clone(), batch[1].clone()]);
    let report = db.store.verify_chain().await.unwrap();
    assert_eq!((report.events_checked, report.first_bad), (4, None));
    db.done().await;
}
both!(a_nul_character_is_stored_as_a_replacement_character);

async fn checkpoints_detect_a_truncated_tail(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&dir.path().join("sign.key")).unwrap();
    let events = seed(&db).await;
    assert_eq!(db.store.checkpoint(&signer).await.unwrap(), Some(4));
    let ok = db
        .store
        .verify_checkpoints(&signer.public_key_hex())
        .await
        .unwrap();
    assert_eq!((ok.checked, ok.problem), (1, None));
    // The chain alone cannot see a cut tail...
    db.tamper(&format!(
        "DELETE FROM audit_events WHERE id = '{}'",
        events[3].event.id
    ))
    .await;
    assert_eq!(db.store.verify_chain().await.unwrap().first_bad, None);
    // ...the signed checkpoint can.
    let bad = db
        .store
        .verify_checkpoints(&signer.public_key_hex())
        .await
        .unwrap();
    assert!(bad.problem.unwrap().contains("truncated"));
    // A checkpoint forged with another key is refused.
    let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
    let bad = db
        .store
        .verify_checkpoints(&other.public_key_hex())
        .await
        .unwrap();
    assert!(bad.problem.unwrap().contains("invalid signature"));
    db.done().await;
}
both!(checkpoints_detect_a_truncated_tail);

async fn source_blocks_expire(db: Db) {
    assert_eq!(db.store.source_blocked("10.0.0.9").await.unwrap(), None);
    db.store
        .block_source("10.0.0.9", "2999-01-01T00:00:00.000Z", "surge")
        .await
        .unwrap();
    assert_eq!(
        db.store
            .source_blocked("10.0.0.9")
            .await
            .unwrap()
            .as_deref(),
        Some("surge")
    );
    db.store
        .block_source("10.0.0.9", "2000-01-01T00:00:00.000Z", "old")
        .await
        .unwrap();
    assert_eq!(db.store.source_blocked("10.0.0.9").await.unwrap(), None);
    db.done().await;
}
both!(source_blocks_expire);

async fn approvals_are_decided_once_and_grants_expire(db: Db) {
    let id = db
        .store
        .request_approval("alice", "web01", "root", "sre")
        .await
        .unwrap();
    assert_eq!(id.len(), 8);
    assert_eq!(db.store.pending_approvals().await.unwrap().len(), 1);
    assert!(!db
        .store
        .active_grant("alice", "web01", "root")
        .await
        .unwrap());
    assert!(db
        .store
        .decide_approval(&id, true, "bob", None, Some("2999-01-01T00:00:00.000Z"))
        .await
        .unwrap());
    assert!(
        !db.store
            .decide_approval(&id, false, "carol", Some("late"), None)
            .await
            .unwrap(),
        "decided once"
    );
    assert_eq!(
        db.store
            .approval(&id)
            .await
            .unwrap()
            .unwrap()
            .decided_by
            .as_deref(),
        Some("bob")
    );
    assert!(db
        .store
        .active_grant("alice", "web01", "root")
        .await
        .unwrap());
    assert!(!db
        .store
        .active_grant("alice", "web01", "deploy")
        .await
        .unwrap());
    let old = db
        .store
        .request_approval("alice", "db01", "root", "sre")
        .await
        .unwrap();
    db.store
        .decide_approval(&old, true, "bob", None, Some("2000-01-01T00:00:00.000Z"))
        .await
        .unwrap();
    assert!(
        !db.store
            .active_grant("alice", "db01", "root")
            .await
            .unwrap(),
        "expired grant"
    );
    let gone = db
        .store
        .request_approval("alice", "db01", "root", "sre")
        .await
        .unwrap();
    assert!(db.store.expire_approval(&gone).await.unwrap());
    assert!(db.store.pending_approvals().await.unwrap().is_empty());
    db.done().await;
}
both!(approvals_are_decided_once_and_grants_expire);

const ENDLESS: &str = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) ";

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn runaway_queries_stop_at_the_cap_or_the_timeout(db: Db) {
    seed(&db).await;
    db.store
        .set_query_timeout(std::time::Duration::from_secs(2));
    let bounded = |sql: String| {
        let store = db.store.clone();
        async move {
            let started = std::time::Instant::now();
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                store.query_readonly_capped(&sql),
            )
            .await
            .unwrap_or_else(|_| panic!("{sql}: still running after 60 s"));
            (out, started.elapsed())
        }
    };
    // Endless rows: cut at the cap while streaming.
    let (out, took) = bounded(format!("{ENDLESS}SELECT n FROM r")).await;
    let (result, truncated) = out.unwrap();
    assert_eq!(truncated, Some(MAX_ROWS));
    assert_eq!(result.rows.len(), MAX_ROWS);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
    // No rows, endless work: stopped by the statement timeout.
    let (out, took) = bounded(format!("{ENDLESS}SELECT count(*) FROM r")).await;
    match out {
        Err(e @ StoreError::Timeout(_)) => {
            assert!(e.to_string().contains("audit.query_timeout"), "{e}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // Endless rows that are too wide to keep: cut by size or time.
    let (out, _) = bounded(format!(
        "{ENDLESS}SELECT n, {} AS wide FROM r",
        match db.store.backend() {
            Backend::Sqlite => "printf('%.*c', 100000, 'x')",
            Backend::Postgres => "repeat('x', 100000)",
        }
    ))
    .await;
    match out {
        Ok((_, Some(_))) | Err(StoreError::Timeout(_)) => {}
        other => panic!("expected a cut-off result, got {:?}", other.map(|r| r.1)),
    }
    assert!(
        peak_rss_kib() < 2 * 1024 * 1024,
        "peak memory {} KiB",
        peak_rss_kib()
    );
    // The store is still healthy afterwards.
    let n = db
        .store
        .query_readonly("SELECT count(*) AS n FROM events")
        .await
        .unwrap();
    assert_eq!(n.rows[0][0], json!(4));
    db.store.append(&ev(EventType::AUTH_SUCCESS)).await.unwrap();
    assert_eq!(db.store.verify_chain().await.unwrap().first_bad, None);
    db.done().await;
}
both!(runaway_queries_stop_at_the_cap_or_the_timeout);

async fn read_only_queries_create_no_files(db: Db) {
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    for (sql, file) in [
        ("VACUUM INTO '{}'", "copy.db"),
        ("ATTACH DATABASE '{}' AS other", "attached.db"),
    ] {
        let path = dir.path().join(file);
        let sql = sql.replace("{}", &path.display().to_string());
        let out = db.store.query_readonly(&sql).await;
        match (db.store.backend(), &out) {
            (Backend::Sqlite, Err(StoreError::ReadOnly(_))) | (Backend::Postgres, Err(_)) => {}
            _ => panic!("{sql}: expected a refusal, got {out:?}"),
        }
        assert!(!path.exists(), "{sql} created {}", path.display());
    }
    // Ordinary queries still work on the same connections.
    let n = db
        .store
        .query_readonly("SELECT count(*) AS n FROM events")
        .await
        .unwrap();
    assert_eq!(n.rows[0][0], json!(4));
    db.done().await;
}
both!(read_only_queries_create_no_files);

async fn anchored_checkpoints_reveal_a_cut_tail(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&dir.path().join("sign.key")).unwrap();
    let key = signer.public_key_hex();
    let anchor = dir.path().join("anchor.jsonl");
    seed(&db).await;
    let made = db
        .store
        .checkpoint_anchored(&signer, &anchor, "node-1")
        .await
        .unwrap();
    // The head, then the audit.checkpoint event that carries it.
    assert_eq!(made.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4, 5]);
    let carried = db.store.events_after(4, 10).await.unwrap();
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0].1.event.kind, EventType::AUDIT_CHECKPOINT);
    assert_eq!(carried[0].1.event.details["seq"], json!(4));
    assert_eq!(carried[0].1.event.details["hash"], json!(made[0].hash));
    // An idle chain gets no new checkpoints.
    assert!(db
        .store
        .checkpoint_anchored(&signer, &anchor, "node-1")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(std::fs::read_to_string(&anchor).unwrap().lines().count(), 2);
    // What a jsonl sink holds: every event as a JSON line.
    let sink = dir.path().join("sink.jsonl");
    let lines: Vec<String> = db
        .store
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|(_, e)| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(&sink, lines.join("\n") + "\n").unwrap();
    for file in [&anchor, &sink] {
        let ok = db.store.verify_anchor(file, Some(&key)).await.unwrap();
        assert_eq!(ok.problem, None, "{}", file.display());
    }
    // Cut the tail and the checkpoints after it: chain and table agree...
    db.tamper("DELETE FROM audit_events WHERE seq >= 3; DELETE FROM audit_checkpoints")
        .await;
    assert_eq!(db.store.verify_chain().await.unwrap().first_bad, None);
    let table = db.store.verify_checkpoints(&key).await.unwrap();
    assert_eq!(table.problem, None);
    // ...the anchors outside the database do not.
    let bad = db.store.verify_anchor(&anchor, Some(&key)).await.unwrap();
    let problem = bad.problem.unwrap();
    assert!(
        problem.contains("ends at seq 2") && problem.contains("3..=5"),
        "{problem}"
    );
    let bad = db.store.verify_anchor(&sink, Some(&key)).await.unwrap();
    let problem = bad.problem.unwrap();
    assert!(problem.contains("3..=4"), "{problem}");
    // A forged anchor line is refused.
    let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
    let forged = db
        .store
        .verify_anchor(&anchor, Some(&other.public_key_hex()))
        .await
        .unwrap();
    assert!(forged.problem.unwrap().contains("invalid signature"));
    db.done().await;
}
both!(anchored_checkpoints_reveal_a_cut_tail);

fn start_on(node: &str, session: &str) -> NewEvent {
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

async fn node_of(store: &Store, name: &str) -> Node {
    let all = store.nodes().await.unwrap();
    all.into_iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("node {name} not listed"))
}

async fn lost_nodes_are_claimed_once_and_their_sessions_closed(db: Db) {
    let s = &db.store;
    let lost_after = std::time::Duration::from_secs(30);
    s.register_node("A", "10.0.0.1:2222", "0.1.0")
        .await
        .unwrap();
    s.register_node("B", "10.0.0.2:2222", "0.1.0")
        .await
        .unwrap();
    assert_eq!(
        s.heartbeat("B", "10.0.0.2:2222", "0.1.0").await.unwrap(),
        None
    );
    let end = NewEvent::new(
        EventType::SESSION_END,
        Severity::Info,
        Outcome::Success,
        "A",
    )
    .session("S2")
    .details(json!({}));
    s.append_batch(vec![
        start_on("A", "S1"),
        start_on("A", "S2"),
        end,
        start_on("A", "S3"),
        start_on("B", "S4"),
    ])
    .await
    .unwrap();
    let a = node_of(s, "A").await;
    assert_eq!(
        (a.address.as_str(), a.version.as_str()),
        ("10.0.0.1:2222", "0.1.0")
    );
    assert_eq!((a.open_sessions, a.state(lost_after)), (2, NodeState::Up));
    assert_eq!(node_of(s, "B").await.open_sessions, 1);
    assert!(s.stale_nodes(lost_after).await.unwrap().is_empty());

    // A stops heartbeating: its heartbeat is old by the store's clock.
    db.tamper("UPDATE nodes SET last_heartbeat = '2000-01-01T00:00:00.000Z' WHERE name = 'A'")
        .await;
    assert_eq!(node_of(s, "A").await.state(lost_after), NodeState::Lost);
    let stale = s.stale_nodes(lost_after).await.unwrap();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].name, "A");
    // Several live nodes notice at once: exactly one claim wins.
    let claims =
        futures::future::join_all(["B", "C", "D", "E"].map(|by| s.claim_lost_node(&stale[0], by)))
            .await;
    let won: Vec<bool> = claims.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let by = ["B", "C", "D", "E"][won.iter().position(|w| *w).unwrap()];
    assert!(s.stale_nodes(lost_after).await.unwrap().is_empty());
    // A claim given up can be won again.
    s.release_lost_node("A", by).await.unwrap();
    assert!(s.claim_lost_node(&stale[0], "B").await.unwrap());

    // B closes A's sessions; S1's recording is on B's disk (a shared
    // directory), S3's is not.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("S1.cast"), b"{\"version\":2}\n").unwrap();
    let r = close_lost_node(
        s,
        "A",
        "B",
        std::sync::Arc::new(crate::recordings::LocalDir::new(dir.path())),
    )
    .await
    .unwrap();
    assert_eq!(r.sessions, vec!["S1".to_string(), "S3".to_string()]);
    let events = s.recent_events(3).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["session.end", "session.end", "gateway.recovered"]
    );
    for e in &events {
        assert_eq!(e.event.node, "B");
        assert_eq!(e.event.details["lost_node"], "A");
    }
    let (s1, s3) = (&events[0].event, &events[1].event);
    assert_eq!(s1.reason.as_deref(), Some(lost_reason("A").as_str()));
    assert_eq!(s1.result, Outcome::Error);
    assert_eq!(s1.details["recovered"], true);
    assert_eq!(s1.details["recording_id"], "S1");
    assert_eq!(s1.details["recordings_not_read"], false);
    assert_eq!(s3.session_id.as_deref(), Some("S3"));
    assert_eq!(s3.details["recording_id"], serde_json::Value::Null);
    assert_eq!(s3.details["recordings"], json!([]));
    assert_eq!(s3.details["recordings_not_read"], true);
    assert_eq!(events[2].event.details["sessions"], 2);
    let a = node_of(s, "A").await;
    assert_eq!(a.lost_by.as_deref(), Some("B"));
    assert_eq!((a.open_sessions, a.state(lost_after)), (0, NodeState::Lost));
    assert_eq!(
        node_of(s, "B").await.open_sessions,
        1,
        "B's own session stays"
    );

    // A was not dead after all: its next heartbeat learns who closed its
    // sessions, and it is up again.
    let told = s.heartbeat("A", "10.0.0.1:2222", "0.1.0").await.unwrap();
    assert_eq!(told.as_deref(), Some("B"));
    assert_eq!(node_of(s, "A").await.state(lost_after), NodeState::Up);
    assert_eq!(
        s.heartbeat("A", "10.0.0.1:2222", "0.1.0").await.unwrap(),
        None
    );
    assert!(
        !s.claim_lost_node(&stale[0], "C").await.unwrap(),
        "it heartbeat since the stale read"
    );

    // A clean stop is not lost, however old its heartbeat.
    s.node_stopped("B").await.unwrap();
    db.tamper("UPDATE nodes SET last_heartbeat = '2000-01-01T00:00:00.000Z' WHERE name = 'B'")
        .await;
    assert_eq!(node_of(s, "B").await.state(lost_after), NodeState::Stopped);
    assert!(s.stale_nodes(lost_after).await.unwrap().is_empty());
    // Starting again clears it.
    s.register_node("B", "10.0.0.2:2222", "0.2.0")
        .await
        .unwrap();
    let b = node_of(s, "B").await;
    assert_eq!(
        (b.state(lost_after), b.version.as_str()),
        (NodeState::Up, "0.2.0")
    );
    assert!(s.verify_chain().await.unwrap().first_bad.is_none());
    db.done().await;
}
both!(lost_nodes_are_claimed_once_and_their_sessions_closed);

async fn next(rx: &mut wake::WakeUps) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a wake-up")
        .expect("open channel")
}

/// A kill request and an approval decision wake subscribers: on
/// PostgreSQL those of another store (another node) through
/// LISTEN/NOTIFY, on SQLite those of the same process.
async fn kill_and_decision_wake_subscribers(db: Db) {
    let other = Store::open(&db.url).await.unwrap();
    let pg = db.store.backend() == Backend::Postgres;
    let watcher = if pg { &other } else { &db.store };
    let mut rx = watcher.wake_ups();
    if pg {
        // The LISTEN connection announces itself once it is up.
        assert_eq!(next(&mut rx).await, wake::WAKE_KILL);
    }
    db.store.request_kill("S-1", "test", "root").await.unwrap();
    assert_eq!(next(&mut rx).await, wake::WAKE_KILL);
    let id = db
        .store
        .request_approval("alice", "web01", "deploy", "leads")
        .await
        .unwrap();
    assert!(db
        .store
        .decide_approval(&id, true, "bob", None, None)
        .await
        .unwrap());
    assert_eq!(next(&mut rx).await, wake::approval_wake(&id));
    // A decision that changes nothing wakes nobody.
    assert!(!db
        .store
        .decide_approval(&id, false, "bob", None, None)
        .await
        .unwrap());
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv())
        .await
        .is_err());
    other.close().await;
    db.done().await;
}
both!(kill_and_decision_wake_subscribers);

/// The `cloudtrail` view against the Rust mapping.
mod cloudtrail;
