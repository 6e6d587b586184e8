//! Fuzz bodies: one function per parser that reads bytes from a user or a
//! target. Each takes arbitrary bytes, drives the parser the way the
//! gateway does, and asserts what must hold whatever the input (beyond
//! "no panic"). The cargo-fuzz harness (`fuzz/`, nightly, libFuzzer) calls
//! them; on stable, `tests/corpus.rs` replays every file of
//! `fuzz/corpus/<target>/` through the same function.
//!
//! Inputs for the stream parsers are a sequence of records
//! `[tag][len][len bytes]` (see [`Records`]): the tag says which side or
//! which call, so one fuzz input is a whole conversation in any chunking.
//! [`encode`] builds such inputs for the seed corpus.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use gatehouse_model::username::{is_valid_name, MAX_USERNAME_LEN};
use gatehouse_model::{Config, ConnectRequest, UsernameError};
use gatehouse_record::asciicast::{self, CastWriter, Header, SessionInfo};
use gatehouse_record::capture::LineCapture;
use gatehouse_record::scp_ops::ScpTracker;
use gatehouse_record::sftp_ops::{SftpOp, SftpTracker};

/// A fuzz body: arbitrary bytes in, a panic when an invariant breaks.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary
/// and the `fuzz/corpus/<name>/` directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("username", username),
    ("sftp", sftp),
    ("scp", scp),
    ("capture", capture),
    ("guard", guard),
    ("asciicast", asciicast),
    ("config", config),
    ("runbook", runbook),
];

/// `[tag][len][len bytes]` records; a short last record takes what is left.
pub struct Records<'a> {
    data: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Records<'a> {
        Records { data }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.data.split_first()?;
        let (len, rest) = match rest.split_first() {
            Some((&len, rest)) => (usize::from(len), rest),
            None => (0, rest),
        };
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        self.data = rest;
        Some((tag, payload))
    }
}

/// Builds fuzz inputs (for the seed corpus).
pub mod encode {
    /// `payload` under `tag`, split into records of at most 255 bytes.
    pub fn record(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if payload.is_empty() {
            out.extend_from_slice(&[tag, 0]);
        }
        for piece in payload.chunks(255) {
            out.push(tag);
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
        out
    }
}

/// A side of a two-way stream: the even tags are the client's, the odd
/// ones the target's.
fn client_side(tag: u8) -> bool {
    tag & 1 == 0
}

// ---------------------------------------------------------------- username

/// `ConnectRequest::parse` on the SSH username: a parse shows back as the
/// same text, and every error is the right one.
pub fn username(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let raw = raw.as_ref();
    match ConnectRequest::parse(raw) {
        Ok(r) => {
            assert!(is_valid_name(&r.user), "{r:?}");
            let shown = match (&r.target, &r.login) {
                (None, None) => r.user.clone(),
                (Some(t), None) => format!("{}:{t}", r.user),
                (Some(t), Some(l)) => {
                    assert!(is_valid_name(l), "{r:?}");
                    format!("{}:{l}@{t}", r.user)
                }
                (None, Some(_)) => panic!("a login without a target: {r:?}"),
            };
            if let Some(t) = &r.target {
                assert!(is_valid_name(t), "{r:?}");
            }
            assert_eq!(shown, raw, "parse then display changes the username");
            assert_eq!(ConnectRequest::parse(&shown).as_ref(), Ok(&r));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                UsernameError::TooLong { len } => {
                    assert_eq!(len, raw.len());
                    assert!(len > MAX_USERNAME_LEN);
                }
                UsernameError::Empty => assert!(raw.is_empty()),
                UsernameError::Malformed(s) => {
                    assert_eq!(s, raw);
                    let after = raw.split_once(':').map(|(_, r)| r).unwrap_or("");
                    assert!(after.contains(':') || after.matches('@').count() > 1);
                }
                UsernameError::BadName { value, .. } => {
                    assert!(!is_valid_name(&value), "{value:?} is a valid name");
                    assert!(raw.contains(value.as_str()));
                }
            }
        }
    }
}

