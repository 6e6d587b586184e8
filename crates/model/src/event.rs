//! The audit event schema: one row per event,
//! append-only, identical across store backends.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The `result` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Denied,
    Failure,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
        }
    }
}

/// Event type names. Strings rather than an enum so that the store and the
/// SQL views see exactly these names.
pub struct EventType;

impl EventType {
    pub const AUTH_SUCCESS: &'static str = "auth.success";
    pub const AUTH_FAILURE: &'static str = "auth.failure";
    pub const ACCESS_DENIED: &'static str = "access.denied";
    pub const SESSION_START: &'static str = "session.start";
    pub const SESSION_END: &'static str = "session.end";
    pub const SESSION_KILLED: &'static str = "session.killed";
    /// `gatehouse sessions kill` asked the gateway to end a session
    /// (written by the CLI before the request; `session.killed` follows).
    pub const SESSION_KILL_REQUESTED: &'static str = "session.kill_requested";
    pub const COMMAND: &'static str = "command";
    pub const COMMAND_DENIED: &'static str = "command.denied";
    /// The target refused an exec request the gateway had audited as
    /// `command` and passed on: the command never ran.
    pub const COMMAND_FAILED: &'static str = "command.failed";
    pub const PORT_FORWARD_OPEN: &'static str = "port_forward.open";
    pub const PORT_FORWARD_CLOSE: &'static str = "port_forward.close";
    pub const HOST_KEY_MISMATCH: &'static str = "target.host_key_mismatch";
    pub const TARGET_UNREACHABLE: &'static str = "target.unreachable";
    pub const CONFIG_RELOAD: &'static str = "config.reload";
    pub const RECORDING_ACCESS: &'static str = "recording.access";
    /// A recording read by the CLI no longer matches the SHA-256 (or size)
    /// its `session.end` event holds, or is missing.
    pub const RECORDING_TAMPERED: &'static str = "recording.tampered";
    /// A signed checkpoint of the chain's head (seq, hash, time,
    /// signature in `details`), so that the sinks hold it too.
    pub const AUDIT_CHECKPOINT: &'static str = "audit.checkpoint";
    pub const USER_LOCKED: &'static str = "user.locked";
    pub const USER_UNLOCKED: &'static str = "user.unlocked";
    pub const MFA_ENROLLED: &'static str = "mfa.enrolled";
    pub const MFA_RESET: &'static str = "mfa.reset";
    pub const RUNBOOK_RUN: &'static str = "runbook.run";
    pub const SOURCE_BLOCKED: &'static str = "source.blocked";
    /// An administrator lifted a source block.
    pub const SOURCE_UNBLOCKED: &'static str = "source.unblocked";
    /// A connection was closed because its source address held too many
    /// unauthenticated connections (`server.per_source_max_startups`) and
    /// the queue for a place was full or its grace time ran out waiting.
    pub const SOURCE_FLOOD: &'static str = "source.flood";
    /// A connection from a load balancer listed in `server.proxy_protocol`
    /// did not begin with a valid PROXY header, and was dropped.
    pub const PROXY_INVALID: &'static str = "proxy.invalid";
    /// A session's recording could not be created or written.
    pub const RECORDING_FAILED: &'static str = "recording.failed";
    /// A channel request the gateway refused or passed on: subsystems,
    /// agent forwarding, environment variables, remote forwards.
    pub const CHANNEL_REQUEST: &'static str = "channel.request";
    pub const ALERT: &'static str = "alert";
    pub const APPROVAL_REQUESTED: &'static str = "approval.requested";
    pub const APPROVAL_GRANTED: &'static str = "approval.granted";
    pub const APPROVAL_DENIED: &'static str = "approval.denied";
    pub const APPROVAL_EXPIRED: &'static str = "approval.expired";
    pub const GATEWAY_START: &'static str = "gateway.start";
    pub const GATEWAY_STOP: &'static str = "gateway.stop";
    /// Written at start when the node closed what a crash of its previous
    /// process left open (sessions, transfers, kill requests).
    pub const GATEWAY_RECOVERED: &'static str = "gateway.recovered";
    /// Someone was shown audit rows in the console or the API (the log,
    /// an export, a SQL result).
    pub const AUDIT_READ: &'static str = "audit.read";
    /// An API token was used (at most once a minute per token).
    pub const TOKEN_USED: &'static str = "token.used";
    pub const TOKEN_CREATED: &'static str = "token.created";
    pub const TOKEN_REVOKED: &'static str = "token.revoked";
    /// A sink's receiver rejected events for good; they went to the
    /// sink's dead-letter file.
    pub const SINK_DEAD_LETTER: &'static str = "sink.dead_letter";
}

