//! Signing in to the web console at a real OpenID provider
//! (oidc-provider, from `tests/oidc/provider.mjs`) with the authorization
//! code flow and PKCE, through the provider's own pages (curl as the
//! browser): a Gatehouse user without a password gets a console session;
//! so does someone who exists only at the provider, with the roles their
//! groups map to (and no more); someone the config does not know and
//! whose groups give no role, or whose roles need a second factor the
//! provider did not report, is refused; a callback this browser did not
//! start is refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Env, T};
use gatehouse_testkit as kit;
use gatehouse_testkit::oidc::{Account, OidcClient, OidcOptions, OidcProvider};

const PASSWORD: &str = "correct horse battery";

fn account(name: &str) -> Account {
    Account {
        password: PASSWORD.into(),
        email: format!("{name}@example.com"),
        groups: vec![],
    }
}

#[test]
fn the_console_signs_in_at_the_identity_provider() {
    let admin = kit::free_port();
    let mut client = OidcClient::new("gatehouse", "s3cret");
    client.redirect_uris = vec![format!("http://127.0.0.1:{admin}/signin/sso/callback")];
    let mut op = OidcProvider::start(&OidcOptions {
        clients: vec![client],
        ..Default::default()
    })
    .expect("start the OpenID provider");
    for name in ["rita", "ursula", "carol"] {
        op.set_account(name, account(name)).unwrap();
    }
    // dora is at the provider only, in a group that role_map gives "self".
    let mut dora = account("dora");
    dora.groups = vec!["eng".into()];
    op.set_account("dora", dora).unwrap();
    let extra = format!(
        r#"
[[roles]]
name = "self"
console = ["own_sessions"]

[[roles]]
name = "reviewer"
console = ["all_sessions", "audit"]

[[users]]
name = "rita"
roles = ["self"]

[[users]]
name = "ursula"
roles = ["reviewer"]

[[identity_providers]]
name = "corp"
kind = "oidc"
issuer = "{}"
client_id = "gatehouse"
client_secret = "s3cret"
role_map = {{ "eng" = ["self"] }}
"#,
        op.issuer
    );
    let env = Env::start_server(&format!("admin_listen = \"127.0.0.1:{admin}\""), &extra);
    kit::wait_for_port(admin, Duration::from_secs(20)).expect("console port");
    let console = format!("http://127.0.0.1:{admin}");

    // The sign-in page offers the provider.
    let page = Command::new("curl")
        .args(["-s", &format!("{console}/signin?next=%2Fsessions")])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("Sign in with corp"), "{page}");
    assert!(
        page.contains("/signin/sso?provider=corp&amp;next=%2Fsessions"),
        "{page}"
    );

    // rita, who has no password, signs in at the provider and lands on
    // her sessions.
    let start = format!("{console}/signin/sso?provider=corp&next=%2Fsessions");
    let landed = op
        .browse(&start, "rita", PASSWORD, |url, _| {
            url.starts_with(&console) && url.ends_with("/sessions")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", env.gateway_log()));
    assert_eq!(landed, format!("{console}/sessions"));
    let rows = env.wait_rows(
        "SELECT details, mfa FROM events WHERE type = 'auth.success' AND \"user\" = 'rita'",
    );
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["channel"], "web", "{d}");
    assert_eq!(d["method"], "sso", "{d}");
    assert_eq!(d["sso"]["provider"], "corp", "{d}");
    assert_eq!(
        d["identity"],
        serde_json::json!({"provider": "corp", "subject": "rita", "email": "rita@example.com", "groups": []})
    );

    // dora exists only at the provider: her group's role lets her see her
    // own sessions and nothing more.
    let landed = op
        .browse(&start, "dora", PASSWORD, |url, body| {
            if !(url.starts_with(&console) && url.ends_with("/sessions")) {
                return false;
            }
            // Her page, signed in as her, with no link beyond her role's.
            assert!(body.contains("<span class=\"who\">dora</span>"), "{body}");
            assert!(!body.contains("href=\"/audit\""), "{body}");
            true
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", env.gateway_log()));
    assert_eq!(landed, format!("{console}/sessions"));
    let rows = env
        .wait_rows("SELECT details FROM events WHERE type = 'auth.success' AND \"user\" = 'dora'");
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(
        d["sso"]["roles"],
        serde_json::json!([{"claim": "groups", "value": "eng", "role": "self"}]),
        "{d}"
    );
    assert_eq!(d["identity"]["groups"], serde_json::json!(["eng"]), "{d}");

    // carol is known to the provider only, in no mapped group: no console.
    let e = op
        .browse(&start, "carol", PASSWORD, |url, _| {
            url.ends_with("/sessions")
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("carol, who is not a Gatehouse user"), "{e}");
    // ursula's roles need a second factor; the provider reported one.
    let e = op
        .browse(&start, "ursula", PASSWORD, |url, _| {
            url.ends_with("/sessions")
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("require a second factor"), "{e}");
    let failures = env.wait_rows(
        "SELECT \"user\", reason, details FROM events WHERE type = 'auth.failure' ORDER BY seq",
    );
    let reasons: Vec<String> = failures
        .iter()
        .map(|r| format!("{} {}", r["user"], r["reason"]))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("carol") && r.contains("has no [[users]] entry")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("ursula") && r.contains("single factor")),
        "{reasons:?}"
    );

    // A callback this browser did not start: refused, nothing signed in.
    let out = kit::run(
        {
            let mut c = Command::new("curl");
            c.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{console}/signin/sso/callback?code=stolen&state=forged"),
            ]);
            c
        },
        T,
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    env.wait_rows("SELECT 1 FROM events WHERE type = 'auth.failure' AND reason LIKE '%without a sign-in started in this browser%'");
    let signed_in = env.query("SELECT \"user\" FROM events WHERE type = 'auth.success'");
    assert_eq!(signed_in.len(), 2, "{signed_in:?}");
}