// -------------------------------------------------------------------- sftp

fn sftp_run(data: &[u8], bytewise: bool) -> Vec<SftpOp> {
    let mut t = SftpTracker::new();
    let mut ops = Vec::new();
    for (tag, payload) in Records::new(data) {
        let size = if bytewise { 1 } else { payload.len().max(1) };
        for chunk in payload.chunks(size) {
            ops.extend(if client_side(tag) {
                t.client_bytes(chunk)
            } else {
                t.server_bytes(chunk)
            });
        }
    }
    ops
}

/// The SFTP tracker on both directions of a subsystem stream: chunking
/// never changes what is reported, `malformed` comes at most once, and
/// every path and message came from the stream.
pub fn sftp(data: &[u8]) {
    let ops = sftp_run(data, false);
    assert_eq!(
        ops,
        sftp_run(data, true),
        "the same stream one byte at a time reports other operations"
    );
    assert!(ops.iter().filter(|o| o.op == "malformed").count() <= 1);
    let (mut client, mut server) = (0, 0);
    for (tag, payload) in Records::new(data) {
        if client_side(tag) {
            client += payload.len();
        } else {
            server += payload.len();
        }
    }
    for op in &ops {
        assert!(
            [
                "open",
                "close",
                "remove",
                "rename",
                "mkdir",
                "rmdir",
                "setstat",
                "malformed"
            ]
            .contains(&op.op),
            "{op:?}"
        );
        for path in [&op.path, &op.target_path].into_iter().flatten() {
            assert!(path.len() <= 3 * client, "{op:?}");
        }
        if let Some(e) = &op.error {
            assert!(e.len() <= 3 * server, "{op:?}");
        }
        if op.op != "malformed" {
            assert!(op.path.is_some(), "{op:?}");
        }
    }
}

// --------------------------------------------------------------------- scp

fn scp_run(
    command: &str,
    stream: &[u8],
    bytewise: bool,
) -> Vec<gatehouse_record::scp_ops::ScpTransfer> {
    let Some(mut t) = ScpTracker::from_command(command) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (tag, payload) in Records::new(stream) {
        let size = if bytewise { 1 } else { payload.len().max(1) };
        for chunk in payload.chunks(size) {
            out.extend(if client_side(tag) {
                t.client_bytes(chunk)
            } else {
                t.server_bytes(chunk)
            });
        }
    }
    out
}

/// Legacy scp: the remote command (first line) and the stream records.
/// Chunking never changes the result, and no transfer is reported before
/// its bytes went by.
pub fn scp(data: &[u8]) {
    let (command, stream) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &[][..]),
    };
    let command = String::from_utf8_lossy(command);
    let Some(tracker) = ScpTracker::from_command(&command) else {
        return;
    };
    let direction = tracker.direction();
    let upload = direction == "upload";
    let files = scp_run(&command, stream, false);
    assert_eq!(
        files,
        scp_run(&command, stream, true),
        "the same stream one byte at a time reports other files"
    );
    let (mut sent, mut lines) = (0u64, 0usize);
    for (tag, payload) in Records::new(stream) {
        if client_side(tag) == upload {
            sent += payload.len() as u64;
            lines += payload.iter().filter(|&&b| b == b'\n').count();
        }
    }
    assert!(files.len() <= lines, "more files than control lines");
    let moved: u64 = files.iter().map(|f| f.size).sum();
    assert!(moved <= sent, "{moved} bytes reported, {sent} sent");
    for f in &files {
        assert_eq!(f.direction, direction);
    }
}

// ----------------------------------------------------------------- capture

/// Screen size from two bytes (0 and anything above the cap are clamped
/// by the parser itself).
fn dims(data: &[u8]) -> (u32, u32, &[u8]) {
    match data {
        [c, r, rest @ ..] => (u32::from(*c), u32::from(*r), rest),
        _ => (80, 24, &[]),
    }
}

