//! The console's tables and lists, against SQLite and against the
//! PostgreSQL server on this machine (127.0.0.1:5432, user postgres), each
//! in a database of its own.

use std::time::Duration;

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
    let url = format!("sqlite://{}/audit.db", dir.path().display());
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
    let name = format!(
        "gh_console_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
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

fn console(hash: &str, user: &str, absolute: Duration) -> NewConsoleSession {
    NewConsoleSession {
        id_hash: hash.into(),
        user: user.into(),
        csrf: format!("csrf-{hash}"),
        source_ip: Some("10.0.0.7".into()),
        mfa: true,
        absolute,
        granted_roles: Vec::new(),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

async fn console_sessions_expire_when_idle_or_past_their_end(db: Db) {
    let s = &db.store;
    let h = token_hash("cookie-1");
    assert_eq!(h.len(), 64);
    s.create_console_session(&console(&h, "alice", HOUR))
        .await
        .unwrap();
    let got = s.console_session(&h, HOUR).await.unwrap().unwrap();
    assert_eq!(
        (got.user.as_str(), got.csrf.as_str(), got.mfa),
        ("alice", format!("csrf-{h}").as_str(), true)
    );
    assert_eq!(got.source_ip.as_deref(), Some("10.0.0.7"));
    assert_eq!(got.created_at, got.last_seen);
    assert!(got.expires_at > got.created_at);
    assert!(s.console_session("unknown", HOUR).await.unwrap().is_none());

    // Idle: unused for longer than `idle` is gone, and stays gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.touch_console_session(&h).await.unwrap());
    let touched = s
        .console_session(&h, Duration::from_millis(250))
        .await
        .unwrap()
        .unwrap();
    assert!(touched.last_seen > got.last_seen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s
        .console_session(&h, Duration::from_millis(250))
        .await
        .unwrap()
        .is_none());
    assert!(s.console_session(&h, HOUR).await.unwrap().is_none());
    assert!(!s.touch_console_session(&h).await.unwrap());

    // Absolute: past expires_at however recently used.
    let short = token_hash("cookie-2");
    s.create_console_session(&console(&short, "alice", Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(s.console_session(&short, HOUR).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.touch_console_session(&short).await.unwrap();
    assert!(s.console_session(&short, HOUR).await.unwrap().is_none());

    // Sign-out, one and all of a user's.
    for (c, u) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
        s.create_console_session(&console(c, u, HOUR))
            .await
            .unwrap();
    }
    assert!(s.end_console_session("a1").await.unwrap());
    assert!(!s.end_console_session("a1").await.unwrap());
    assert_eq!(s.end_console_sessions_of("alice").await.unwrap(), 1);
    assert!(s.console_session("a2", HOUR).await.unwrap().is_none());
    assert!(s.console_session("b1", HOUR).await.unwrap().is_some());
    assert!(s
        .console_session("b1", HOUR)
        .await
        .unwrap()
        .unwrap()
        .granted_roles
        .is_empty());

    // A sign-in at an identity provider keeps the roles it granted.
    let mut sso = console("c1", "carol", HOUR);
    sso.granted_roles = vec!["self".into(), "oncall".into()];
    s.create_console_session(&sso).await.unwrap();
    let got = s.console_session("c1", HOUR).await.unwrap().unwrap();
    assert_eq!(got.granted_roles, vec!["self", "oncall"]);
    db.done().await;
}
both!(console_sessions_expire_when_idle_or_past_their_end);

async fn api_tokens_are_found_by_hash_until_revoked(db: Db) {
    let s = &db.store;
    let a = s
        .create_api_token("alice", "ci", &token_hash("ghp_a"), "root")
        .await
        .unwrap();
    let b = s
        .create_api_token("alice", "laptop", &token_hash("ghp_b"), "alice")
        .await
        .unwrap();
    let c = s
        .create_api_token("bob", "ci", &token_hash("ghp_c"), "root")
        .await
        .unwrap();
    assert_eq!(a.id.len(), 26);
    assert!(s
        .create_api_token("bob", "dup", &token_hash("ghp_c"), "root")
        .await
        .is_err());
    assert_eq!(
        s.api_token_by_hash(&token_hash("ghp_b")).await.unwrap(),
        Some(b.clone())
    );
    assert!(s
        .api_token_by_hash(&token_hash("ghp_x"))
        .await
        .unwrap()
        .is_none());
    let ids = |v: Vec<ApiToken>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.api_tokens(Some("alice")).await.unwrap()),
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(ids(s.api_tokens(None).await.unwrap()).len(), 3);
    assert!(s.api_tokens(Some("carol")).await.unwrap().is_empty());

    // The first use is audited, a use within the minute is not.
    assert!(s.touch_api_token(&a.id).await.unwrap());
    assert!(!s.touch_api_token(&a.id).await.unwrap());
    let used = s.api_token(&a.id).await.unwrap().unwrap();
    assert!(used.last_used_at.is_some());
    s.raw(&format!(
        "UPDATE api_tokens SET last_used_at = '2020-01-01T00:00:00.000Z' WHERE id = '{}'",
        a.id
    ))
    .await;
    assert!(s.touch_api_token(&a.id).await.unwrap());

    assert!(s.revoke_api_token(&a.id).await.unwrap());
    assert!(!s.revoke_api_token(&a.id).await.unwrap());
    assert!(!s.revoke_api_token("nope").await.unwrap());
    assert!(s
        .api_token_by_hash(&token_hash("ghp_a"))
        .await
        .unwrap()
        .is_none());
    let revoked = s.api_token(&a.id).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(s.api_tokens(Some("alice")).await.unwrap().len(), 2);
    assert_eq!(s.api_token(&c.id).await.unwrap().unwrap().user, "bob");
    db.done().await;
}
both!(api_tokens_are_found_by_hash_until_revoked);

trait RawStore {
    async fn raw(&self, sql: &str);
}

impl RawStore for Store {
    async fn raw(&self, sql: &str) {
        let sql = sql.to_string();
        match &self.inner.pool {
            Pool::Sqlite { rw, .. } => {
                sqlx::query(AssertSqlSafe(sql)).execute(rw).await.unwrap();
            }
            Pool::Postgres(pg) => {
                sqlx::query(AssertSqlSafe(sql)).execute(pg).await.unwrap();
            }
        }
    }
}

/// `2026-01-01T00:00:SS.000Z`
fn at(second: u32) -> String {
    format!("2026-01-01T00:{:02}:{:02}.000Z", second / 60, second % 60)
}

fn ev(kind: &str, sid: &str, user: &str, second: u32) -> NewEvent {
    let mut e = NewEvent::new(kind, Severity::Info, Outcome::Success, "n1")
        .user(user)
        .session(sid)
        .source_ip(format!("10.0.0.{}", user.len()))
        .login("deploy");
    e.time = at(second);
    e
}

struct Trail {
    events: Vec<NewEvent>,
}

impl Trail {
    fn start(&mut self, sid: &str, user: &str, target: &str, second: u32) {
        let mut e = ev(EventType::SESSION_START, sid, user, second).target(target);
        if target == "web02" {
            e.login = Some("root".into());
        }
        e.mfa = user == "alice";
        self.events.push(e);
    }
    fn command(&mut self, sid: &str, user: &str, second: u32, line: &str) {
        self.events.push(
            ev(EventType::COMMAND, sid, user, second)
                .details(json!({"command": line, "source": "interactive"})),
        );
    }
    fn end(&mut self, sid: &str, user: &str, second: u32, exit: i64) {
        self.events.push(
            ev(EventType::SESSION_END, sid, user, second).details(json!({
                "duration_ms": 1500, "bytes_in": 10, "bytes_out": 2000, "exit_status": exit,
                "recording_id": sid, "recording_sha256": "ab12",
            })),
        );
    }
}

/// S1 alice web01 (two commands, ended), S2 bob web02 (target lost), S3
/// alice web02 (running), S4 carol web03 (killed), D0..D6 dave web01.
async fn sample(s: &Store) {
    let mut t = Trail { events: Vec::new() };
    t.start("S1", "alice", "web01", 1);
    t.command("S1", "alice", 2, "ls -la");
    t.command("S1", "alice", 3, "sudo Systemctl restart nginx");
    t.start("S2", "bob", "web02", 4);
    t.end("S1", "alice", 5, 0);
    t.start("S3", "alice", "web02", 6);
    t.command("S3", "alice", 7, "cat /etc/SHADOW");
    t.command("S2", "bob", 7, "echo 100%_done");
    let mut lost = ev(EventType::SESSION_END, "S2", "bob", 8)
        .details(json!({"duration_ms": 4000, "bytes_in": null, "exit_status": 3}))
        .reason("the connection to the target was lost");
    lost.result = Outcome::Error;
    lost.severity = Severity::Warn;
    t.events.push(lost);
    t.start("S4", "carol", "web03", 9);
    t.events.push(
        ev(EventType::SESSION_KILLED, "S4", "carol", 10)
            .details(json!({"by": "root"}))
            .reason("bye"),
    );
    for i in 0..7 {
        let sid = format!("D{i}");
        t.start(&sid, "dave", "web01", 20 + i);
        t.end(&sid, "dave", 40 + i, 0);
    }
    // Not a session: no row.
    t.events
        .push(ev(EventType::AUTH_SUCCESS, "S9", "erin", 50).target("web01"));
    s.append_batch(t.events).await.unwrap();
}

async fn ids(s: &Store, f: &SessionFilter) -> Vec<String> {
    s.sessions_page(f, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.session_id)
        .collect()
}

fn v(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn the_session_list_filters_scopes_and_pages(db: Db) {
    let s = &db.store;
    sample(s).await;
    let all = SessionFilter::default();
    assert_eq!(
        ids(s, &all).await,
        v(&["D6", "D5", "D4", "D3", "D2", "D1", "D0", "S4", "S3", "S2", "S1"])
    );

    // Pages of 3 through the cursor give the same rows.
    let mut paged = Vec::new();
    let mut f = all.clone();
    loop {
        let page = s.sessions_page(&f, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        let last = page.last().unwrap();
        f.before = Some((last.start_time.clone(), last.session_id.clone()));
        paged.extend(page.into_iter().map(|r| r.session_id));
    }
    assert_eq!(paged, ids(s, &all).await);

    let with = |g: fn(&mut SessionFilter)| {
        let mut f = SessionFilter::default();
        g(&mut f);
        f
    };
    assert_eq!(
        ids(s, &with(|f| f.user = Some("alice".into()))).await,
        v(&["S3", "S1"])
    );
    assert_eq!(
        ids(s, &with(|f| f.target = Some("web02".into()))).await,
        v(&["S3", "S2"])
    );
    assert_eq!(
        ids(s, &with(|f| f.login = Some("root".into()))).await,
        v(&["S3", "S2"])
    );
    assert_eq!(
        ids(s, &with(|f| f.source_ip = Some("10.0.0.3".into()))).await,
        v(&["S2"])
    );
    // since is inclusive, until exclusive; a time with an offset is read
    // as the instant it names.
    let window = with(|f| {
        f.since = Some(at(4));
        f.until = Some("2026-01-01T01:00:09+01:00".into());
    });
    assert_eq!(ids(s, &window).await, v(&["S3", "S2"]));
    assert_eq!(ids(s, &with(|f| f.active = Some(true))).await, v(&["S3"]));
    let ended = ids(s, &with(|f| f.active = Some(false))).await;
    assert_eq!(ended.len(), 10);
    assert!(!ended.contains(&"S3".to_string()));

    // Commands: any case; short text; LIKE characters taken literally.
    let cmd = |c: &'static str| SessionFilter {
        command: Some(c.into()),
        ..SessionFilter::default()
    };
    assert_eq!(ids(s, &cmd("SYSTEMCTL")).await, v(&["S1"]));
    assert_eq!(ids(s, &cmd("shadow")).await, v(&["S3"]));
    assert_eq!(ids(s, &cmd("ls")).await, v(&["S1"]));
    assert_eq!(ids(s, &cmd("100%_d")).await, v(&["S2"]));
    assert!(ids(s, &cmd("1%0")).await.is_empty());
    assert!(ids(s, &cmd("x_y")).await.is_empty());
    assert!(ids(s, &cmd("nothing like it")).await.is_empty());
    let mut f = cmd("e");
    f.active = Some(true);
    assert_eq!(ids(s, &f).await, v(&["S3"]));

    // Scope: own sessions or the listed targets, with the other filters.
    let visible = |user: &str, targets: &[&str]| SessionFilter {
        scope: Scope::Visible {
            user: user.into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
        },
        ..SessionFilter::default()
    };
    assert_eq!(ids(s, &visible("bob", &["web03"])).await, v(&["S4", "S2"]));
    assert_eq!(
        ids(s, &visible("alice", &["web02"])).await,
        v(&["S3", "S2", "S1"])
    );
    assert_eq!(ids(s, &visible("nobody", &[])).await, Vec::<String>::new());
    let many: Vec<String> = (0..40).map(|i| format!("web{i:02}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut f = visible("carol", &many);
    f.user = Some("alice".into());
    assert_eq!(ids(s, &f).await, v(&["S3", "S1"]));
    f.before = Some((at(6), "S3".into()));
    assert_eq!(ids(s, &f).await, v(&["S1"]));
    let mut f = visible("bob", &["web01"]);
    f.command = Some("ls -".into());
    assert_eq!(ids(s, &f).await, v(&["S1"]));
    db.done().await;
}
both!(the_session_list_filters_scopes_and_pages);

async fn a_session_row_holds_the_view_columns_and_more(db: Db) {
    let s = &db.store;
    sample(s).await;
    let r = s.session_row("S1").await.unwrap().unwrap();
    assert_eq!(
        r,
        SessionRow {
            session_id: "S1".into(),
            user: "alice".into(),
            source_ip: Some("10.0.0.5".into()),
            node: "n1".into(),
            target: "web01".into(),
            login: "deploy".into(),
            mfa: true,
            start_time: at(1),
            end_time: Some(at(5)),
            duration_ms: Some(1500),
            bytes_in: Some(10),
            bytes_out: Some(2000),
            exit_status: Some(0),
            recording_id: Some("S1".into()),
            recording_sha256: Some("ab12".into()),
            active: false,
            commands: 2,
            end_reason: None,
        }
    );
    let lost = s.session_row("S2").await.unwrap().unwrap();
    assert_eq!(
        lost.end_reason.as_deref(),
        Some("the connection to the target was lost")
    );
    assert_eq!((lost.bytes_in, lost.exit_status), (None, Some(3)));
    assert!(!lost.mfa);
    let running = s.session_row("S3").await.unwrap().unwrap();
    assert!(running.active && running.end_time.is_none());
    assert_eq!(running.commands, 1);
    let killed = s.session_row("S4").await.unwrap().unwrap();
    assert!(!killed.active);
    assert_eq!(killed.end_reason.as_deref(), Some("killed by root: bye"));
    assert!(s.session_row("S9").await.unwrap().is_none());
    assert!(s.session_row("nope").await.unwrap().is_none());

    // The same as the sessions view says.
    let view = s
        .query_readonly("SELECT session_id, active FROM sessions ORDER BY session_id")
        .await
        .unwrap();
    for row in &view.rows {
        let id = row[0].as_str().unwrap();
        let active = row[1] == json!(1) || row[1] == json!(true);
        assert_eq!(
            s.session_row(id).await.unwrap().unwrap().active,
            active,
            "{id}"
        );
    }
    db.done().await;
}
both!(a_session_row_holds_the_view_columns_and_more);

async fn active_sessions_are_kept_by_triggers_and_backfilled_once(db: Db) {
    let s = &db.store;
    sample(s).await;
    let active = |store: Store| async move {
        let r = store
            .query_readonly("SELECT session_id FROM active_sessions ORDER BY session_id")
            .await
            .unwrap();
        r.rows
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(active(s.clone()).await, v(&["S3"]));
    // A store from before the table: empty, no backfill recorded.
    s.raw("DELETE FROM active_sessions").await;
    s.raw("DELETE FROM store_backfills").await;
    let again = Store::open(&db.url).await.unwrap();
    assert_eq!(active(again.clone()).await, v(&["S3"]));
    let f = SessionFilter {
        command: Some("shadow".into()),
        ..SessionFilter::default()
    };
    assert_eq!(ids(&again, &f).await, v(&["S3"]));
    // Backfilled once: a second open leaves the table alone.
    again.raw("DELETE FROM active_sessions").await;
    let third = Store::open(&db.url).await.unwrap();
    assert!(active(third.clone()).await.is_empty());
    third.close().await;
    again.close().await;
    db.done().await;
}
both!(active_sessions_are_kept_by_triggers_and_backfilled_once);

async fn event_ids(s: &Store, f: &EventFilter) -> Vec<(String, Option<String>)> {
    s.events_page(f, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.event.kind, e.event.session_id))
        .collect()
}

async fn the_event_list_filters_and_pages(db: Db) {
    let s = &db.store;
    let mut denied = NewEvent::new(
        EventType::ACCESS_DENIED,
        Severity::Warn,
        Outcome::Denied,
        "n1",
    )
    .user("bob")
    .target("prod01")
    .reason("No rule ALLOWS bob");
    denied.time = at(1);
    let mut blocked = NewEvent::new(
        EventType::SOURCE_BLOCKED,
        Severity::High,
        Outcome::Success,
        "n1",
    )
    .source_ip("10.9.9.9")
    .details(json!({"until": "later", "by": "Brute-Force defence"}));
    blocked.time = at(2);
    s.append_batch(vec![denied, blocked]).await.unwrap();
    sample(s).await;
    let all = s.events_page(&EventFilter::default(), 1000).await.unwrap();
    assert_eq!(all.len(), 28);
    assert!(all.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
    assert_eq!(all[0].1.event.kind, EventType::AUTH_SUCCESS);

    let with = |g: fn(&mut EventFilter)| {
        let mut f = EventFilter::default();
        g(&mut f);
        f
    };
    let kinds = |v: Vec<(String, Option<String>)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(
        event_ids(s, &with(|f| f.kind = Some("command".into())))
            .await
            .len(),
        4
    );
    let sess = kinds(event_ids(s, &with(|f| f.kind = Some("session.*".into()))).await);
    assert_eq!(sess.len(), 4 + 1 + 7 * 2 + 2);
    assert!(sess.iter().all(|k| k.starts_with("session.")));
    assert!(event_ids(s, &with(|f| f.kind = Some("session".into())))
        .await
        .is_empty());
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.result = Some(Outcome::Denied))).await),
        vec!["access.denied"]
    );
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.severity = Some(Severity::Warn))).await),
        vec!["session.end", "source.blocked", "access.denied"]
    );
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.severity = Some(Severity::High))).await),
        vec!["source.blocked"]
    );
    assert_eq!(
        event_ids(s, &with(|f| f.severity = Some(Severity::Info)))
            .await
            .len(),
        28
    );
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.target = Some("prod01".into()))).await),
        vec!["access.denied"]
    );
    assert_eq!(
        event_ids(s, &with(|f| f.user = Some("alice".into())))
            .await
            .len(),
        6
    );
    assert_eq!(
        event_ids(s, &with(|f| f.session_id = Some("S2".into()))).await,
        vec![
            ("session.end".to_string(), Some("S2".to_string())),
            ("command".to_string(), Some("S2".to_string())),
            ("session.start".to_string(), Some("S2".to_string())),
        ]
    );
    let window = with(|f| {
        f.since = Some(at(9));
        f.until = Some(at(20));
    });
    assert_eq!(
        kinds(event_ids(s, &window).await),
        vec!["session.killed", "session.start"]
    );
    // Text: the reason or the details, in any case, literally.
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.text = Some("no rule allows".into()))).await),
        vec!["access.denied"]
    );
    assert_eq!(
        kinds(event_ids(s, &with(|f| f.text = Some("brute-force".into()))).await),
        vec!["source.blocked"]
    );
    assert_eq!(
        event_ids(s, &with(|f| f.text = Some("100%_".into())))
            .await
            .len(),
        1
    );
    assert!(event_ids(s, &with(|f| f.text = Some("1%0".into())))
        .await
        .is_empty());

    // Pages through before_seq give every event once, newest first.
    let mut f = EventFilter::default();
    let mut seen = Vec::new();
    loop {
        let page = s.events_page(&f, 7).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        f.before_seq = Some(*last);
        seen.extend(page.into_iter().map(|(seq, _)| seq));
    }
    assert_eq!(seen, all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>());
    db.done().await;
}
both!(the_event_list_filters_and_pages);