/// An event before the store has put it in the chain. `id` and `time` are
/// fixed when the event is created, so that they describe the moment of the
/// action rather than the moment of the write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub id: String,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: Severity,
    pub user: Option<String>,
    pub source_ip: Option<String>,
    pub node: String,
    pub session_id: Option<String>,
    pub target: Option<String>,
    pub login: Option<String>,
    pub mfa: bool,
    pub result: Outcome,
    pub reason: Option<String>,
    pub details: serde_json::Value,
}

/// Formats a time as the schema requires: RFC 3339, UTC, milliseconds.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl NewEvent {
    /// A fresh event of `kind` with a new ULID and the current time.
    pub fn new(kind: &str, severity: Severity, result: Outcome, node: &str) -> NewEvent {
        NewEvent {
            id: ulid::Ulid::new().to_string(),
            time: format_time(Utc::now()),
            kind: kind.to_string(),
            severity,
            user: None,
            source_ip: None,
            node: node.to_string(),
            session_id: None,
            target: None,
            login: None,
            mfa: false,
            result,
            reason: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn source_ip(mut self, ip: impl Into<String>) -> Self {
        self.source_ip = Some(ip.into());
        self
    }
    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
    pub fn login(mut self, login: impl Into<String>) -> Self {
        self.login = Some(login.into());
        self
    }
    pub fn mfa(mut self, mfa: bool) -> Self {
        self.mfa = mfa;
        self
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The canonical encoding that the hash chain covers: every field in a
    /// fixed order, as a JSON array, followed by the previous hash. JSON
    /// escaping makes the encoding unambiguous; `details` is serialised with
    /// sorted keys (serde_json's default map is ordered).
    pub fn canonical(&self, prev_hash: &str) -> String {
        let mut out = Vec::with_capacity(320);
        // Writing JSON into a Vec cannot fail, and what it writes is UTF-8.
        let _ = self.write_canonical(&mut out, prev_hash);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Writes [`NewEvent::canonical`] to `w` without building it first
    /// (the chain hashes it straight into the digest).
    pub fn write_canonical<W: std::io::Write>(&self, w: W, prev_hash: &str) -> std::io::Result<()> {
        // A tuple serialises as a JSON array: the same bytes as a
        // `serde_json::Value` array of these fields, without copying them.
        let fields = (
            &self.id,
            &self.time,
            &self.kind,
            self.severity.as_str(),
            &self.user,
            &self.source_ip,
            &self.node,
            &self.session_id,
            &self.target,
            &self.login,
            self.mfa,
            self.result.as_str(),
            &self.reason,
            &self.details,
            prev_hash,
        );
        serde_json::to_writer(w, &fields).map_err(std::io::Error::from)
    }
}

/// An event as stored: the fields of [`NewEvent`] plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub event: NewEvent,
    pub prev_hash: String,
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        let e = NewEvent::new(
            EventType::AUTH_SUCCESS,
            Severity::Info,
            Outcome::Success,
            "n1",
        );
        assert_eq!(e.time.len(), "2026-11-24T19:07:00.123Z".len());
        assert!(e.time.ends_with('Z'));
        assert_eq!(e.id.len(), 26);
    }

    #[test]
    fn serialises_with_schema_names() {
        let e = NewEvent::new(
            EventType::ACCESS_DENIED,
            Severity::Warn,
            Outcome::Denied,
            "n1",
        )
        .user("alice")
        .target("web01");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "access.denied");
        assert_eq!(v["severity"], "warn");
        assert_eq!(v["result"], "denied");
        assert_eq!(v["user"], "alice");
    }

    #[test]
    fn canonical_encoding_is_the_json_array_of_the_fields() {
        // The encoding every stored chain was hashed with: a change here
        // would make existing trails fail `audit verify`.
        let e = NewEvent::new(EventType::COMMAND, Severity::Warn, Outcome::Denied, "n1")
            .user("al\"ice")
            .target("web-1")
            .mfa(true)
            .reason("line\nbreak \u{1b}[0m é")
            .details(serde_json::json!({"z": 1, "a": [1.5, null, "x"], "m": {"k": true}}));
        let reference = serde_json::json!([
            e.id,
            e.time,
            e.kind,
            e.severity.as_str(),
            e.user,
            e.source_ip,
            e.node,
            e.session_id,
            e.target,
            e.login,
            e.mfa,
            e.result.as_str(),
            e.reason,
            e.details,
            "ab01",
        ])
        .to_string();
        assert_eq!(e.canonical("ab01"), reference);
    }

    #[test]
    fn canonical_encoding_changes_with_any_field() {
        let e = NewEvent::new(EventType::COMMAND, Severity::Info, Outcome::Success, "n1");
        let base = e.canonical("00");
        assert_ne!(base, e.canonical("01"));
        assert_ne!(base, e.clone().user("bob").canonical("00"));
        assert_ne!(base, e.clone().mfa(true).canonical("00"));
    }
}
