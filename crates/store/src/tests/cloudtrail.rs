//! The `cloudtrail` view on both backends: every row is the record
//! `gatehouse_model::cloudtrail::record` makes of the same event, read
//! through `query_readonly` (what `audit query` runs), and the view is
//! rebuilt when an older one is found.

use gatehouse_model::cloudtrail::{record, EVENT_NAMES};
use gatehouse_model::event::Event;
use gatehouse_model::{EventType, NewEvent, Outcome, Severity};
use serde_json::{json, Map, Value};

use super::*;

/// The view's columns in order, as CloudTrail spells the fields.
const FIELDS: &[&str] = &[
    "eventVersion",
    "eventTime",
    "eventSource",
    "eventName",
    "eventType",
    "userIdentity",
    "sourceIPAddress",
    "errorCode",
    "errorMessage",
    "requestParameters",
    "additionalEventData",
    "eventID",
];

const JSON_FIELDS: &[&str] = &["userIdentity", "requestParameters", "additionalEventData"];

fn new(kind: &str, severity: Severity, result: Outcome) -> NewEvent {
    NewEvent::new(kind, severity, result, "gw-1")
}

/// Events as the gateway, the CLI, the console and the rules write them.
fn realistic() -> Vec<NewEvent> {
    use Outcome::*;
    use Severity::*;
    let s1 = "01JSESSIONALICE0000000000A";
    let alice = |kind: &str, severity, result| {
        new(kind, severity, result)
            .user("alice")
            .source_ip("10.0.0.7")
            .session(s1)
            .target("web01")
            .login("deploy")
            .mfa(true)
    };
    vec![
        alice(EventType::AUTH_SUCCESS, Info, Success).details(json!({
            "method": "publickey+totp", "via": "direct", "key": "SHA256:abc"})),
        alice(EventType::SESSION_START, Info, Success).details(json!({
            "address": "10.0.1.5:22", "rule": "role dev allow[0]: targets env=prod; logins deploy"})),
        alice(EventType::COMMAND, Info, Success)
            .details(json!({"command": "uptime", "source": "exec"})),
        alice(EventType::COMMAND, Info, Success).details(json!({
            "command": "echo 'it''s' \"quoted\" \u{1b}[31m\\ ünï", "source": "interactive",
            "recording_id": s1, "offset": 1.25})),
        alice(EventType::COMMAND_DENIED, Warn, Denied)
            .reason("denied by role dev deny[0]: rm -rf")
            .details(json!({"command": "rm -rf /", "source": "exec"})),
        alice("sftp.close", Info, Success).details(json!({
            "op": "close", "path": "/srv/app/config.yml", "target_path": null, "mode": "write",
            "flags": 26, "bytes_read": 0, "bytes_written": 1234, "status": null, "error": null})),
        alice("sftp.rename", Info, Failure)
            .reason("No such file")
            .details(json!({"op": "rename", "path": "/a", "target_path": "/b", "status": 2,
                            "error": "No such file"})),
        alice(EventType::SESSION_END, Info, Success).details(json!({
            "duration_ms": 5120, "bytes_in": 10, "bytes_out": 2000, "exit_status": null,
            "start_time": "2026-11-24T19:06:55.000Z", "recording_id": s1,
            "recording_sha256": "cd".repeat(32),
            "recordings": [{"id": s1, "sha256": "cd".repeat(32), "bytes": 2100, "error": null}]})),
        new(EventType::AUTH_FAILURE, Warn, Failure)
            .user("mallory")
            .source_ip("203.0.113.9")
            .reason("unknown user \"mallory\"")
            .details(json!({"method": "publickey"})),
        new(EventType::ACCESS_DENIED, Warn, Denied)
            .user("bob")
            .source_ip("203.0.113.9")
            .session("01JSESSIONBOB00000000000000")
            .target("db01")
            .reason("no allow rule of bob's roles names db01")
            .details(json!({"rule": null})),
        new(EventType::USER_LOCKED, Warn, Success)
            .user("bob")
            .reason("left the company")
            .details(json!({"until": null, "ending_sessions": [], "by": "root",
                            "channel": "cli", "sudo_user": "ops"})),
        new(EventType::SOURCE_BLOCKED, High, Success)
            .source_ip("203.0.113.9")
            .reason("surge of denied attempts")
            .details(json!({"until": "2026-11-24T20:00:00.000Z", "by": "runbook:denied-surge",
                            "channel": "runbook", "run_by": "root", "run_channel": "cli"})),
        new(EventType::APPROVAL_GRANTED, Warn, Success)
            .user("alice")
            .target("db01")
            .login("postgres")
            .details(json!({"request": "AB12CD34", "requester": "bob", "grant_until": null,
                            "by": "alice", "channel": "ssh", "by_session": s1,
                            "by_source_ip": "10.0.0.7"})),
        new(EventType::RECORDING_ACCESS, Info, Denied)
            .user("carol")
            .source_ip("192.0.2.7")
            .session(s1)
            .reason("carol may not read session ...")
            .details(json!({"recording_id": s1, "action": "view", "by": "carol",
                            "channel": "web"})),
        new(EventType::SESSION_KILLED, Warn, Success)
            .user("bob")
            .session("01JSESSIONBOB00000000000000")
            .reason("user locked: left the company")
            .details(json!({"by": "root"})),
        new(EventType::ALERT, High, Success)
            .user("mallory")
            .source_ip("203.0.113.9")
            .reason("alert auth-failure-burst")
            .details(json!({"alert": "auth-failure-burst", "event_id": "X", "event_type":
                            "auth.failure", "by": "203.0.113.9", "sinks": [], "actions": []})),
        new(EventType::TARGET_UNREACHABLE, Warn, Error)
            .user("alice")
            .source_ip("10.0.0.7")
            .target("web02")
            .reason("connection refused"),
        new(EventType::GATEWAY_START, Info, Success)
            .details(json!({"listen": "0.0.0.0:2222", "config": "/etc/gatehouse.toml"})),
        new(EventType::AUTH_SUCCESS, Info, Success)
            .user("dana")
            .source_ip("10.0.0.8")
            .session("01JSESSIONDANA0000000000000")
            .details(json!({"method": "sso", "identity": {"provider": "corp", "subject": "00u1",
                            "email": "dana@example.com", "groups": ["ops", null]}})),
        new(EventType::SESSION_START, Info, Success)
            .user("dana")
            .source_ip("10.0.0.8")
            .session("01JSESSIONDANA0000000000000")
            .target("web01")
            .login("deploy")
            .details(json!({"identity": {"provider": 7, "subject": "00u1"}})),
        // Keys of the wrong type count as absent, in Rust and in SQL.
        new("token.used", Info, Success)
            .user("erin")
            .details(json!({"channel": 5, "by": ["x"], "command": {"a": 1}})),
        new("sftp.symlink", Info, Success).user("alice"),
        new("custom.thing", Info, Error).reason("it broke"),
    ]
}

