//! Writes the seed corpus, `fuzz/corpus/<target>/seed-*`, from real
//! inputs: usernames from the docs, SFTP and scp streams as OpenSSH sends
//! them, shell sessions with escape sequences, a cast, the configs of the
//! tests and `gatehouse init`, the built-in runbooks. Run it after
//! changing an input format, then `bash bench/fuzz.sh` (which minimises):
//!
//! ```sh
//! cargo test -p gatehouse-fuzzing --test seeds -- --ignored
//! ```

use std::path::{Path, PathBuf};

use gatehouse_fuzzing::encode::record;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

/// Records for a two-sided stream: (client?, bytes) in order.
fn stream(steps: &[(bool, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (client, bytes) in steps {
        out.extend(record(if *client { 0 } else { 1 }, bytes));
    }
    out
}

fn usernames() {
    let long = "a".repeat(300);
    let names: &[(&str, &str)] = &[
        ("menu", "alice"),
        ("target", "alice:web01"),
        ("login", "alice:root@web-01.prod"),
        ("dotted", "bob.smith_1-2:deploy@db01.internal"),
        ("empty", ""),
        ("no-target", "alice:"),
        ("no-user", ":web01"),
        ("no-login", "alice:@web01"),
        ("two-colons", "alice:a:b"),
        ("two-ats", "alice:r@t@x"),
        ("space", "al ice:web01"),
        ("nul", "alice:web01\0"),
        ("too-long", &long),
        ("unicode", "alicé:wéb01"),
        ("at-only", "alice@web01"),
    ];
    for (name, u) in names {
        write("username", name, u.as_bytes());
    }
}

// SFTP v3 packets, as OpenSSH's sftp and sftp-server send them.
fn s(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}
fn packet(kind: u8, id: Option<u32>, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    if let Some(id) = id {
        p.extend_from_slice(&id.to_be_bytes());
    }
    p.extend_from_slice(body);
    s(&p)
}
fn open(id: u32, path: &str, flags: u32) -> Vec<u8> {
    let mut b = s(path.as_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    packet(3, Some(id), &b)
}
fn write_pkt(id: u32, handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = s(handle);
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&s(data));
    packet(6, Some(id), &b)
}
fn read_pkt(id: u32, handle: &[u8], len: u32) -> Vec<u8> {
    let mut b = s(handle);
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    packet(5, Some(id), &b)
}
fn status(id: u32, code: u32, msg: &str) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(&s(msg.as_bytes()));
    b.extend_from_slice(&s(b"en"));
    packet(101, Some(id), &b)
}
fn handle(id: u32, h: &[u8]) -> Vec<u8> {
    packet(102, Some(id), &s(h))
}
fn path_op(kind: u8, id: u32, path: &str, attrs: bool) -> Vec<u8> {
    let mut b = s(path.as_bytes());
    if attrs {
        b.extend_from_slice(&0u32.to_be_bytes());
    }
    packet(kind, Some(id), &b)
}

fn sftp() {
    let init = packet(1, None, &3u32.to_be_bytes());
    let version = packet(2, None, &3u32.to_be_bytes());
    let h = b"\0\0\0\x01";
    write(
        "sftp",
        "upload",
        &stream(&[
            (true, &init),
            (false, &version),
            (true, &open(1, "/tmp/a.bin", 2 | 8 | 16)),
            (false, &handle(1, h)),
            (true, &write_pkt(2, h, 0, &[7u8; 600])),
            (true, &write_pkt(3, h, 600, b"tail")),
            (
                false,
                &[status(2, 0, "Success"), status(3, 0, "Success")].concat(),
            ),
            (true, &packet(4, Some(4), &s(h))),
            (false, &status(4, 0, "Success")),
        ]),
    );
    let mut data = s(&[0x41u8; 300]);
    data.insert(0, 0);
    write(
        "sftp",
        "download",
        &stream(&[
            (true, &open(1, "/etc/hosts", 1)),
            (false, &handle(1, b"R")),
            (true, &read_pkt(2, b"R", 32768)),
            (false, &packet(103, Some(2), &s(&[b'x'; 300]))),
            (true, &read_pkt(3, b"R", 32768)),
            (false, &status(3, 1, "End of file")),
            (true, &packet(4, Some(4), &s(b"R"))),
            (false, &status(4, 0, "")),
        ]),
    );
    let mut rename = s(b"/b");
    rename.extend(s(b"/c"));
    let mut posix = s(b"posix-rename@openssh.com");
    posix.extend(s(b"/d"));
    posix.extend(s(b"/e"));
    let client = [
        path_op(13, 1, "/a", false),
        packet(18, Some(2), &rename),
        packet(200, Some(3), &posix),
        path_op(14, 4, "/dir", true),
        path_op(15, 5, "/dir", false),
        path_op(9, 6, "/f", true),
        path_op(11, 7, "/", false),
    ]
    .concat();
    let server = [
        status(1, 2, "No such file"),
        status(2, 0, ""),
        status(3, 0, ""),
        status(4, 4, "Failure"),
        status(5, 0, ""),
        status(6, 3, "Permission denied"),
        handle(7, b"D"),
    ]
    .concat();
    write(
        "sftp",
        "path-ops",
        &stream(&[(true, &client), (false, &server)]),
    );
    let mut fset = s(h);
    fset.extend_from_slice(&0u32.to_be_bytes());
    write(
        "sftp",
        "fsetstat",
        &stream(&[
            (true, &open(1, "/x", 3)),
            (false, &handle(1, h)),
            (true, &packet(10, Some(2), &fset)),
            (false, &status(2, 0, "")),
        ]),
    );
    // Regression (found by fuzzing): a request and a bad length in one
    // chunk; the request must still be reported.
    let mut bad = path_op(13, 1, "/etc/important", false);
    bad.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 3]);
    write(
        "sftp",
        "regression-valid-then-bad-length",
        &stream(&[(true, &bad), (false, &status(1, 0, ""))]),
    );
    write(
        "sftp",
        "huge-length",
        &stream(&[
            (true, &[0xff, 0xff, 0xff, 0xff, 3, 0, 0]),
            (true, &[1, 2, 3]),
        ]),
    );
    write(
        "sftp",
        "short-packets",
        &stream(&[(
            false,
            &[
                s(&[101, 0, 0]),
                s(&[102]),
                s(&[103, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff]),
            ]
            .concat(),
        )]),
    );
}

