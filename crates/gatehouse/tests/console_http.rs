//! The console over plain HTTP (loopback) with the real `curl`: sign-in
//! with password and TOTP, throttling and auditing of failures, the
//! security headers, CSRF and Origin checks, permissions (deny by
//! default, another user's session), malformed and oversized input, and
//! API tokens. The browser flows are in `console.rs`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Env, T};
use gatehouse_testkit as kit;

struct Http {
    status: u16,
    headers: String,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// `curl -i` with `args`, against `http://127.0.0.1:PORT{path}`.
fn curl(port: u16, path: &str, args: &[&str]) -> Http {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "30"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"));
    let out = kit::run(cmd, T).expect("run curl");
    assert_eq!(out.code, Some(0), "curl failed: {}", out.stderr);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((text.clone(), String::new()));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    Http {
        status,
        headers,
        body,
    }
}

/// The session page answers without hashing the recording: it preloads
/// the cast and leaves the integrity line "checking" for
/// `/sessions/ID/integrity`, which says verified (each time, the second
/// from the remembered digest), and TAMPERED once one byte of the file
/// changed, even with its size and modification time kept. Each check is
/// a `recording.access` (verify) event.
fn integrity_checks(env: &Env, admin: u16, jar: &str, id: &str) {
    let page = curl(admin, &format!("/sessions/{id}"), &["-H", jar]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!(
            "<link rel=\"preload\" href=\"/sessions/{id}/cast\" as=\"fetch\" crossorigin=\"anonymous\">"
        )),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!(
            "<dd id=\"integrity\" data-integrity=\"/sessions/{id}/integrity\" data-state=\"checking\">"
        )),
        "{}",
        page.body
    );
    let check = || {
        let r = curl(admin, &format!("/sessions/{id}/integrity"), &["-H", jar]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{}",
            r.headers
        );
        serde_json::from_str::<serde_json::Value>(&r.body).expect("integrity json")
    };
    for _ in 0..2 {
        let v = check();
        assert_eq!(v["state"], "verified", "{v}");
        assert_eq!(v["badge"], "ok", "{v}");
        assert_eq!(v["sha256"], v["expected"], "{v}");
        assert!(
            v["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("verified: SHA-256 ")),
            "{v}"
        );
    }
    let path = env.dir.path().join("recordings").join(format!("{id}.cast"));
    let original = std::fs::read(&path).expect("the recording");
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut altered = original.clone();
    let at = altered
        .windows(4)
        .position(|w| w == b"from")
        .expect("the output in the recording");
    altered[at] = b'F';
    let rewrite = |bytes: &[u8]| {
        std::fs::write(&path, bytes).expect("write the recording");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(modified))
            .expect("set mtime");
    };
    rewrite(&altered);
    let v = check();
    assert_eq!(v["state"], "tampered", "{v}");
    assert_eq!(v["badge"], "bad", "{v}");
    assert_ne!(v["sha256"], v["expected"], "{v}");
    let text = v["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("TAMPERED: SHA-256 "), "{v}");
    assert!(
        v["expected"].as_str().is_some_and(|x| text.contains(x)),
        "{v}"
    );
    rewrite(&original);
    assert_eq!(check()["state"], "verified");
    let verifies = format!(
        "SELECT 1 FROM events WHERE type = 'recording.access' AND session_id = '{id}' AND json_extract(details, '$.action') = 'verify' AND json_extract(details, '$.by') = 'rita'"
    );
    env.wait_rows(&format!(
        "SELECT 1 FROM (SELECT count(*) AS n FROM ({verifies})) WHERE n >= 4"
    ));
    assert_eq!(
        env.query(&verifies).len(),
        4,
        "one recording.access (verify) per check"
    );
}