/// A user's events page in time order, equal times by seq (an event can
/// be committed after a newer one), and pages give every event once.
async fn a_users_events_page_in_time_order(db: Db) {
    let s = &db.store;
    let mut events = Vec::new();
    for (user, second) in [
        ("alice", 5),
        ("bob", 6),
        ("alice", 3),
        ("alice", 7),
        ("bob", 1),
        ("alice", 7),
        ("alice", 1),
    ] {
        events.push(ev(EventType::COMMAND, "S", user, second));
    }
    s.append_batch(events).await.unwrap();
    let mut f = EventFilter {
        user: Some("alice".into()),
        ..Default::default()
    };
    let all = s.events_page(&f, 100).await.unwrap();
    let first = s.events_page(&EventFilter::default(), 100).await.unwrap();
    let base = first.iter().map(|(seq, _)| *seq).min().unwrap();
    let got: Vec<(String, i64)> = all
        .iter()
        .map(|(seq, e)| (e.event.time.clone(), seq - base))
        .collect();
    assert_eq!(
        got,
        vec![(at(7), 5), (at(7), 3), (at(5), 0), (at(3), 2), (at(1), 6)]
    );
    let mut seen = Vec::new();
    loop {
        let page = s.events_page(&f, 2).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        f.before_seq = Some(*last);
        seen.extend(page.into_iter().map(|(seq, _)| seq));
    }
    assert_eq!(seen, all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>());
    // A cursor that is no event's seq ends the list.
    f.before_seq = Some(base + 1000);
    assert!(s.events_page(&f, 10).await.unwrap().is_empty());
    db.done().await;
}
both!(a_users_events_page_in_time_order);