fn scp() {
    let mut up = b"scp -t /tmp/\n".to_vec();
    up.extend(record(0, b"T1700000000 0 1700000000 0\n"));
    up.extend(record(1, b"\0"));
    up.extend(record(0, b"C0644 11 a.txt\n"));
    up.extend(record(1, b"\0"));
    up.extend(record(0, b"hello world\0"));
    write("scp", "upload", &up);

    let mut rec = b"scp -r -t -- '/dst dir'\n".to_vec();
    for line in [
        &b"D0755 0 top\n"[..],
        b"C0644 3 one\nabc\0",
        b"D0700 0 sub\n",
        b"C0600 0 empty\n\0",
        b"C0600 2 two\nxy\0",
        b"E\n",
        b"E\n",
    ] {
        rec.extend(record(0, line));
        rec.extend(record(1, b"\0"));
    }
    write("scp", "recursive-upload", &rec);

    let mut down = b"/usr/bin/scp -v -f /etc/hosts\n".to_vec();
    down.extend(record(0, b"\0"));
    down.extend(record(1, b"C0644 4 hosts\n1234\0"));
    down.extend(record(0, b"\0"));
    write("scp", "download", &down);

    let mut missing = b"scp -f \"/no pe\"\n".to_vec();
    missing.extend(record(0, b"\0"));
    missing.extend(record(1, b"\x01scp: /nope: No such file or directory\n"));
    write("scp", "download-error", &missing);

    let mut hostile = b"scp -t /x/\n".to_vec();
    hostile.extend(record(0, b"C0644 notanumber x\nC bad\nD\nE\nE\n"));
    hostile.extend(record(0, b"C0644 99999999999999 huge\nabc"));
    write("scp", "hostile", &hostile);
}

