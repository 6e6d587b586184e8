//! The CloudTrail shape of an audit event: one stored event as the record
//! an AWS CloudTrail analyst already knows (`eventTime`, `eventSource`,
//! `eventName`, `userIdentity`, `errorCode`, `additionalEventData`, …).
//!
//! [`record`] is the one mapping. The store's `cloudtrail` SQL view is
//! generated from the tables below (`gatehouse_store`), and the sinks'
//! `format = "cloudtrail"` calls [`record`], so a field means the same
//! wherever an analyst reads it. `docs/cloudtrail.md` documents it.
//!
//! Who the record names in `userIdentity` is who *acted*: for an
//! operator action (an event with `details.channel`) that is `details.by`,
//! and the event's `user` (the user locked, the owner of the token) moves
//! to `requestParameters.userName`; for what the gateway did by itself
//! (alerts, kills carried out, expiries, events without a user) it is the
//! gateway (`AWSService`).

use serde_json::{Map, Value};

use crate::event::{Event, Outcome};

/// The CloudTrail record version whose fields the mapping fills.
pub const EVENT_VERSION: &str = "1.09";

/// `eventSource` when `server.service_name` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "gatehouse";

/// `eventType` of an action a person (or their client) asked for.
pub const API_CALL: &str = "AwsApiCall";
/// `eventType` of what the gateway did by itself.
pub const SERVICE_EVENT: &str = "AwsServiceEvent";

/// `userIdentity.type` of the gateway itself and of its rules.
pub const SERVICE_IDENTITY: &str = "AWSService";
/// `userIdentity.type` of a Gatehouse user.
pub const USER_IDENTITY: &str = "IAMUser";
/// `userIdentity.type` of a user an identity provider signed in
/// (`details.identity`).
pub const FEDERATED_IDENTITY: &str = "WebIdentityUser";
/// `userIdentity.type` of a name nobody proved (failed logins) or of an
/// actor through a channel the mapping does not know.
pub const UNKNOWN_IDENTITY: &str = "Unknown";

/// Gatehouse event type → `eventName`. Every type in `docs/events.md`
/// is here; `sftp.*` types not listed are `TransferFile`, and a type
/// that is not listed at all keeps its Gatehouse name.
pub const EVENT_NAMES: &[(&str, &str)] = &[
    ("auth.success", "AuthenticateUser"),
    ("auth.failure", "AuthenticateUser"),
    // Policy refused a target: always with AccessDenied. Its own name, so
    // that StartSession is only a session that started.
    ("access.denied", "AuthorizeSession"),
    ("session.start", "StartSession"),
    ("session.end", "EndSession"),
    ("session.kill_requested", "TerminateSession"),
    ("session.killed", "KillSession"),
    ("command", "RunCommand"),
    ("command.denied", "RunCommand"),
    ("command.failed", "RunCommand"),
    ("channel.request", "OpenChannel"),
    ("port_forward.open", "OpenPortForward"),
    ("port_forward.close", "ClosePortForward"),
    ("sftp.open", "TransferFile"),
    ("sftp.close", "TransferFile"),
    ("sftp.remove", "DeleteFile"),
    ("sftp.rename", "RenameFile"),
    ("sftp.mkdir", "CreateDirectory"),
    ("sftp.rmdir", "DeleteDirectory"),
    ("sftp.setstat", "SetFileAttributes"),
    ("sftp.malformed", "TransferFile"),
    ("scp", "TransferFile"),
    ("target.host_key_mismatch", "ConnectTarget"),
    ("target.unreachable", "ConnectTarget"),
    ("recording.failed", "WriteRecording"),
    ("recording.access", "GetRecording"),
    ("recording.tampered", "VerifyRecording"),
    ("audit.read", "LookupEvents"),
    ("audit.checkpoint", "SignCheckpoint"),
    ("token.created", "CreateApiToken"),
    ("token.revoked", "RevokeApiToken"),
    ("token.used", "UseApiToken"),
    ("approval.requested", "RequestAccess"),
    ("approval.granted", "ApproveAccess"),
    ("approval.denied", "DenyAccess"),
    ("approval.expired", "ExpireAccessRequest"),
    ("user.locked", "LockUser"),
    ("user.unlocked", "UnlockUser"),
    ("mfa.enrolled", "EnableMFADevice"),
    ("mfa.reset", "DeactivateMFADevice"),
    ("source.blocked", "BlockSource"),
    ("source.unblocked", "UnblockSource"),
    ("source.flood", "ThrottleSource"),
    ("proxy.invalid", "AcceptConnection"),
    ("alert", "RaiseAlert"),
    ("runbook.run", "RunRunbook"),
    ("gateway.start", "StartGateway"),
    ("gateway.stop", "StopGateway"),
    ("gateway.recovered", "RecoverGateway"),
    ("config.reload", "ReloadConfig"),
    ("sink.dead_letter", "DeliverEvents"),
];

