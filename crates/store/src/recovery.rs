//! Closing what a crashed gateway process left open.
//!
//! A gateway that dies without running its shutdown (`kill -9`, OOM, power
//! loss) leaves `session.start` events without a `session.end`, SFTP files
//! and port forwards opened and never closed, and `sessions kill` requests
//! that nobody will ever carry out. When the same node starts again, before
//! it accepts connections, [`recover_crashed_sessions`] closes them: a
//! node has no live session at start, so every session it started that
//! has no end was interrupted.
//!
//! Only the node's own sessions are touched (`node` of `session.start`):
//! another node sharing the store may be running its sessions right now.
//! Everything is appended through the normal chained append, in one
//! transaction, so the hash chain stays valid and a second start finds
//! nothing left to close.
//!
//! [`close_lost_node`] does the same for another node that stopped
//! heartbeating (see `nodes`), run by the live node that claimed it. That
//! node's recordings are on its own disk: what this node cannot read is
//! said so (`recordings_not_read`), not listed, and so never reported as
//! missing or tampered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gatehouse_model::event::format_time;
use gatehouse_model::{EventType, NewEvent, Outcome, Severity};

use crate::recordings::{digest, RecordingStorage};
use crate::{Backend, Store, StoreError};

/// The `reason` of every event recovery writes.
pub const CRASH_REASON: &str = "gateway crashed";

/// The `reason` of the events that close a lost node's sessions.
pub fn lost_reason(node: &str) -> String {
    format!("node {node} stopped heartbeating; session lost")
}

/// Whose open sessions are closed, by which node, and why.
struct Closing<'a> {
    /// The node that started the sessions.
    of: &'a str,
    /// The node that writes the events (`of` itself after a crash).
    by: &'a str,
    /// The `reason` of each session's events.
    reason: String,
    /// The `reason` of `gateway.recovered`.
    summary: String,
    /// Another node's sessions (it stopped heartbeating).
    lost: bool,
}

/// What [`recover_crashed_sessions`] closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Sessions given a `session.end`, in the order they started.
    pub sessions: Vec<String>,
    /// SFTP files given an `sftp.close` (incomplete).
    pub transfers: usize,
    /// Port forwards given a `port_forward.close`.
    pub port_forwards: usize,
    /// Pending kill requests marked done.
    pub kill_requests: usize,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.transfers == 0
            && self.port_forwards == 0
            && self.kill_requests == 0
    }
}

/// A `session.start` of this node without a `session.end`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenSession {
    session_id: String,
    time: String,
    user: Option<String>,
    source_ip: Option<String>,
    target: Option<String>,
    login: Option<String>,
    mfa: bool,
}

/// A recording of a session as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordingOnDisk {
    id: String,
    sha256: String,
    bytes: u64,
    modified: Option<DateTime<Utc>>,
}

/// An opening event (`sftp.open`, `port_forward.open`) with no closing one.
#[derive(Debug, Clone, PartialEq)]
struct Unclosed {
    kind: &'static str,
    open_id: String,
    details: serde_json::Value,
}

type SessionRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