/// A shell conversation: (typed, drawn) pairs, as capture/guard records.
fn session(cols: u8, rows: u8, steps: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![cols, rows];
    for (typed, drawn) in steps {
        if !typed.is_empty() {
            out.extend(record(0, typed.as_bytes()));
        }
        if !drawn.is_empty() {
            out.extend(record(1, drawn.as_bytes()));
        }
    }
    out
}

fn terminal_sessions() -> Vec<(&'static str, Vec<u8>)> {
    let bash = "\x1b]0;alice@web01: ~\x07\x1b[01;32malice@web01\x1b[00m:\x1b[01;34m~\x1b[00m$ ";
    let long = "echo ".to_string() + &"x".repeat(60);
    let mut v = vec![
        (
            "bash-ls",
            session(
                80,
                24,
                &[
                    ("", bash),
                    ("ls -la\r", &format!("ls -la\r\ntotal 0\r\n{bash}")),
                ],
            ),
        ),
        (
            // Regression (found by fuzzing): two lines typed ahead, both
            // answered in one chunk.
            "regression-typed-ahead",
            session(40, 10, &[("", "$ "), ("a\rb\r", "a\r\n$ b\r\n$ ")]),
        ),
        (
            "backspace",
            session(
                40,
                10,
                &[
                    ("", "$ "),
                    ("echo helo", "echo helo"),
                    ("\x7f\x7f", "\x08 \x08\x08 \x08"),
                    ("llo\r", "llo\r\nhello\r\n$ "),
                ],
            ),
        ),
        (
            "history",
            session(
                40,
                10,
                &[
                    ("", "$ "),
                    ("echo one\r", "echo one\r\none\r\n$ "),
                    ("\x1b[A", "echo one"),
                    ("\x7f\x7f\x7ftwo\r", "\x08\x08\x08two\x1b[K\r\ntwo\r\n$ "),
                ],
            ),
        ),
        (
            "tab",
            session(
                40,
                10,
                &[
                    ("", "$ "),
                    ("cat some\t", "cat somefile.txt "),
                    ("\r", "\r\n$ "),
                ],
            ),
        ),
        (
            "wrap-continue",
            session(
                40,
                10,
                &[
                    ("", "$ "),
                    (&format!("{long}\r"), &format!("{long}\r\n")),
                    ("", "$ "),
                    ("echo a \\\r", "echo a \\\r\n> "),
                    ("b\r", "b\r\na b\r\n$ "),
                ],
            ),
        ),
        (
            "vim",
            session(
                80,
                24,
                &[
                    ("", "$ "),
                    (
                        "vim x\r",
                        "vim x\r\n\x1b[?1049h\x1b[H\x1b[2J~\r\n~\x1b[24;1H\"x\" [New]",
                    ),
                    ("ihello\x1b:wq\r", "\x1b[1;1Hhello\r\n"),
                    ("", "\x1b[?1049l$ "),
                    ("ls\r", "ls\r\n$ "),
                ],
            ),
        ),
        (
            "ctrl-c",
            session(
                40,
                10,
                &[
                    ("", "$ "),
                    ("rm -rf x\x03", "rm -rf x^C\r\n$ "),
                    ("pwd\r", "pwd\r\n/\r\n$ "),
                ],
            ),
        ),
        (
            "step-up-and-deny",
            session(
                80,
                24,
                &[
                    ("", "root@web01:~# "),
                    (
                        "sudo systemctl restart nginx\r",
                        "sudo systemctl restart nginx",
                    ),
                    ("", "\r\n[sudo] password for alice: "),
                    ("shutdown\r", "shutdown"),
                    ("rm -rf /var\r", "rm -rf /var"),
                ],
            ),
        ),
        (
            "utf8-wide",
            session(
                20,
                5,
                &[
                    ("", "% "),
                    ("echo 日本語 é\r", "echo 日本語 é\r\n日本語 é\r\n% "),
                ],
            ),
        ),
        (
            "scroll-region-cursor",
            session(
                30,
                6,
                &[
                    ("", "\x1b[2;5r\x1b[3;1H> "),
                    (
                        "top\r",
                        "top\r\n\x1b[?1049h\x1b[H\x1b[Jload\x1b[?1049l\x1b[r> ",
                    ),
                    ("\x1b[D\x1b[Cid\r", "\x1b[10Did\r\nuid=0\r\n> "),
                ],
            ),
        ),
    ];
    // Hibernate while idle, resize, and read the pending line.
    let mut h = session(
        40,
        10,
        &[
            ("", "\x1b[1mbold\x1b[0m banner\r\nuser@host:~$ "),
            ("ls -l", "ls -l"),
        ],
    );
    h.extend(record(3, b""));
    h.extend(record(1, b" /etc"));
    h.extend(record(2, &[100, 30]));
    h.extend(record(4, b""));
    h.extend(record(0, b"\r"));
    h.extend(record(1, b"\r\ntotal 0\r\nuser@host:~$ "));
    v.push(("hibernate-resize", h));
    // Bulk output (a large cat) pushed through the lazy path.
    let mut bulk = session(80, 24, &[("", "$ "), ("cat log\r", "cat log\r\n")]);
    bulk.extend(record(5, b"line of a long log\r\n"));
    bulk.extend(record(0, b"echo after\r"));
    bulk.extend(record(1, b"echo after\r\nafter\r\n$ "));
    v.push(("bulk", bulk));
    v
}