/// A row of the view as a record: its columns under CloudTrail's field
/// names, JSON columns parsed, NULLs left out.
fn row_record(columns: &[String], row: &[Value]) -> (String, Value) {
    let mut out = Map::new();
    for (column, cell) in columns.iter().zip(row) {
        let field = FIELDS
            .iter()
            .find(|f| f.to_lowercase() == *column)
            .unwrap_or_else(|| panic!("unexpected column {column}"));
        let value = match cell {
            Value::Null => continue,
            Value::String(s) if JSON_FIELDS.contains(field) => {
                serde_json::from_str(s).unwrap_or_else(|e| panic!("{field}: {e}: {s}"))
            }
            other => other.clone(),
        };
        out.insert(field.to_string(), value);
    }
    let id = out["eventID"].as_str().unwrap().to_string();
    (id, Value::Object(out))
}

async fn view_records(store: &Store) -> Vec<(String, Value)> {
    let r = store
        .query_readonly("SELECT * FROM cloudtrail")
        .await
        .unwrap();
    let expected: Vec<String> = FIELDS.iter().map(|f| f.to_lowercase()).collect();
    assert_eq!(r.columns, expected);
    r.rows
        .iter()
        .map(|row| row_record(&r.columns, row))
        .collect()
}

fn assert_same(stored: &[Event], rows: &[(String, Value)], service: &str) {
    assert_eq!(rows.len(), stored.len());
    for ev in stored {
        let (_, row) = rows
            .iter()
            .find(|(id, _)| *id == ev.event.id)
            .unwrap_or_else(|| panic!("no row for {}", ev.event.kind));
        let want = record(ev, service);
        assert_eq!(
            *row, want,
            "{}: the view and cloudtrail::record differ",
            ev.event.kind
        );
    }
}