/// `eventName` of an `sftp.*` type that [`EVENT_NAMES`] does not list.
pub const SFTP_FALLBACK: &str = "TransferFile";

/// Types the gateway writes about a user but does by itself: their
/// actor is the gateway, and the user is in `requestParameters.userName`.
pub const SERVICE_TYPES: &[&str] = &["alert", "session.killed", "approval.expired"];

/// `details.channel` → `userIdentity.type` of the actor `details.by`.
/// `IAMUser` becomes `WebIdentityUser` when `details.identity` names a
/// provider. Another channel: `Unknown`.
pub const CHANNEL_IDENTITIES: &[(&str, &str)] = &[
    ("cli", "Root"),
    ("ssh", USER_IDENTITY),
    ("web", USER_IDENTITY),
    ("api", USER_IDENTITY),
    ("alert", SERVICE_IDENTITY),
    ("runbook", SERVICE_IDENTITY),
    ("gateway", SERVICE_IDENTITY),
];

/// Channels whose events hold the actor's own address in `source_ip`.
/// Over `ssh` it is `details.by_source_ip`; through the others the
/// event's `source_ip` is what was acted on (a blocked address), so it
/// goes to `requestParameters.sourceAddress`.
pub const CLIENT_ADDRESS_CHANNELS: &[&str] = &["web", "api"];

/// One `errorCode` rule: the first rule whose result (and type, when it
/// names one) match the event gives the code. A success has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRule {
    pub result: Outcome,
    pub kind: Option<&'static str>,
    pub code: &'static str,
}

const fn rule(result: Outcome, kind: Option<&'static str>, code: &'static str) -> ErrorRule {
    ErrorRule { result, kind, code }
}

/// The `errorCode` rules, in order.
pub const ERROR_CODES: &[ErrorRule] = &[
    rule(Outcome::Denied, None, "AccessDenied"),
    rule(Outcome::Failure, Some("auth.failure"), "AuthFailure"),
    rule(Outcome::Failure, Some("approval.expired"), "RequestExpired"),
    rule(Outcome::Failure, None, "RequestFailed"),
    rule(
        Outcome::Error,
        Some("target.host_key_mismatch"),
        "HostKeyMismatch",
    ),
    rule(
        Outcome::Error,
        Some("target.unreachable"),
        "TargetUnreachable",
    ),
    rule(Outcome::Error, None, "InternalError"),
];

/// The `eventName` of a Gatehouse event type.
pub fn event_name(kind: &str) -> &str {
    if let Some((_, name)) = EVENT_NAMES.iter().find(|(k, _)| *k == kind) {
        return name;
    }
    if kind.starts_with("sftp.") {
        return SFTP_FALLBACK;
    }
    kind
}