/// A store made by an older release loses the (user_name, seq) index
/// when opened: creating it again succeeds only if it is gone.
async fn the_old_user_seq_index_is_dropped_on_open(db: Db) {
    let create = "CREATE INDEX audit_events_user_seq ON audit_events (user_name, seq)";
    db.store.raw(create).await;
    let again = Store::open(&db.url).await.unwrap();
    again.raw(create).await;
    again.close().await;
    db.done().await;
}
both!(the_old_user_seq_index_is_dropped_on_open);

/// SQLite reads a user's page through (user_name, time) in its order:
/// no sort and no walk of the whole trail, with or without a cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_events_are_read_through_the_user_index() {
    let db = sqlite().await;
    let s = &db.store;
    s.append(&ev(EventType::COMMAND, "S", "alice", 1))
        .await
        .unwrap();
    for before_seq in [None, Some(1)] {
        let f = EventFilter {
            user: Some("alice".into()),
            before_seq,
            ..Default::default()
        };
        let plan = s.events_plan(&f).await.unwrap().join("\n");
        assert!(
            plan.contains("SEARCH audit_events USING INDEX audit_events_user_time (user_name=?"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
    db.done().await;
}

async fn the_last_checkpoint_is_the_newest(db: Db) {
    let s = &db.store;
    assert!(s.last_checkpoint().await.unwrap().is_none());
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::load_or_create(&dir.path().join("k")).unwrap();
    s.append(&ev(EventType::AUTH_SUCCESS, "S", "alice", 1))
        .await
        .unwrap();
    s.checkpoint(&signer).await.unwrap();
    s.append(&ev(EventType::AUTH_SUCCESS, "S", "alice", 2))
        .await
        .unwrap();
    let seq = s.checkpoint(&signer).await.unwrap().unwrap();
    let (last, time) = s.last_checkpoint().await.unwrap().unwrap();
    assert_eq!(last, seq);
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len());
    db.done().await;
}
both!(the_last_checkpoint_is_the_newest);

/// More events of a type than SQLite reads through the type index and
/// sorts: the page walks the trail in seq order instead, with the same
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_common_type_is_read_in_seq_order() {
    let db = sqlite().await;
    let s = &db.store;
    let mut events = Vec::new();
    for i in 0..20_050u32 {
        let kind = if i % 1000 == 0 {
            EventType::AUTH_FAILURE
        } else {
            EventType::COMMAND
        };
        events.push(ev(kind, "S", "alice", i % 3000));
    }
    s.append_batch(events).await.unwrap();
    let mut f = EventFilter {
        kind: Some("command".into()),
        ..Default::default()
    };
    let page = s.events_page(&f, 3).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.iter().all(|(_, e)| e.event.kind == "command"));
    assert_eq!(page[0].0, 20_050);
    f.kind = Some("auth.*".into());
    let failures = s.events_page(&f, 100).await.unwrap();
    assert_eq!(failures.len(), 21);
    assert_eq!(failures[0].0, 20_001);
    f.kind = Some("c*".into());
    f.since = Some(at(2990));
    f.before_seq = Some(20_000);
    let late = s.events_page(&f, 1000).await.unwrap();
    assert!(late
        .iter()
        .all(|(seq, e)| *seq < 20_000 && e.event.time >= at(2990)));
    assert_eq!(late.len(), 60);
    db.done().await;
}