impl Store {
    /// Sessions started by `node` that have no `session.end`. Found from
    /// the few sessions that can be open, not from every event: those in
    /// `active_sessions` (started, neither ended nor killed; kept by
    /// triggers) and those killed without an end; then each one's start,
    /// by the session index. Two short steps, so no plan depends on the
    /// statistics of `active_sessions` (a store without VACUUM may hold
    /// many dead rows there).
    async fn open_sessions_of(&self, node: &str) -> Result<Vec<OpenSession>, StoreError> {
        let candidates = fetch_all!(
            self,
            (String,),
            "SELECT a.session_id FROM active_sessions a
             UNION
             SELECT k.session_id FROM audit_events k
             WHERE k.type = 'session.killed' AND k.session_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM audit_events e
                               WHERE e.session_id = k.session_id AND e.type = 'session.end')"
        );
        let mut rows: Vec<(i64, SessionRow)> = Vec::new();
        for (id,) in candidates {
            let found = fetch_all!(
                self,
                (i64, String, String, Option<String>, Option<String>, Option<String>, Option<String>, bool),
                "SELECT s.seq, s.session_id, s.time, s.user_name, s.source_ip, s.target, s.login, s.mfa
                 FROM audit_events s
                 WHERE s.session_id = ?1 AND s.type = 'session.start' AND s.node = ?2
                   AND NOT EXISTS (SELECT 1 FROM audit_events e
                                   WHERE e.session_id = s.session_id AND e.type = 'session.end')",
                &id,
                node
            );
            rows.extend(
                found
                    .into_iter()
                    .map(|(seq, a, b, c, d, e, f, g)| (seq, (a, b, c, d, e, f, g))),
            );
        }
        rows.sort_by_key(|(seq, _)| *seq);
        let mut seen = HashSet::new();
        Ok(rows
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| seen.insert(r.0.clone()))
            .map(
                |(session_id, time, user, source_ip, target, login, mfa)| OpenSession {
                    session_id,
                    time,
                    user,
                    source_ip,
                    target,
                    login,
                    mfa,
                },
            )
            .collect())
    }

    /// The time of the newest event of a session.
    async fn last_event_time(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        Ok(fetch_one!(
            self,
            Option<String>,
            "SELECT MAX(time) FROM audit_events WHERE session_id = ?1",
            session_id
        ))
    }

    /// SFTP files and port forwards of a session that were opened and not
    /// closed. A close pairs with the oldest earlier open of the same file
    /// (path and flags) or forward (host and port).
    async fn unclosed_channels(&self, session_id: &str) -> Result<Vec<Unclosed>, StoreError> {
        let details = match self.backend() {
            Backend::Sqlite => "details",
            Backend::Postgres => "details::text",
        };
        let rows = fetch_all!(
            self,
            (String, String, String, String),
            &format!(
                "SELECT id, type, result, {details} FROM audit_events
                 WHERE session_id = ?1
                   AND type IN ('sftp.open', 'sftp.close', 'port_forward.open', 'port_forward.close')
                 ORDER BY seq"
            ),
            session_id
        );
        Ok(pair_opens_and_closes(rows))
    }

    /// Kill requests not yet done for sessions that `node` started. At
    /// start the node runs no session, so none of them can be carried out.
    async fn stale_kills_of(&self, node: &str) -> Result<Vec<i64>, StoreError> {
        let not_done = match self.backend() {
            Backend::Sqlite => "k.done = 0",
            Backend::Postgres => "NOT k.done",
        };
        let rows = fetch_all!(
            self,
            (i64,),
            &format!(
                "SELECT k.id FROM session_kills k
                 WHERE {not_done} AND EXISTS (
                     SELECT 1 FROM audit_events s
                     WHERE s.session_id = k.session_id AND s.type = 'session.start' AND s.node = ?1)
                 ORDER BY k.id"
            ),
            node
        );
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

/// Which key identifies "the same channel" for an open/close type.
fn channel_key(kind: &str, details: &serde_json::Value) -> Option<(&'static str, String)> {
    let text = |k: &str| details.get(k).map(|v| v.to_string()).unwrap_or_default();
    match kind {
        "sftp.open" | "sftp.close" => Some(("sftp", format!("{}|{}", text("path"), text("flags")))),
        "port_forward.open" | "port_forward.close" => {
            Some(("port_forward", format!("{}|{}", text("host"), text("port"))))
        }
        _ => None,
    }
}

/// Rows are (id, type, result, details) in chain order.
fn pair_opens_and_closes(rows: Vec<(String, String, String, String)>) -> Vec<Unclosed> {
    // Open events still waiting for their close, per channel key, oldest
    // first; the outer order keeps the result in chain order.
    let mut open: BTreeMap<usize, Unclosed> = BTreeMap::new();
    let mut by_key: HashMap<(&'static str, String), Vec<usize>> = HashMap::new();
    for (i, (id, kind, result, details)) in rows.into_iter().enumerate() {
        let details: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
        let Some(key) = channel_key(&kind, &details) else {
            continue;
        };
        if kind.ends_with(".open") {
            // A refused or failed open has nothing to close.
            if result != Outcome::Success.as_str() {
                continue;
            }
            let closing = if key.0 == "sftp" {
                "sftp.close"
            } else {
                EventType::PORT_FORWARD_CLOSE
            };
            open.insert(
                i,
                Unclosed {
                    kind: closing,
                    open_id: id,
                    details,
                },
            );
            by_key.entry(key).or_default().push(i);
        } else if let Some(waiting) = by_key.get_mut(&key) {
            if !waiting.is_empty() {
                let first = waiting.remove(0);
                open.remove(&first);
            }
        }
    }
    open.into_values().collect()
}

/// Reads every recording of `sessions` from `storage` (blocking I/O).
fn read_recordings(
    storage: &dyn RecordingStorage,
    sessions: &[String],
) -> BTreeMap<String, Vec<RecordingOnDisk>> {
    let mut out = BTreeMap::new();
    for session in sessions {
        let ids = match storage.session_recordings(session) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, %session, "cannot list the recordings of an interrupted session");
                continue;
            }
        };
        let recs: Vec<RecordingOnDisk> = ids
            .into_iter()
            .filter_map(|id| match storage.open(&id).and_then(digest) {
                Ok((sha256, bytes)) => Some(RecordingOnDisk {
                    modified: storage.last_written(&id).map(DateTime::<Utc>::from),
                    id,
                    sha256,
                    bytes,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, place = %storage.locate(&id), "cannot read a recording of an interrupted session");
                    None
                }
            })
            .collect();
        if !recs.is_empty() {
            out.insert(session.clone(), recs);
        }
    }
    out
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl OpenSession {
    /// An event of this session, written by `c.by`, for the crash or loss.
    fn event(&self, kind: &str, c: &Closing) -> NewEvent {
        let mut ev = NewEvent::new(kind, Severity::Warn, Outcome::Error, c.by)
            .session(self.session_id.clone())
            .mfa(self.mfa)
            .reason(c.reason.clone());
        ev.user = self.user.clone();
        ev.source_ip = self.source_ip.clone();
        ev.target = self.target.clone();
        ev.login = self.login.clone();
        ev
    }
}