fn resize_args(p: &[u8]) -> (u32, u32) {
    // Up to 255 x 255: the 1000-cell clamp is unit-tested in record, and
    // screens that large cost the fuzzer most of its executions.
    let get = |i: usize| u32::from(p.get(i).copied().unwrap_or(0));
    (get(0), get(1))
}

/// A line read off the screen: trimmed, one line, and never more visible
/// characters than the target has drawn.
fn check_line(line: &str, drawn: usize) {
    assert_eq!(line, line.trim(), "untrimmed line");
    assert!(!line.contains(['\n', '\r']), "{line:?} spans lines");
    let visible = line.chars().filter(|c| !c.is_whitespace()).count();
    assert!(
        visible <= drawn,
        "{visible} characters captured from {drawn} bytes of output: {line:?}"
    );
}

/// Bytes of bulk output to push through at most once per input: enough
/// to cross the emulator's lazy threshold after a hibernation.
const BULK: usize = 140 * 1024;

/// The command capture on arbitrary keystrokes and terminal output:
/// tags 0 keys, 1 output, 2 resize, 3 hibernate, 4 pending line,
/// 5 bulk output. Never more commands than Enters typed; every line is
/// trimmed, single and no longer than what was drawn.
pub fn capture(data: &[u8]) {
    let (cols, rows, rest) = dims(data);
    let mut c = LineCapture::new(cols, rows);
    let (mut enters, mut drawn, mut commands, mut bulk_done) = (0usize, 0usize, 0usize, false);
    for (tag, p) in Records::new(rest) {
        match tag % 6 {
            0 => {
                enters += p.iter().filter(|&&b| b == b'\r' || b == b'\n').count();
                c.input(p);
            }
            1 => {
                drawn += p.len();
                for line in c.output(p) {
                    check_line(&line, drawn);
                    assert!(!line.is_empty());
                    commands += 1;
                }
            }
            2 => {
                let (cols, rows) = resize_args(p);
                c.resize(cols, rows);
            }
            3 => c.hibernate(),
            4 => {
                if let Some(line) = c.pending_line() {
                    check_line(&line, drawn);
                }
            }
            _ => {
                if bulk_done || p.is_empty() {
                    continue;
                }
                bulk_done = true;
                // Bulk output comes after a pause, as a `cat` does: from
                // the hibernated screen it takes the lazy path at once.
                c.hibernate();
                let big = p.repeat(BULK / p.len() + 1);
                drawn += big.len();
                for line in c.output(&big) {
                    check_line(&line, drawn);
                    commands += 1;
                }
            }
        }
        assert!(
            commands <= enters,
            "{commands} commands from {enters} Enters"
        );
    }
}

// ------------------------------------------------------------------- guard

const GUARD_CONFIG: &str = r#"
[[targets]]
name = "web01"
address = "127.0.0.1:22"
tofu = true

[[roles]]
name = "ops"
allow = [{ targets = {}, logins = ["deploy"] }]
deny = [{ commands = ["^rm\\s+-[a-zA-Z]*r", "^shutdown\\b", "(^|[;&|]\\s*)reboot\\b"] }]
reauth_commands = ["^sudo\\b"]

[[users]]
name = "alice"
keys = ["ssh-ed25519 AAAA alice"]
roles = ["ops"]
"#;

fn guard_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let c = Config::parse(GUARD_CONFIG, Path::new("guard.toml")).expect("guard config");
        assert!(c.validate(Path::new("guard.toml")).is_empty());
        c
    })
}

