//! The built-in runbooks over the `cloudtrail` view, and CloudTrail-style
//! queries, on SQLite and on the PostgreSQL server on this machine
//! (127.0.0.1:5432, user postgres), each in a database of its own: the
//! same SQL returns the same rows on both, and the surge runbook's
//! `block_source` action blocks the address it found.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use gatehouse_control::{Actor, Channel, Control};
use gatehouse_model::event::format_time;
use gatehouse_model::{Config, EventType, NewEvent, Outcome, Severity};
use gatehouse_store::{QueryResult, Store};
use serde_json::{json, Value};

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Db {
    store: Store,
    pg_name: Option<String>,
    dir: tempfile::TempDir,
}

async fn open(postgres: bool) -> Db {
    let dir = tempfile::tempdir().unwrap();
    if !postgres {
        let url = format!("sqlite://{}/audit.db", dir.path().display());
        return Db {
            store: Store::open(&url).await.unwrap(),
            pg_name: None,
            dir,
        };
    }
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth): {e}")
    });
    let name = format!("gh_ct_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    Db {
        store: Store::open(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
            .await
            .unwrap(),
        pg_name: Some(name),
        dir,
    }
}

impl Db {
    async fn done(self) {
        self.store.close().await;
        if let Some(name) = self.pg_name {
            let admin = sqlx::PgPool::connect(PG_ADMIN).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

type Time = chrono::DateTime<Utc>;

fn at(now: Time, minutes_ago: i64, e: NewEvent) -> NewEvent {
    let mut e = e;
    e.time = format_time(now - Duration::minutes(minutes_ago));
    e
}

fn denied(now: Time, ip: &str, minutes_ago: i64) -> NewEvent {
    at(
        now,
        minutes_ago,
        NewEvent::new(
            EventType::ACCESS_DENIED,
            Severity::Warn,
            Outcome::Denied,
            "gw-1",
        )
        .user("bob")
        .source_ip(ip)
        .target("db01")
        .reason("no allow rule of bob's roles names db01")
        .details(json!({"rule": null})),
    )
}

fn start(now: Time, user: &str, session: &str, mfa: bool, minutes_ago: i64) -> NewEvent {
    at(
        now,
        minutes_ago,
        NewEvent::new(
            EventType::SESSION_START,
            Severity::Info,
            Outcome::Success,
            "gw-1",
        )
        .user(user)
        .source_ip("10.0.0.7")
        .session(session)
        .target("web01")
        .login("deploy")
        .mfa(mfa)
        .details(json!({"address": "10.0.1.5:22"})),
    )
}

/// A morning at the gateway: a surge of refusals from one address, a few
/// from others, brute force, and sessions with and without a code.
async fn seed(store: &Store, now: Time) {
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(denied(now, "203.0.113.9", 10 + i));
    }
    events.push(denied(now, "198.51.100.4", 5));
    events.push(denied(now, "198.51.100.4", 6));
    // A surge, but two hours ago: outside the default window.
    for i in 0..7 {
        events.push(denied(now, "192.0.2.50", 120 + i));
    }
    // Failed logins are AuthenticateUser / AuthFailure, not refusals.
    for i in 0..6 {
        events.push(at(
            now,
            3 + i,
            NewEvent::new(
                EventType::AUTH_FAILURE,
                Severity::Warn,
                Outcome::Failure,
                "gw-1",
            )
            .user("root")
            .source_ip("198.51.100.7")
            .reason("unknown user \"root\"")
            .details(json!({"method": "publickey"})),
        ));
    }
    events.push(start(now, "alice", "S-ALICE", true, 30));
    events.push(start(now, "carol", "S-CAROL", false, 20));
    events.push(start(now, "carol", "S-CAROL-OLD", false, 60 * 24 * 10));
    // A refusal without a code is not a session.
    events.push(denied(now, "10.0.0.9", 15).user("dave"));
    for e in &events {
        store.append(e).await.unwrap();
    }
    store
        .set_service_name("ssh-proxy.example.com")
        .await
        .unwrap();
}

fn config(dir: &std::path::Path) -> Config {
    Config::parse("[server]\nnode = \"gw-1\"\n", &dir.join("gatehouse.toml")).unwrap()
}

fn builtin(name: &str) -> gatehouse_audit::Runbook {
    gatehouse_audit::runbook::load_all(None)
        .unwrap()
        .into_iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no built-in runbook {name}"))
}

fn column<'a>(r: &'a QueryResult, name: &str) -> Vec<&'a Value> {
    let i = r
        .columns
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", r.columns));
    r.rows.iter().map(|row| &row[i]).collect()
}