fn cast() {
    // What the recorder writes for a short bash session.
    let header = r#"{"version":2,"width":80,"height":24,"timestamp":1764460800,"title":"alice@web01","env":{"TERM":"xterm-256color","SHELL":"/bin/bash"},"gatehouse":{"session_id":"01JDX3Q5W3R9V6T0ZK8M2N4P7A","user":"alice","target":"web01","login":"deploy"}}"#;
    let events = [
        r#"[0.012345,"o","\u001b]0;deploy@web01: ~\u0007\u001b[01;32mdeploy@web01\u001b[00m:\u001b[01;34m~\u001b[00m$ "]"#,
        r#"[1.2,"i","l"]"#,
        r#"[1.201,"o","l"]"#,
        r#"[1.35,"i","s"]"#,
        r#"[1.351,"o","s"]"#,
        r#"[1.6,"i","\r"]"#,
        r#"[1.61,"o","\r\n\u001b[0m\u001b[01;34mbin\u001b[0m  notes.txt  日本語\r\n"]"#,
        r#"[1.7,"m","ls"]"#,
        r#"[2.5,"r","120x40"]"#,
        r#"[3.0,"o","\u001b[?1049h\u001b[H\u001b[2Jtop - 12:00:00\u001b[?1049l"]"#,
    ];
    let mut text = header.to_string() + "\n";
    for e in events {
        text.push_str(e);
        text.push('\n');
    }
    write("asciicast", "bash-session.cast", text.as_bytes());
    write(
        "asciicast",
        "partial-last-line.cast",
        (text.clone() + r#"[4.0,"o","cut"#).as_bytes(),
    );
    write(
        "asciicast",
        "header-only.cast",
        (header.to_string() + "\n").as_bytes(),
    );
    write(
        "asciicast",
        "corrupt-header.cast",
        b"{\"version\": 2,\n[0.1,\"o\",\"x\"]\n",
    );
    // Records for the writer half: output split inside a UTF-8
    // character, input, resize, marker.
    let snow = "é☃ ok\r\n".as_bytes();
    let mut w = record(0, &snow[..2]);
    w.extend(record(64, &snow[2..4]));
    w.extend(record(0, &snow[4..]));
    w.extend(record(1, b"ls\r"));
    w.extend(record(2, &[120, 40]));
    w.extend(record(3, b"ls"));
    w.extend(record(4, &[0xff, b'a', 0xe2, 0x98]));
    write("asciicast", "writer-utf8", &w);
}

fn configs() {
    let test_config = r#"
[server]
listen = "127.0.0.1:2222"
host_key = "host_ed25519"
node = "test-node"

[upstream]
key = "client_ed25519"
connect_timeout = "5s"

[store]
url = "sqlite:///tmp/gatehouse.db"

[recording]
dir = "recordings"

[[targets]]
name = "web01"
address = "127.0.0.1:2200"
labels = { env = "test", team = "web" }
host_key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
default_login = "deploy"

[[targets]]
name = "tofu01"
address = "[::1]:22"
labels = { env = "test" }
tofu = true

[[roles]]
name = "dev"
allow = [{ targets = { env = "test" }, logins = ["deploy"] }]
deny = [{ commands = ["^rm -rf /"] }]
port_forwarding = true

[[users]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice"]
roles = ["dev"]

[[users]]
name = "bob"
keys = ["ssh-ed25519 AAAA bob"]
roles = []

[[alerts]]
name = "privilege-escalation"
when = "type = 'command' and command ~ '^(sudo|su)\b'"
severity = "high"

[[alerts]]
name = "failed-login-surge"
threshold = { count = 3, type = "auth.failure", by = "source_ip", within = "1m" }
severity = "critical"
action = { block_source = "15m" }

[[sinks]]
name = "file"
kind = "jsonl"
path = "events.jsonl"

[[sinks]]
name = "splunk"
kind = "splunk_hec"
url = "http://127.0.0.1:8088/services/collector/event"
token = "hec-secret"
"#;
    write("config", "test-env.toml", test_config.as_bytes());
    let init = r#"# Gatehouse configuration. Validate with `gatehouse check`; reload with SIGHUP.
[server]
listen = "127.0.0.1:2222"
host_key = "data/host_ed25519"
node = "gatehouse-1"

[upstream]
key = "data/client_ed25519"
ca_key = "data/user_ca"
cert_validity = "5m"

[store]
url = "sqlite://data/gatehouse.db"

[recording]
dir = "data/recordings"

[audit]
on_failure = "refuse"

[[roles]]
name = "admin"
allow = [{ targets = {}, logins = ["*"] }]
port_forwarding = true

[[users]]
name = "admin"
keys = []  # paste your ~/.ssh/id_ed25519.pub here
roles = ["admin"]
"#;
    write("config", "init.toml", init.as_bytes());
    // The policy tests' config: labels, approvals, MFA, deny rules.
    let policy = std::fs::read_to_string(root().join("crates/policy/src/tests.rs")).unwrap();
    if let Some(base) = policy
        .split_once("const BASE: &str = r#\"")
        .and_then(|(_, rest)| rest.split_once("\"#;"))
    {
        write("config", "policy-base.toml", base.0.as_bytes());
    }
    write(
        "config",
        "bad-alert.toml",
        b"[[alerts]]\nname = \"bad\"\nwhen = \"command ~ '('\"\nseverity = \"high\"\n",
    );
    write(
        "config",
        "unknown-key.toml",
        b"[server]\nlisten = \"x\"\nlistne = 1\n",
    );
    write(
        "config",
        "postgres-mfa.toml",
        b"[store]\nurl = \"postgres://gh@db/gatehouse\"\n\n[[roles]]\nname = \"ops\"\nrequire_mfa = true\nreauth_commands = [\"^sudo\"]\nmax_session = \"8h\"\nallow = [{ targets = { env = \"prod\" }, logins = [\"root\"] }]\n",
    );
}

fn runbooks() {
    let dir = root().join("crates/audit/src/builtin");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        write("runbook", &name, &std::fs::read(&f).unwrap());
    }
    write(
        "runbook",
        "actions.toml",
        br#"name = "lock-noisy"
description = "Locks users with many denials"
query = "SELECT user, session_id, source_ip FROM events WHERE type = 'access.denied' AND time >= {since} AND user = {who} LIMIT {n}"
[params.since]
type = "since"
default = "24h"
[params.who]
type = "string"
pattern = "^[a-z]+$"
default = "alice"
description = "bob"
[params.n]
type = "int"
default = "10"
[params.max]
type = "duration_ms"
default = "8h"
[[actions]]
kind = "lock_user"
column = "user"
reason = "too many denials"
[[actions]]
kind = "block_source"
column = "source_ip"
duration = "15m"
[[actions]]
kind = "notify"
"#,
    );
    write(
        "runbook",
        "not-read-only.toml",
        b"name = \"x\"\ndescription = \"d\"\nquery = \"DELETE FROM events\"\n",
    );
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    usernames();
    sftp();
    scp();
    for (name, data) in terminal_sessions() {
        write("capture", name, &data);
        write("guard", name, &data);
    }
    cast();
    configs();
    runbooks();
}