/// The `errorCode` of an event with this type and result.
pub fn error_code(kind: &str, result: Outcome) -> Option<&'static str> {
    ERROR_CODES
        .iter()
        .find(|r| r.result == result && r.kind.is_none_or(|k| k == kind))
        .map(|r| r.code)
}

/// Who acted: `userIdentity.type` and the actor's name, if any.
struct Actor<'a> {
    kind: &'static str,
    name: Option<&'a str>,
}

fn actor<'a>(ev: &'a Event, details: &'a Value) -> Actor<'a> {
    let e = &ev.event;
    let user = e.user.as_deref();
    let federated = text(details, &["identity", "provider"]).is_some();
    let user_kind = if federated {
        FEDERATED_IDENTITY
    } else {
        USER_IDENTITY
    };
    if let Some(channel) = text(details, &["channel"]) {
        let kind = CHANNEL_IDENTITIES
            .iter()
            .find(|(c, _)| *c == channel)
            .map_or(UNKNOWN_IDENTITY, |(_, k)| *k);
        let kind = if kind == USER_IDENTITY {
            user_kind
        } else {
            kind
        };
        return Actor {
            kind,
            name: text(details, &["by"]).or(user),
        };
    }
    match user {
        Some(_) if SERVICE_TYPES.contains(&e.kind.as_str()) => Actor {
            kind: SERVICE_IDENTITY,
            name: None,
        },
        None => Actor {
            kind: SERVICE_IDENTITY,
            name: None,
        },
        Some(name) if e.kind == "auth.failure" => Actor {
            kind: UNKNOWN_IDENTITY,
            name: Some(name),
        },
        Some(name) => Actor {
            kind: user_kind,
            name: Some(name),
        },
    }
}

/// The string at `path` in `v`, when it is a string (a number or an
/// object there counts as absent, in the SQL view too).
fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.as_object()?.get(*key))?
        .as_str()
}