/// The command guard as the bridge drives it: keystrokes go to the screen
/// up to each Enter, the line on screen is judged against command rules,
/// and only an allowed line's Enter goes on (a denied one is erased and
/// the rest of that packet dropped). Same tags as [`capture`] (5 is
/// ordinary output here).
pub fn guard(data: &[u8]) {
    let cfg = guard_config();
    let (cols, rows, rest) = dims(data);
    let g = gatehouse_ssh::fuzzing::Guard::new(cols, rows);
    let mut drawn = 0usize;
    for (tag, p) in Records::new(rest) {
        match tag % 6 {
            0 => {
                let mut rest = p;
                while !rest.is_empty() {
                    let Some(at) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                        g.input(rest);
                        break;
                    };
                    g.input(&rest[..at]);
                    let enter = rest[at];
                    rest = &rest[at + 1..];
                    let Some(line) = g.line_now() else {
                        g.input(&[enter]);
                        continue;
                    };
                    check_line(&line, drawn);
                    let denied =
                        gatehouse_policy::command_denied(cfg, "alice", "web01", "deploy", &line);
                    let step_up = gatehouse_policy::reauth_required(cfg, "alice", &line);
                    if line == "shutdown" || line.starts_with("shutdown ") {
                        assert!(denied.is_some(), "{line:?} was let through");
                    }
                    if denied.is_some() || step_up.is_some() {
                        g.input(b"\x05\x15");
                        let _ = g.line_now();
                        g.input(b"\r");
                        break;
                    }
                    g.input(&[enter]);
                }
            }
            2 => {
                let (cols, rows) = resize_args(p);
                g.resize(cols, rows);
            }
            3 | 4 => {
                if let Some(line) = g.line_now() {
                    check_line(&line, drawn);
                }
            }
            _ => {
                drawn += p.len();
                g.output(p);
            }
        }
    }
}

// --------------------------------------------------------------- asciicast

fn cast_header() -> Header {
    Header {
        version: 2,
        width: 80,
        height: 24,
        timestamp: 1_764_460_800,
        command: None,
        title: "alice@web01".into(),
        env: serde_json::Map::new(),
        gatehouse: SessionInfo {
            session_id: "01JFUZZ".into(),
            user: "alice".into(),
            target: "web01".into(),
            login: "deploy".into(),
        },
    }
}

/// What the reader gives back for a stream written in chunks must be the
/// same text as the whole stream decoded at once, but for a trailing
/// incomplete character still held back.
fn assert_same_text(written: &[u8], read: &str) {
    let whole = String::from_utf8_lossy(written);
    let rest = whole
        .strip_prefix(read)
        .unwrap_or_else(|| panic!("read back {read:?}, written {whole:?}"));
    assert!(rest.is_empty() || rest == "\u{FFFD}", "lost {rest:?}");
}