/// `gatehouse users hash-password` (it needs no config).
fn hash_password(password: &str) -> String {
    let mut cmd = Command::new(common::gatehouse_bin());
    cmd.args(["users", "hash-password"])
        .current_dir(std::env::temp_dir());
    let out = kit::run_with_input(cmd, password.as_bytes(), T).expect("hash-password");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn code(secret_b32: &str, offset_steps: i64) -> String {
    let secret = gatehouse_auth::totp::base32_decode(secret_b32).expect("base32 secret");
    let now = chrono::Utc::now().timestamp() + offset_steps * 30;
    gatehouse_auth::totp::code(&secret, now as u64)
}

/// Signs in; returns the cookie header value and the page's CSRF token.
fn sign_in(port: u16, user: &str, password: &str, code: &str) -> (String, String) {
    let origin = format!("Origin: http://127.0.0.1:{port}");
    let r = curl(
        port,
        "/signin",
        &[
            "-H",
            &origin,
            "--data-urlencode",
            &format!("user={user}"),
            "--data-urlencode",
            &format!("password={password}"),
            "--data-urlencode",
            &format!("code={code}"),
        ],
    );
    assert_eq!(r.status, 303, "sign-in of {user} failed: {}", r.body);
    let set = r.header("set-cookie").expect("a cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "plain HTTP cannot keep a Secure cookie: {set}"
    );
    let cookie = set.split(';').next().expect("cookie").to_string();
    let page = curl(port, "/sessions", &["-H", &format!("Cookie: {cookie}")]);
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field on the page")
        .to_string();
    (cookie, csrf)
}

#[test]
fn sign_in_permissions_csrf_bad_input_and_tokens() {
    let admin = kit::free_port();
    let rita_pw = "correct horse battery";
    let carol_pw = "carols own password";
    let rita_hash = hash_password(rita_pw);
    let carol_hash = hash_password(carol_pw);
    let extra = format!(
        r#"
[[roles]]
name = "reviewer"
console = ["all_sessions", "watch", "kill", "audit", "runbooks", "users"]

[[roles]]
name = "self"
console = ["own_sessions"]

[[users]]
name = "rita"
roles = ["reviewer"]
password_hash = "{rita_hash}"

[[users]]
name = "carol"
roles = ["self"]
password_hash = "{carol_hash}"

[[users]]
name = "nora"
roles = []
password_hash = "{carol_hash}"
"#
    );
    let env = Env::start_server(
        &format!("admin_listen = \"127.0.0.1:{admin}\"\nmax_auth_failures = 4"),
        &extra,
    );
    kit::wait_for_port(admin, Duration::from_secs(20)).expect("console port");
    assert!(
        env.gateway_log().contains("plain HTTP"),
        "a plain-HTTP console is announced with a warning:\n{}",
        env.gateway_log()
    );
    let enrol = env.gatehouse(&["--format", "json", "users", "totp-enroll", "rita"]);
    assert_eq!(enrol.code, Some(0), "{}", enrol.stderr);
    let secret: serde_json::Value = serde_json::from_slice(&enrol.stdout).expect("json");
    let secret = secret["secret"].as_str().expect("secret").to_string();

    // A real session of alice's, to look for.
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "from-alice"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows(
        "SELECT session_id FROM sessions WHERE \"user\" = 'alice' AND end_time IS NOT NULL",
    );
    let alice_session = rows[0]["session_id"].as_str().expect("id").to_string();

    // Not signed in: the sign-in page, or 401 JSON from the API; the
    // security headers on every answer.
    let r = curl(admin, "/sessions?user=alice", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/signin?next=%2Fsessions%3Fuser%3Dalice")
    );
    let csp = r.header("content-security-policy").expect("CSP");
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .expect("script-src");
    assert!(!script_src.contains("unsafe-inline"), "{csp}");
    assert!(script_src.contains("'wasm-unsafe-eval'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    let api = curl(admin, "/api/v1/whoami", &[]);
    assert_eq!(api.status, 401);
    assert!(api.body.starts_with("{\"error\":"), "{}", api.body);
    // A forged cookie is no sign-in.
    let forged = curl(
        admin,
        "/sessions",
        &["-H", &format!("Cookie: gatehouse={}", "ab".repeat(32))],
    );
    assert_eq!(forged.status, 303);

    // Wrong password and wrong code: refused, audited, same sentence.
    let origin = format!("Origin: http://127.0.0.1:{admin}");
    let bad = curl(
        admin,
        "/signin",
        &["-H", &origin, "-d", "user=rita&password=nope&code=000000"],
    );
    assert_eq!(bad.status, 401);
    assert!(bad
        .body
        .contains("Wrong user, password or verification code."));
    let bad = curl(
        admin,
        "/signin",
        &[
            "-H",
            &origin,
            "--data-urlencode",
            "user=rita",
            "--data-urlencode",
            &format!("password={rita_pw}"),
            "-d",
            "code=000000",
        ],
    );
    assert_eq!(bad.status, 401);
    let failures = env.wait_rows(
        "SELECT reason, json_extract(details, '$.channel') AS channel FROM events WHERE type = 'auth.failure' AND \"user\" = 'rita'",
    );
    assert!(failures.len() >= 2, "{failures:?}");
    assert!(
        failures.iter().all(|f| f["channel"] == "web"),
        "{failures:?}"
    );
    // No Origin: the sign-in form is not accepted from elsewhere.
    let r = curl(admin, "/signin", &["-d", "user=rita&password=x&code=1"]);
    assert_eq!(r.status, 403);
    // A user with no console permission cannot sign in.
    let r = curl(
        admin,
        "/signin",
        &[
            "-H",
            &origin,
            "--data-urlencode",
            "user=nora",
            "--data-urlencode",
            &format!("password={carol_pw}"),
        ],
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("grants console access"), "{}", r.body);

    // Rita, with her code.
    let (cookie, csrf) = sign_in(admin, "rita", rita_pw, &code(&secret, 0));
    let ok = env.wait_rows(
        "SELECT mfa FROM events WHERE type = 'auth.success' AND \"user\" = 'rita' AND json_extract(details, '$.channel') = 'web'",
    );
    assert_eq!(ok[0]["mfa"], 1);
    let jar = format!("Cookie: {cookie}");
    let page = curl(admin, &format!("/sessions/{alice_session}"), &["-H", &jar]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("echo from-alice"), "{}", page.body);
    env.wait_rows(&format!(
        "SELECT 1 FROM events WHERE type = 'recording.access' AND session_id = '{alice_session}' AND json_extract(details, '$.channel') = 'web' AND json_extract(details, '$.by') = 'rita'"
    ));
    integrity_checks(&env, admin, &jar, &alice_session);
    let audit = curl(admin, "/audit?type=auth.*&user=rita", &["-H", &jar]);
    assert_eq!(audit.status, 200);
    env.wait_rows("SELECT 1 FROM events WHERE type = 'audit.read' AND \"user\" = 'rita'");
    let csv = curl(
        admin,
        "/audit/export?format=csv&type=command",
        &["-H", &jar],
    );
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("seq,id,time,type,"), "{}", csv.body);
    assert!(csv.body.contains("echo from-alice"), "{}", csv.body);

    // Bad input: one sentence, 4xx.
    for (path, status) in [
        ("/sessions?since=yesterday-ish", 400),
        ("/sessions?active=maybe", 400),
        ("/audit?severity=loud", 400),
        ("/audit?before=x", 400),
        ("/sessions/..%2F..%2Fetc%2Fpasswd", 404),
        ("/sessions/01NOSUCHSESSION", 404),
        ("/no/such/page", 404),
    ] {
        let r = curl(admin, path, &["-H", &jar]);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains("id=\"error\""), "{path}: {}", r.body);
        assert!(!r.body.contains("panicked"), "{path}");
    }
    let big = "x".repeat(100_000);
    let r = curl(
        admin,
        "/users/alice",
        &[
            "-H",
            &jar,
            "-H",
            &origin,
            "--data-urlencode",
            &format!("reason={big}"),
        ],
    );
    assert_eq!(r.status, 413, "{}", r.body);
    let r = curl(
        admin,
        "/users/alice",
        &["-H", &jar, "-H", &origin, "-d", "action=lock"],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("The form is malformed"), "{}", r.body);

    // CSRF: a missing or wrong token, or another Origin, changes nothing.
    let lock = format!("csrf={csrf}&action=lock&reason=test");
    for (token_ok, origin_hdr) in [
        (false, origin.clone()),
        (true, "Origin: https://evil.example".to_string()),
    ] {
        let data = if token_ok {
            lock.clone()
        } else {
            "csrf=forged&action=lock&reason=test".to_string()
        };
        let r = curl(
            admin,
            "/users/alice",
            &["-H", &jar, "-H", &origin_hdr, "-d", &data],
        );
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert!(env
        .query("SELECT 1 FROM events WHERE type = 'user.locked'")
        .is_empty());
    // The real form works.
    let r = curl(
        admin,
        "/users/alice",
        &["-H", &jar, "-H", &origin, "-d", &lock],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let locked = env.wait_rows(
        "SELECT json_extract(details, '$.by') AS by, json_extract(details, '$.channel') AS channel FROM events WHERE type = 'user.locked'",
    );
    assert_eq!(
        (locked[0]["by"].as_str(), locked[0]["channel"].as_str()),
        (Some("rita"), Some("web"))
    );
    let r = curl(
        admin,
        "/users/alice",
        &[
            "-H",
            &jar,
            "-H",
            &origin,
            "-d",
            &format!("csrf={csrf}&action=unlock"),
        ],
    );
    assert_eq!(r.status, 303);

    // Carol sees only her own sessions: alice's is "not found", the
    // audit log is forbidden.
    let (carol, _) = sign_in(admin, "carol", carol_pw, "");
    let cj = format!("Cookie: {carol}");
    let r = curl(admin, &format!("/sessions/{alice_session}"), &["-H", &cj]);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = curl(
        admin,
        &format!("/sessions/{alice_session}/cast"),
        &["-H", &cj],
    );
    assert_eq!(r.status, 404);
    let r = curl(
        admin,
        &format!("/sessions/{alice_session}/integrity"),
        &["-H", &cj],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.starts_with("{\"error\":"), "{}", r.body);
    let r = curl(admin, "/sessions", &["-H", &cj]);
    assert!(
        !r.body.contains(&alice_session),
        "carol sees alice's session"
    );
    assert_eq!(curl(admin, "/audit", &["-H", &cj]).status, 403);

    // Signing out ends the cookie.
    let r = curl(
        admin,
        "/signout",
        &["-H", &jar, "-H", &origin, "-d", &format!("csrf={csrf}")],
    );
    assert_eq!(r.status, 303);
    assert_eq!(curl(admin, "/sessions", &["-H", &jar]).status, 303);

    // API tokens: made on the host, shown once, scoped to the user,
    // audited, revocable.
    let made = env.gatehouse(&[
        "--format", "json", "tokens", "create", "rita", "--name", "ci",
    ]);
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("json");
    let token = made["token"].as_str().expect("token").to_string();
    let token_id = made["id"].as_str().expect("id").to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let who = curl(admin, "/api/v1/whoami", &["-H", &bearer]);
    assert_eq!(who.status, 200, "{}", who.body);
    let who: serde_json::Value = serde_json::from_str(&who.body).expect("json");
    assert_eq!(who["user"], "rita");
    let list = curl(admin, "/api/v1/sessions?user=alice", &["-H", &bearer]);
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains(&alice_session), "{}", list.body);
    let sql = curl(
        admin,
        "/api/v1/sql",
        &[
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"q\": \"SELECT count(*) AS n FROM events\"}",
        ],
    );
    assert_eq!(sql.status, 200, "{}", sql.body);
    assert!(sql.body.contains("\"columns\":[\"n\"]"), "{}", sql.body);
    let bad = curl(admin, "/api/v1/sessions?since=soonish", &["-H", &bearer]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.starts_with("{\"error\":"), "{}", bad.body);
    env.wait_rows(&format!(
        "SELECT 1 FROM events WHERE type = 'token.used' AND json_extract(details, '$.token_id') = '{token_id}'"
    ));
    env.wait_rows(&format!(
        "SELECT 1 FROM events WHERE type = 'audit.read' AND json_extract(details, '$.token_id') = '{token_id}' AND json_extract(details, '$.channel') = 'api'"
    ));
    // Carol's token carries carol's permissions: no audit rows.
    let carols = env.gatehouse(&["--format", "json", "tokens", "create", "carol"]);
    assert_eq!(carols.code, Some(0), "{}", carols.stderr);
    let carols: serde_json::Value = serde_json::from_slice(&carols.stdout).expect("json");
    let carol_bearer = format!(
        "Authorization: Bearer {}",
        carols["token"].as_str().expect("token")
    );
    let r = curl(admin, "/api/v1/events", &["-H", &carol_bearer]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = curl(
        admin,
        &format!("/api/v1/sessions/{alice_session}"),
        &["-H", &carol_bearer],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let revoked = env.gatehouse(&["tokens", "revoke", &token_id]);
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    assert_eq!(curl(admin, "/api/v1/whoami", &["-H", &bearer]).status, 401);
    let listed = env.gatehouse(&["tokens", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("revoked"));
    env.wait_rows("SELECT 1 FROM events WHERE type = 'token.revoked' AND \"user\" = 'rita'");

    // Repeated failures block the address (max_auth_failures = 4).
    for _ in 0..4 {
        curl(
            admin,
            "/signin",
            &["-H", &origin, "-d", "user=rita&password=wrong&code=1"],
        );
    }
    let r = curl(
        admin,
        "/signin",
        &["-H", &origin, "-d", "user=rita&password=wrong&code=1"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("is blocked"), "{}", r.body);
    env.wait_rows("SELECT 1 FROM events WHERE type = 'source.blocked' AND source_ip = '127.0.0.1'");
}