/// An object of the pairs whose value is present.
fn object(pairs: Vec<(&str, Option<Value>)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

fn string(s: Option<&str>) -> Option<Value> {
    s.map(|s| Value::String(s.to_string()))
}

/// The CloudTrail record of a stored event. `service_name` is
/// `server.service_name` (`eventSource`). Fields without a value
/// (`errorCode` of a success) are left out, as CloudTrail does.
pub fn record(ev: &Event, service_name: &str) -> Value {
    let e = &ev.event;
    let d = &e.details;
    let actor = actor(ev, d);
    let channel = text(d, &["channel"]);
    let service = actor.kind == SERVICE_IDENTITY;
    let principal = match actor.kind {
        SERVICE_IDENTITY => actor.name.or(Some(e.node.as_str())),
        FEDERATED_IDENTITY => text(d, &["identity", "subject"]).or(actor.name),
        _ => actor.name,
    };
    let mfa = if e.mfa { "true" } else { "false" };
    let mut identity = object(vec![
        ("type", string(Some(actor.kind))),
        ("principalId", string(principal)),
        ("userName", string(actor.name.filter(|_| !service))),
        (
            "identityProvider",
            string(text(d, &["identity", "provider"]).filter(|_| actor.kind == FEDERATED_IDENTITY)),
        ),
    ]);
    identity.insert(
        "sessionContext".into(),
        serde_json::json!({ "attributes": { "mfaAuthenticated": mfa } }),
    );

    let source_ip = e.source_ip.as_deref();
    let (source_address, acted_on) = match channel {
        None => (source_ip, None),
        Some(c) if CLIENT_ADDRESS_CHANNELS.contains(&c) => (source_ip, None),
        Some("ssh") => (text(d, &["by_source_ip"]), source_ip),
        Some(_) => (None, source_ip),
    };
    let subject = e.user.as_deref().filter(|u| Some(*u) != actor.name);
    let success = e.result == Outcome::Success;
    let request = object(vec![
        ("target", string(e.target.as_deref())),
        ("login", string(e.login.as_deref())),
        ("command", string(text(d, &["command"]))),
        ("path", string(text(d, &["path"]))),
        ("newPath", string(text(d, &["target_path"]))),
        ("userName", string(subject)),
        ("sourceAddress", string(acted_on)),
        ("reason", string(e.reason.as_deref().filter(|_| success))),
    ]);
    let mut additional = object(vec![
        (
            "MFAAuthenticated",
            string(Some(if e.mfa { "True" } else { "False" })),
        ),
        ("sessionId", string(e.session_id.as_deref())),
        ("recordingId", string(text(d, &["recording_id"]))),
        ("recordingDigest", string(text(d, &["recording_sha256"]))),
        ("chainHash", string(Some(&ev.hash))),
        ("node", string(Some(&e.node))),
        ("severity", string(Some(e.severity.as_str()))),
        ("gatehouseEventType", string(Some(&e.kind))),
    ]);
    additional.insert("details".into(), d.clone());

    let time = e.time.get(..19).unwrap_or(&e.time);
    let record = object(vec![
        ("eventVersion", string(Some(EVENT_VERSION))),
        ("eventTime", Some(Value::String(format!("{time}Z")))),
        ("eventSource", string(Some(service_name))),
        ("eventName", string(Some(event_name(&e.kind)))),
        (
            "eventType",
            string(Some(if service { SERVICE_EVENT } else { API_CALL })),
        ),
        ("userIdentity", Some(Value::Object(identity))),
        ("sourceIPAddress", string(source_address)),
        ("errorCode", string(error_code(&e.kind, e.result))),
        (
            "errorMessage",
            string(e.reason.as_deref().filter(|_| !success)),
        ),
        ("requestParameters", Some(Value::Object(request))),
        ("additionalEventData", Some(Value::Object(additional))),
        ("eventID", string(Some(&e.id))),
    ]);
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, Severity};
    use serde_json::json;

    fn stored(e: NewEvent) -> Event {
        Event {
            event: e,
            prev_hash: "0".repeat(64),
            hash: "ab".repeat(32),
        }
    }

    fn ev(kind: &str, severity: Severity, result: Outcome) -> NewEvent {
        let mut e = NewEvent::new(kind, severity, result, "gw-1");
        e.id = "01JABCDEFGHJKMNPQRSTVWXYZ0".into();
        e.time = "2026-11-24T19:07:00.123Z".into();
        e
    }

    #[test]
    fn a_session_start_is_a_start_session_call_by_the_user() {
        let e = ev("session.start", Severity::Info, Outcome::Success)
            .user("alice")
            .source_ip("10.0.0.7")
            .session("01JSESSION")
            .target("web01")
            .login("deploy")
            .mfa(true)
            .details(json!({"address": "10.0.1.5:22", "rule": "role dev allow[0]"}));
        let r = record(&stored(e), "ssh-proxy.example.com");
        assert_eq!(
            r,
            json!({
                "eventVersion": "1.09",
                "eventTime": "2026-11-24T19:07:00Z",
                "eventSource": "ssh-proxy.example.com",
                "eventName": "StartSession",
                "eventType": "AwsApiCall",
                "userIdentity": {
                    "type": "IAMUser",
                    "principalId": "alice",
                    "userName": "alice",
                    "sessionContext": {"attributes": {"mfaAuthenticated": "true"}}
                },
                "sourceIPAddress": "10.0.0.7",
                "requestParameters": {"target": "web01", "login": "deploy"},
                "additionalEventData": {
                    "MFAAuthenticated": "True",
                    "sessionId": "01JSESSION",
                    "chainHash": "ab".repeat(32),
                    "node": "gw-1",
                    "severity": "info",
                    "gatehouseEventType": "session.start",
                    "details": {"address": "10.0.1.5:22", "rule": "role dev allow[0]"}
                },
                "eventID": "01JABCDEFGHJKMNPQRSTVWXYZ0"
            })
        );
    }

    #[test]
    fn a_denied_access_is_an_authorisation_refused_with_access_denied() {
        let e = ev("access.denied", Severity::Warn, Outcome::Denied)
            .user("bob")
            .source_ip("203.0.113.9")
            .target("db01")
            .reason("no rule allows bob on db01")
            .details(json!({"rule": null}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "AuthorizeSession");
        assert_eq!(r["errorCode"], "AccessDenied");
        assert_eq!(r["errorMessage"], "no rule allows bob on db01");
        assert_eq!(r["sourceIPAddress"], "203.0.113.9");
        assert_eq!(r["additionalEventData"]["MFAAuthenticated"], "False");
        assert_eq!(
            r["userIdentity"]["sessionContext"]["attributes"]["mfaAuthenticated"],
            "false"
        );
        // The reason of a refusal is the error message, not a parameter.
        assert_eq!(r["requestParameters"], json!({"target": "db01"}));
        // Details keep their nulls: they are the event as stored.
        assert_eq!(r["additionalEventData"]["details"], json!({"rule": null}));
    }

    #[test]
    fn a_failed_login_names_an_unknown_identity() {
        let e = ev("auth.failure", Severity::Warn, Outcome::Failure)
            .user("mallory")
            .source_ip("198.51.100.4")
            .reason("unknown user \"mallory\"")
            .details(json!({"method": "publickey"}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "AuthenticateUser");
        assert_eq!(r["errorCode"], "AuthFailure");
        assert_eq!(r["userIdentity"]["type"], "Unknown");
        assert_eq!(r["userIdentity"]["userName"], "mallory");
    }

    #[test]
    fn an_operator_action_names_the_actor_and_moves_the_subject_to_the_request() {
        let e = ev("user.locked", Severity::Warn, Outcome::Success)
            .user("alice")
            .reason("left the company")
            .details(json!({"by": "root", "channel": "cli", "until": null, "ending_sessions": []}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "LockUser");
        assert_eq!(r["eventType"], "AwsApiCall");
        assert_eq!(r["userIdentity"]["type"], "Root");
        assert_eq!(r["userIdentity"]["userName"], "root");
        assert_eq!(
            r["requestParameters"],
            json!({"userName": "alice", "reason": "left the company"})
        );
        assert!(r.get("errorCode").is_none());
        assert!(r.get("sourceIPAddress").is_none());

        // Over SSH, the approver's address is the source; the blocked
        // address is what was acted on.
        let e = ev("source.blocked", Severity::High, Outcome::Success)
            .source_ip("203.0.113.66")
            .details(json!({"by": "carol", "channel": "ssh", "by_source_ip": "10.0.0.3", "by_session": "S"}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["sourceIPAddress"], "10.0.0.3");
        assert_eq!(r["requestParameters"]["sourceAddress"], "203.0.113.66");
        assert_eq!(r["userIdentity"]["type"], "IAMUser");

        // A runbook's action is the gateway's.
        let e = ev("source.blocked", Severity::High, Outcome::Success)
            .source_ip("203.0.113.66")
            .details(json!({"by": "runbook:denied-surge", "channel": "runbook", "run_by": "root", "run_channel": "cli"}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventType"], "AwsServiceEvent");
        assert_eq!(
            r["userIdentity"],
            json!({"type": "AWSService", "principalId": "runbook:denied-surge",
                   "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}})
        );
        assert!(r.get("sourceIPAddress").is_none());
    }

    #[test]
    fn what_the_gateway_does_by_itself_is_a_service_event() {
        let e = ev("gateway.start", Severity::Info, Outcome::Success)
            .details(json!({"listen": "0.0.0.0:2222"}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventType"], "AwsServiceEvent");
        assert_eq!(r["userIdentity"]["type"], "AWSService");
        assert_eq!(r["userIdentity"]["principalId"], "gw-1");
        let e = ev("session.killed", Severity::Warn, Outcome::Success)
            .user("alice")
            .session("S1")
            .reason("user locked: left")
            .details(json!({"by": "root"}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "KillSession");
        assert_eq!(r["eventType"], "AwsServiceEvent");
        assert_eq!(r["requestParameters"]["userName"], "alice");
    }

    #[test]
    fn commands_transfers_and_recordings_fill_their_parameters() {
        let e = ev("command", Severity::Info, Outcome::Success)
            .user("alice")
            .session("S1")
            .target("web01")
            .login("deploy")
            .details(json!({"command": "sudo -i", "source": "interactive", "recording_id": "S1", "offset": 1.5}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "RunCommand");
        assert_eq!(r["requestParameters"]["command"], "sudo -i");
        assert_eq!(r["additionalEventData"]["recordingId"], "S1");
        let e = ev("sftp.rename", Severity::Info, Outcome::Failure)
            .user("alice")
            .reason("No such file")
            .details(json!({"op": "rename", "path": "/a", "target_path": "/b", "status": 2}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["eventName"], "RenameFile");
        assert_eq!(r["errorCode"], "RequestFailed");
        assert_eq!(r["requestParameters"]["newPath"], "/b");
        let e = ev("session.end", Severity::Info, Outcome::Success)
            .user("alice")
            .details(json!({"recording_id": "S1", "recording_sha256": "cd".repeat(32), "exit_status": null}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(r["additionalEventData"]["recordingDigest"], "cd".repeat(32));
        assert_eq!(event_name("sftp.symlink"), "TransferFile");
        assert_eq!(event_name("something.new"), "something.new");
    }

    #[test]
    fn a_signed_in_user_names_the_identity_provider() {
        let e = ev("auth.success", Severity::Info, Outcome::Success)
            .user("dana")
            .details(json!({"method": "sso", "identity": {
                "provider": "corp", "subject": "00u1", "email": "dana@example.com", "groups": ["ops"]}}));
        let r = record(&stored(e), "gatehouse");
        assert_eq!(
            r["userIdentity"],
            json!({"type": "WebIdentityUser", "principalId": "00u1", "userName": "dana",
                   "identityProvider": "corp",
                   "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}})
        );
    }

    #[test]
    fn error_codes_follow_the_result() {
        assert_eq!(error_code("session.start", Outcome::Success), None);
        assert_eq!(
            error_code("command.denied", Outcome::Denied),
            Some("AccessDenied")
        );
        assert_eq!(
            error_code("approval.expired", Outcome::Failure),
            Some("RequestExpired")
        );
        assert_eq!(
            error_code("target.unreachable", Outcome::Error),
            Some("TargetUnreachable")
        );
        assert_eq!(
            error_code("session.end", Outcome::Error),
            Some("InternalError")
        );
    }

    /// Every event type documented in docs/events.md has its own name.
    #[test]
    fn every_documented_event_type_has_an_event_name() {
        let doc = include_str!("../../../docs/events.md");
        let mut documented = Vec::new();
        // Event types are documented above the SQL views.
        let types = doc.split("\n## SQL views").next().unwrap_or(doc);
        for line in types.lines() {
            // The first cell of the event types table, and the headings.
            let part = if let Some(rest) = line.strip_prefix("| [") {
                rest.split('|').next().unwrap_or("")
            } else if line.starts_with("### `") {
                line
            } else {
                continue;
            };
            documented.extend(
                part.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|n| !n.is_empty() && !n.contains(' '))
                    .map(str::to_string),
            );
        }
        documented.retain(|n| n != "sftp.*");
        assert!(documented.len() > 40, "{documented:?}");
        for name in documented {
            assert!(
                EVENT_NAMES.iter().any(|(k, _)| *k == name),
                "event type {name} (docs/events.md) has no CloudTrail eventName: add it to EVENT_NAMES in crates/model/src/cloudtrail.rs and to docs/cloudtrail.md"
            );
        }
    }
}