async fn surge_runbook_finds_and_blocks_the_address(postgres: bool) {
    let db = open(postgres).await;
    seed(&db.store, Utc::now()).await;
    let config = config(db.dir.path());
    let ops = Control::new(&db.store, &config, Actor::operator("root", Channel::Cli));
    let plan = ops
        .plan_runbook(builtin("cloudtrail-denied-surge"), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        plan.rows.columns,
        [
            "sourceipaddress",
            "attempts",
            "first_attempt",
            "last_attempt"
        ]
    );
    assert_eq!(
        column(&plan.rows, "sourceipaddress"),
        [&json!("203.0.113.9")]
    );
    assert_eq!(column(&plan.rows, "attempts"), [&json!(6)]);
    let first = column(&plan.rows, "first_attempt")[0].as_str().unwrap();
    assert!(first.ends_with('Z') && first.len() == 20, "{first}");

    // A wider window and a lower bar find the old surge and the pair too.
    let mut params = BTreeMap::new();
    params.insert("since".to_string(), "3h".to_string());
    params.insert("min".to_string(), "2".to_string());
    let wide = ops
        .plan_runbook(builtin("cloudtrail-denied-surge"), params)
        .await
        .unwrap();
    assert_eq!(
        column(&wide.rows, "sourceipaddress"),
        [
            &json!("192.0.2.50"),
            &json!("203.0.113.9"),
            &json!("198.51.100.4")
        ]
    );

    let out = ops.run_runbook(&plan, true).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].error.is_none(), "{out:?}");
    assert!(db
        .store
        .source_blocked("203.0.113.9")
        .await
        .unwrap()
        .is_some());
    assert!(db
        .store
        .source_blocked("198.51.100.4")
        .await
        .unwrap()
        .is_none());
    // The block is itself in the trail, and in the view as a BlockSource
    // by the runbook.
    let r = db
        .store
        .query_readonly(
            "SELECT userIdentity->>'principalId' AS principal, requestParameters->>'sourceAddress' AS blocked, eventType \
             FROM cloudtrail WHERE eventName = 'BlockSource'",
        )
        .await
        .unwrap();
    assert_eq!(
        r.rows,
        [[
            json!("runbook:cloudtrail-denied-surge"),
            json!("203.0.113.9"),
            json!("AwsServiceEvent")
        ]]
    );
    db.done().await;
}

#[tokio::test]
async fn surge_runbook_on_sqlite() {
    surge_runbook_finds_and_blocks_the_address(false).await;
}

#[tokio::test]
async fn surge_runbook_on_postgres() {
    surge_runbook_finds_and_blocks_the_address(true).await;
}

async fn sessions_without_mfa_runbook_lists_them(postgres: bool) {
    let db = open(postgres).await;
    seed(&db.store, Utc::now()).await;
    let config = config(db.dir.path());
    let ops = Control::new(&db.store, &config, Actor::operator("root", Channel::Cli));
    let plan = ops
        .plan_runbook(builtin("cloudtrail-sessions-without-mfa"), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        plan.rows.columns,
        [
            "eventtime",
            "user_name",
            "sourceipaddress",
            "target",
            "login",
            "session_id"
        ]
    );
    assert_eq!(plan.rows.rows.len(), 1, "{:?}", plan.rows.rows);
    assert_eq!(
        plan.rows.rows[0][1..],
        [
            json!("carol"),
            json!("10.0.0.7"),
            json!("web01"),
            json!("deploy"),
            json!("S-CAROL")
        ]
    );
    let mut params = BTreeMap::new();
    params.insert("since".to_string(), "30d".to_string());
    let month = ops
        .plan_runbook(builtin("cloudtrail-sessions-without-mfa"), params)
        .await
        .unwrap();
    assert_eq!(
        column(&month.rows, "session_id"),
        [&json!("S-CAROL"), &json!("S-CAROL-OLD")]
    );
    db.done().await;
}

#[tokio::test]
async fn sessions_without_mfa_runbook_on_sqlite() {
    sessions_without_mfa_runbook_lists_them(false).await;
}

#[tokio::test]
async fn sessions_without_mfa_runbook_on_postgres() {
    sessions_without_mfa_runbook_lists_them(true).await;
}

/// Queries in CloudTrail's own terms, written once, give the same rows
/// on both backends.
#[tokio::test]
async fn cloudtrail_queries_read_the_same_on_both_backends() {
    let queries = [
        // Refused attempts, newest first.
        "SELECT eventTime, userIdentity->>'userName' AS user_name, sourceIPAddress, errorCode, errorMessage \
         FROM cloudtrail WHERE eventName = 'AuthorizeSession' AND errorCode = 'AccessDenied' \
         ORDER BY eventTime DESC, sourceIPAddress",
        // Sessions whose identity says no MFA, by the nested attribute.
        "SELECT additionalEventData->>'sessionId' AS session_id FROM cloudtrail \
         WHERE eventName = 'StartSession' \
         AND userIdentity->'sessionContext'->'attributes'->>'mfaAuthenticated' = 'false' \
         ORDER BY session_id",
        // Failed logins per address, in any case of the column names.
        "SELECT SOURCEIPADDRESS, count(*) AS n FROM cloudtrail \
         WHERE EventName = 'AuthenticateUser' AND errorcode = 'AuthFailure' GROUP BY sourceipaddress",
        "SELECT DISTINCT eventSource, eventVersion, eventType FROM cloudtrail ORDER BY eventType",
    ];
    let now = Utc::now();
    let mut results = Vec::new();
    for postgres in [false, true] {
        let db = open(postgres).await;
        seed(&db.store, now).await;
        let mut mine = Vec::new();
        for q in queries {
            mine.push(
                db.store
                    .query_readonly(q)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}")),
            );
        }
        results.push(mine);
        db.done().await;
    }
    assert_eq!(results[0], results[1]);
    let r = &results[0];
    assert_eq!(r[0].rows.len(), 16);
    assert_eq!(
        r[0].columns,
        [
            "eventtime",
            "user_name",
            "sourceipaddress",
            "errorcode",
            "errormessage"
        ]
    );
    assert_eq!(
        column(&r[1], "session_id"),
        [&json!("S-CAROL"), &json!("S-CAROL-OLD")]
    );
    assert_eq!(r[2].rows, [[json!("198.51.100.7"), json!(6)]]);
    assert_eq!(
        r[3].rows,
        [[
            json!("ssh-proxy.example.com"),
            json!("1.09"),
            json!("AwsApiCall")
        ]]
    );
}