/// The cast reader (`sessions play/export/watch`) on arbitrary text, and
/// the writer's output read back: tags 0 output, 1 input, 2 resize,
/// 3 marker, with the time advancing by the tag.
pub fn asciicast(data: &[u8]) {
    // 1. The file as found on disk, whatever it holds.
    let text = String::from_utf8_lossy(data);
    if let Ok((json, skipped)) = asciicast::cast_to_json(&text) {
        let doc: serde_json::Value = serde_json::from_str(&json).expect("export is JSON");
        let lines = text.lines().count();
        let events = doc["events"].as_array().expect("events").len();
        assert!(events + skipped.len() < lines.max(1));
        for n in skipped {
            assert!(n >= 2 && n <= lines);
        }
    }
    for line in text.lines() {
        let _ = asciicast::parse_event(line);
    }

    // 2. What the gateway writes, read back as play and export read it.
    let mut w = CastWriter::new(Vec::new(), &cast_header()).expect("header");
    let (mut out, mut keys) = (Vec::new(), Vec::new());
    let mut resizes = Vec::new();
    let mut t = 0.0f64;
    for (tag, p) in Records::new(data) {
        t += f64::from(tag) / 64.0;
        match tag % 4 {
            0 => {
                out.extend_from_slice(p);
                w.output(t, p).expect("write");
            }
            1 => {
                keys.extend_from_slice(p);
                w.input(t, p).expect("write");
            }
            2 => {
                let (cols, rows) = resize_args(p);
                resizes.push(format!("{cols}x{rows}"));
                w.resize(t, cols, rows).expect("write");
            }
            _ => w.marker(t, &String::from_utf8_lossy(p)).expect("write"),
        }
    }
    let cast = String::from_utf8(w.into_inner()).expect("a cast is UTF-8");
    let mut lines = cast.lines();
    let header: serde_json::Value =
        serde_json::from_str(lines.next().expect("header")).expect("header is JSON");
    assert_eq!(header["version"], 2);
    let (mut o, mut i, mut r) = (String::new(), String::new(), Vec::new());
    let mut last = 0.0f64;
    for line in lines {
        let (time, code, data) =
            asciicast::parse_event(line).unwrap_or_else(|| panic!("unreadable event {line:?}"));
        assert!(time >= last, "time goes back: {line}");
        last = time;
        match code.as_str() {
            "o" => o.push_str(&data),
            "i" => i.push_str(&data),
            "r" => r.push(data),
            "m" => {}
            other => panic!("unknown event code {other:?}"),
        }
    }
    assert_same_text(&out, &o);
    assert_same_text(&keys, &i);
    assert_eq!(r, resizes);
    let (_, skipped) = asciicast::cast_to_json(&cast).expect("own cast reads back");
    assert!(skipped.is_empty());
}

// ------------------------------------------------------------------ config

/// `Config::parse` and `validate` on arbitrary text, then what the gateway
/// does with a config it loaded: compile the alert rules and decide
/// access. A parsed config serialises and parses back to the same.
pub fn config(data: &[u8]) {
    // The config file is read as UTF-8 text; anything else is refused
    // before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/gatehouse/gatehouse.toml");
    let c = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let errors = c.validate(path);
    for e in &errors {
        assert!(!e.message.is_empty());
    }
    // The gateway compiles these at start and on SIGHUP.
    let _ = gatehouse_audit::alert::Alerts::new(&c.alerts);
    if let Ok(again) = toml::to_string(&c) {
        let back = Config::parse(&again, path)
            .unwrap_or_else(|e| panic!("a serialised config does not parse: {e}\n{again}"));
        assert_eq!(toml::to_string(&back).ok().as_deref(), Some(again.as_str()));
    }
    if !errors.is_empty() {
        return;
    }
    for u in c.users.iter().take(4) {
        let _ = gatehouse_policy::reachable(&c, &u.name);
        for t in c.targets.iter().take(4) {
            let d = gatehouse_policy::decide(&c, &u.name, &t.name, None);
            if d.allowed {
                let login = d.login.clone().unwrap_or_default();
                let _ = gatehouse_policy::command_denied(&c, &u.name, &t.name, &login, text);
            }
        }
    }
    let mut resolved = c.clone();
    resolved.resolve_paths(Path::new("/etc/gatehouse"));
}

// ----------------------------------------------------------------- runbook

/// `Runbook::parse` on arbitrary text; a valid runbook renders with its
/// defaults (and with each parameter given its description as a value)
/// into a query that is still read-only.
pub fn runbook(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rb = match gatehouse_audit::Runbook::parse(text, "fuzz.toml") {
        Ok(rb) => rb,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
        .expect("time")
        .to_utc();
    let read_only = |sql: &str| {
        let first = sql.split_whitespace().next().unwrap_or("").to_lowercase();
        assert!(first == "select" || first == "with", "{sql:?}");
    };
    if let Ok(sql) = rb.render(&BTreeMap::new(), now) {
        read_only(&sql);
    }
    let given: BTreeMap<String, String> = rb
        .params
        .iter()
        .filter_map(|(k, p)| p.description.clone().map(|d| (k.clone(), d)))
        .collect();
    if let Ok(sql) = rb.render(&given, now) {
        read_only(&sql);
    }
}