async fn the_view_shows_each_event_as_the_rust_mapping_does(db: Db) {
    let mut stored = Vec::new();
    for e in realistic() {
        stored.push(db.store.append(&e).await.unwrap());
    }
    // Before any service name is set: the default.
    assert_eq!(db.store.service_name().await.unwrap(), "gatehouse");
    assert_same(&stored, &view_records(&db.store).await, "gatehouse");

    db.store
        .set_service_name("ssh-proxy.example.com")
        .await
        .unwrap();
    let rows = view_records(&db.store).await;
    assert_same(&stored, &rows, "ssh-proxy.example.com");
    // Spot checks of what the comparison covers.
    let by_kind = |kind: &str| {
        let ev = stored.iter().find(|e| e.event.kind == kind).unwrap();
        rows.iter()
            .find(|(id, _)| *id == ev.event.id)
            .unwrap()
            .1
            .clone()
    };
    let denied = by_kind(EventType::ACCESS_DENIED);
    assert_eq!(denied["eventName"], "AuthorizeSession");
    assert_eq!(denied["errorCode"], "AccessDenied");
    assert_eq!(denied["eventSource"], "ssh-proxy.example.com");
    assert_eq!(denied["eventTime"].as_str().unwrap().len(), 20);
    let locked = by_kind(EventType::USER_LOCKED);
    assert_eq!(locked["userIdentity"]["type"], "Root");
    assert_eq!(locked["requestParameters"]["userName"], "bob");
    let end = by_kind(EventType::SESSION_END);
    assert_eq!(
        end["additionalEventData"]["recordingDigest"],
        "cd".repeat(32)
    );
    assert_eq!(
        end["additionalEventData"]["details"]["recordings"][0]["error"],
        Value::Null
    );
    db.done().await;
}
both!(the_view_shows_each_event_as_the_rust_mapping_does);

/// Every type the mapping names, in every result, gives the same record.
async fn every_event_name_and_error_code_agree(db: Db) {
    let mut stored = Vec::new();
    for (kind, _) in EVENT_NAMES {
        for result in [
            Outcome::Success,
            Outcome::Denied,
            Outcome::Failure,
            Outcome::Error,
        ] {
            let e = new(kind, Severity::Info, result)
                .user("alice")
                .reason("because");
            stored.push(db.store.append(&e).await.unwrap());
        }
    }
    db.store.set_service_name("gw.example.com").await.unwrap();
    assert_same(&stored, &view_records(&db.store).await, "gw.example.com");
    db.done().await;
}
both!(every_event_name_and_error_code_agree);

/// A store whose view was made by an older mapping gets the current one
/// when it is opened, and keeps its service name.
async fn an_old_view_is_replaced_when_the_store_opens(db: Db) {
    let stored = vec![db
        .store
        .append(&new(
            EventType::GATEWAY_START,
            Severity::Info,
            Outcome::Success,
        ))
        .await
        .unwrap()];
    db.store.set_service_name("old.example.com").await.unwrap();
    db.tamper(
        "DROP VIEW cloudtrail; CREATE VIEW cloudtrail AS SELECT id AS eventid FROM audit_events; \
         UPDATE store_settings SET value = 'older' WHERE name = 'cloudtrail_view'",
    )
    .await;
    let again = Store::open(&db.url).await.unwrap();
    assert_same(&stored, &view_records(&again).await, "old.example.com");
    again.close().await;
    db.done().await;
}
both!(an_old_view_is_replaced_when_the_store_opens);