/// The closing event of a channel the crash interrupted: the open's own
/// fields, the byte counts unknown (null), marked incomplete.
fn closing_event(session: &OpenSession, c: &Closing, open: &Unclosed) -> NewEvent {
    let mut details = match &open.details {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut set = |k: &str, v: serde_json::Value| {
        details.insert(k.to_string(), v);
    };
    if open.kind == "sftp.close" {
        set("op", "close".into());
        set("bytes_read", serde_json::Value::Null);
        set("bytes_written", serde_json::Value::Null);
        set("status", serde_json::Value::Null);
        set("error", c.reason.clone().into());
    } else {
        set("bytes_in", serde_json::Value::Null);
        set("bytes_out", serde_json::Value::Null);
    }
    set("incomplete", true.into());
    set("recovered", true.into());
    set("open_id", open.open_id.clone().into());
    if c.lost {
        set("lost_node", c.of.into());
    }
    session
        .event(open.kind, c)
        .details(serde_json::Value::Object(details))
}

/// The `session.end` of an interrupted session: the same details as a
/// normal end, with what the crash lost set to null, the recordings as
/// they are on disk (up to the recorder's last flush) and `recovered`.
/// A lost node's session also names the node (`lost_node`) and says when
/// no recording of it could be read here (`recordings_not_read`).
fn session_end(
    session: &OpenSession,
    c: &Closing,
    recordings: &[RecordingOnDisk],
    last_event: Option<&str>,
) -> NewEvent {
    // The last sign of life: the newest event or recording write.
    let last_seen = recordings
        .iter()
        .filter_map(|r| r.modified)
        .chain(last_event.and_then(parse_time))
        .max();
    let duration_ms = match (parse_time(&session.time), last_seen) {
        (Some(start), Some(last)) if last >= start => {
            serde_json::json!((last - start).num_milliseconds())
        }
        _ => serde_json::Value::Null,
    };
    let first = recordings.first();
    let mut details = serde_json::json!({
            "duration_ms": duration_ms,
            "bytes_in": null,
            "bytes_out": null,
            "exit_status": null,
            "start_time": session.time,
            "last_seen": last_seen.map(format_time),
            "recording_id": first.map(|r| r.id.clone()),
            "recording_sha256": first.map(|r| r.sha256.clone()),
            "recordings": recordings
                .iter()
                .map(|r| serde_json::json!({"id": r.id, "sha256": r.sha256, "bytes": r.bytes}))
                .collect::<Vec<_>>(),
            "recovered": true,
    });
    if c.lost {
        details["lost_node"] = c.of.into();
        details["recordings_not_read"] = recordings.is_empty().into();
    }
    session.event(EventType::SESSION_END, c).details(details)
}

/// Closes what a previous process of `node` left open: run at start,
/// before the gateway accepts connections. `recordings` is where this
/// node writes its recordings. Returns what was closed; a store that
/// refuses the write leaves everything as it was.
pub async fn recover_crashed_sessions(
    store: &Store,
    node: &str,
    recordings: Arc<dyn RecordingStorage>,
) -> Result<Recovery, StoreError> {
    let closing = Closing {
        of: node,
        by: node,
        reason: CRASH_REASON.to_string(),
        summary: CRASH_REASON.to_string(),
        lost: false,
    };
    close_open_sessions(store, &closing, recordings).await
}

/// Closes what the node `lost`, which stopped heartbeating, left open;
/// run by the node `by` after it claimed `lost`
/// ([`Store::claim_lost_node`]), so once however many nodes noticed.
/// `recordings` is this node's recording storage: a recording found
/// there (always, when the nodes share a bucket) is listed with its
/// digest, one that is not (it is on the lost node's disk) is not listed
/// and `recordings_not_read` says so. A
/// `gateway.recovered` naming the lost node is written even when it had
/// nothing open.
pub async fn close_lost_node(
    store: &Store,
    lost: &str,
    by: &str,
    recordings: Arc<dyn RecordingStorage>,
) -> Result<Recovery, StoreError> {
    let closing = Closing {
        of: lost,
        by,
        reason: lost_reason(lost),
        summary: format!("node {lost} stopped heartbeating"),
        lost: true,
    };
    close_open_sessions(store, &closing, recordings).await
}

async fn close_open_sessions(
    store: &Store,
    c: &Closing<'_>,
    recordings: Arc<dyn RecordingStorage>,
) -> Result<Recovery, StoreError> {
    let sessions = store.open_sessions_of(c.of).await?;
    let mut report = Recovery::default();
    if !sessions.is_empty() || c.lost {
        let ids: Vec<String> = sessions.iter().map(|s| s.session_id.clone()).collect();
        let on_disk = tokio::task::spawn_blocking(move || read_recordings(&*recordings, &ids))
            .await
            .map_err(|e| StoreError::Query(format!("reading recordings: {e}")))?;
        let mut events = Vec::new();
        for s in &sessions {
            for open in store.unclosed_channels(&s.session_id).await? {
                if open.kind == "sftp.close" {
                    report.transfers += 1;
                } else {
                    report.port_forwards += 1;
                }
                events.push(closing_event(s, c, &open));
            }
            let last = store.last_event_time(&s.session_id).await?;
            let recs = on_disk
                .get(&s.session_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            events.push(session_end(s, c, recs, last.as_deref()));
            report.sessions.push(s.session_id.clone());
        }
        let kills = store.stale_kills_of(c.of).await?;
        let mut details = serde_json::json!({
            "sessions": report.sessions.len(),
            "session_ids": report.sessions,
            "transfers": report.transfers,
            "port_forwards": report.port_forwards,
            "kill_requests": kills.len(),
        });
        if c.lost {
            details["lost_node"] = c.of.into();
        }
        events.push(
            NewEvent::new(
                EventType::GATEWAY_RECOVERED,
                Severity::Warn,
                Outcome::Success,
                c.by,
            )
            .reason(c.summary.clone())
            .details(details),
        );
        // One transaction: all of it or, on failure, none.
        store.append_batch(events).await?;
    }
    // After the events: a crash in between leaves kills that the next
    // start finds again (their sessions are then ended).
    for id in store.stale_kills_of(c.of).await? {
        store.kill_done(id).await?;
        report.kill_requests += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::LocalDir;
    use serde_json::json;
    use sha2::{Digest, Sha256};

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

    fn of(kind: &str, result: Outcome, session: &str, details: serde_json::Value) -> NewEvent {
        NewEvent::new(kind, Severity::Info, result, "n1")
            .session(session)
            .details(details)
    }

    async fn scenario(store: Store) {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path();
        let file =
            |id: &str, body: &[u8]| std::fs::write(rec.join(format!("{id}.cast")), body).unwrap();
        file("S1", b"{\"version\":2}\n[0.1,\"o\",\"hi\"]\n");
        file("S1-1", b"{\"version\":2}\n");
        file("S10", b"not mine");
        file("S2", b"other node");
        let sftp =
            |op: &str, path: &str| json!({"op": op, "path": path, "flags": 26, "mode": "write"});
        let pf = json!({"host": "db", "port": 5432});
        store
            .append_batch(vec![
                start("n1", "S1"),
                of("sftp.open", Outcome::Success, "S1", sftp("open", "/a")),
                of("sftp.open", Outcome::Success, "S1", sftp("open", "/b")),
                of("sftp.open", Outcome::Failure, "S1", sftp("open", "/c")),
                of("sftp.close", Outcome::Success, "S1", sftp("close", "/a")),
                of(
                    EventType::PORT_FORWARD_OPEN,
                    Outcome::Success,
                    "S1",
                    pf.clone(),
                ),
                of(
                    EventType::PORT_FORWARD_OPEN,
                    Outcome::Denied,
                    "S1",
                    pf.clone(),
                ),
                start("n2", "S2"),
                start("n1", "S3"),
                of(EventType::SESSION_END, Outcome::Success, "S3", json!({})),
            ])
            .await
            .unwrap();
        store.request_kill("S1", "bye", "ops").await.unwrap();
        store.request_kill("S2", "bye", "ops").await.unwrap();

        let r = recover_crashed_sessions(&store, "n1", Arc::new(LocalDir::new(rec)))
            .await
            .unwrap();
        assert_eq!(r.sessions, vec!["S1".to_string()]);
        assert_eq!((r.transfers, r.port_forwards, r.kill_requests), (1, 1, 1));
        let pending: Vec<String> = store
            .pending_kills()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.session_id)
            .collect();
        assert_eq!(
            pending,
            vec!["S2".to_string()],
            "the other node's kill stays"
        );

        let events = store.recent_events(4).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "sftp.close",
                "port_forward.close",
                "session.end",
                "gateway.recovered"
            ]
        );
        let close = &events[0].event;
        assert_eq!(close.details["path"], "/b");
        assert_eq!(close.details["incomplete"], true);
        assert_eq!(close.result, Outcome::Error);
        assert_eq!(close.reason.as_deref(), Some(CRASH_REASON));
        let end = &events[2].event;
        assert_eq!(end.session_id.as_deref(), Some("S1"));
        assert_eq!(end.user.as_deref(), Some("alice"));
        assert_eq!(end.node, "n1");
        assert_eq!(end.details["recovered"], true);
        assert_eq!(end.details["recording_id"], "S1");
        let recs = end.details["recordings"].as_array().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1]["id"], "S1-1");
        let body = std::fs::read(rec.join("S1.cast")).unwrap();
        let sha = gatehouse_model::hex(&Sha256::digest(&body));
        assert_eq!(end.details["recording_sha256"], sha);
        assert_eq!(recs[0]["bytes"], body.len() as u64);
        assert_eq!(events[3].event.details["sessions"], 1);

        let rows = store
            .query_readonly("SELECT session_id, active FROM sessions ORDER BY session_id")
            .await
            .unwrap();
        let active: Vec<String> = rows
            .rows
            .iter()
            .map(|r| format!("{}={}", r[0], r[1]))
            .map(|s| s.replace("true", "1").replace("false", "0"))
            .collect();
        assert_eq!(active, vec!["\"S1\"=0", "\"S2\"=1", "\"S3\"=0"]);

        // Nothing left the second time; the chain holds.
        let again = recover_crashed_sessions(&store, "n1", Arc::new(LocalDir::new(rec)))
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert!(store.verify_chain().await.unwrap().first_bad.is_none());
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/audit.db", dir.path().display());
        scenario(Store::open(&url).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        use sqlx::postgres::PgPool;
        let admin = PgPool::connect(PG_ADMIN).await.unwrap_or_else(|e| {
            panic!("PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth): {e}")
        });
        let name = format!(
            "gh_recovery_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        scenario(Store::open(&url).await.unwrap()).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}
