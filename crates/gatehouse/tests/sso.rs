//! Single sign-on for SSH with unchanged OpenSSH clients, against a real
//! OpenID provider (oidc-provider, started by the test from
//! `tests/oidc/provider.mjs`): a person the provider knows, with no
//! `[[users]]` entry, runs a plain `ssh` in a terminal, opens the URL it
//! shows and signs in through the provider's pages; the key is then bound,
//! so `ssh` and `scp` in batch mode need no sign-in; groups map to roles
//! (and `policy explain` says so); a lock and a removal at the provider
//! end access; a token for another client, or an expired one, is refused.

mod common;

use std::time::Duration;

use common::{stdout, Env, T};
use gatehouse_testkit::oidc::{Account, OidcClient, OidcOptions, OidcProvider};
use gatehouse_testkit::{self as kit, KeyPair, Tmux};

const PASSWORD: &str = "correct horse battery";

fn carol(groups: &[&str]) -> Account {
    Account {
        password: PASSWORD.into(),
        email: "carol@example.com".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// The provider section and a role for production that the `prodops`
/// group gives; `ops` gives the base config's `dev` (env = test).
fn sso_config(issuer: &str) -> String {
    format!(
        r#"
[[roles]]
name = "prod"
allow = [{{ targets = {{ env = "prod" }}, logins = ["*"] }}]

[[identity_providers]]
name = "corp"
kind = "oidc"
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "s3cret"
role_map = {{ "ops" = ["dev"], "prodops" = ["prod"] }}
allowed_domains = ["example.com"]
sso_session = "1h"
"#
    )
}

fn start(options: OidcOptions) -> (OidcProvider, Env, KeyPair) {
    let mut op = OidcProvider::start(&options).expect("start the OpenID provider");
    op.set_account("carol", carol(&["ops"])).unwrap();
    let env = Env::start_with(&sso_config(&op.issuer));
    let key = kit::keygen(env.dir.path(), "carol").expect("keygen");
    (op, env, key)
}

fn gatehouse_client() -> OidcClient {
    OidcClient::new("gatehouse", "s3cret")
}

/// A plain `ssh` in a terminal, as a person runs it (keyboard-interactive
/// allowed, messages shown).
fn interactive_ssh(env: &Env, key: &KeyPair, dest: &str, command: &str) -> Tmux {
    let line = format!(
        "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -i {} -p {} {dest} '{command}'; echo ssh-exited-$?",
        key.private.display(),
        env.port
    );
    Tmux::start(&line).expect("tmux")
}

/// The sign-in URL the gateway showed in the terminal.
fn shown_url(tmux: &Tmux) -> String {
    let screen = tmux
        .wait_for("user_code=", Duration::from_secs(60))
        .expect("the gateway shows where to sign in");
    assert!(screen.contains("Sign in as carol at corp"), "{screen}");
    screen
        .split_whitespace()
        .find(|w| w.contains("/device?user_code="))
        .expect("a verification URL")
        .to_string()
}

/// `ssh` in batch mode (no keyboard-interactive): only a bound key works.
fn batch_ssh(env: &Env, key: &KeyPair, dest: &str, args: &[&str]) -> kit::Output {
    kit::run(env.client(key).ssh(env.port, dest, args), T).expect("run ssh")
}

fn explain(env: &Env, target: &str) -> (Option<i32>, String) {
    let out = env.gatehouse(&["policy", "explain", "carol", target]);
    (out.code, stdout(&out))
}

#[test]
fn a_person_only_the_provider_knows_signs_in_once_and_is_judged_by_their_groups() {
    let (mut op, env, key) = start(OidcOptions {
        clients: vec![gatehouse_client()],
        ..Default::default()
    });
    // Before any sign-in, policy knows nobody called carol.
    let (code, text) = explain(&env, "web01");
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("identity:"), "{text}");

    // The first login: the gateway shows a URL and waits while carol
    // signs in at the provider in her browser.
    let tmux = interactive_ssh(
        &env,
        &key,
        "carol:web01@127.0.0.1",
        "echo signed-in-$((6*7))",
    );
    let url = shown_url(&tmux);
    op.sign_in(&url, "carol", PASSWORD)
        .expect("carol signs in through the provider's pages");
    let screen = tmux
        .wait_for("ssh-exited-", Duration::from_secs(60))
        .unwrap();
    assert!(
        screen.contains("signed-in-42"),
        "{screen}\n{}",
        env.gateway_log()
    );
    assert!(screen.contains("ssh-exited-0"), "{screen}");

    // The key is bound: scp and ssh in batch mode, no sign-in.
    let file = env.dir.path().join("payload.txt");
    std::fs::write(&file, "sso payload\n").unwrap();
    let remote = env.dir.path().join("copied.txt");
    let mut client = env.client(&key);
    client.user = Some("carol:web01".into());
    let out = kit::run(
        client.scp(
            env.port,
            &[
                &file.display().to_string(),
                &format!("127.0.0.1:{}", remote.display()),
            ],
        ),
        T,
    )
    .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "scp: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "sso payload\n");
    let out = batch_ssh(&env, &key, "carol:web01@127.0.0.1", &["echo", "again"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(stdout(&out).trim(), "again");

    // The trail: who the provider said, and which claim gave which role.
    let logins = env.query(
        "SELECT details FROM events WHERE type = 'auth.success' AND \"user\" = 'carol' ORDER BY seq",
    );
    assert_eq!(logins.len(), 3, "{logins:?}");
    let first: serde_json::Value =
        serde_json::from_str(logins[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(first["method"], "publickey+sso", "{first}");
    assert_eq!(first["sso"]["via"], "device");
    assert_eq!(
        first["sso"]["roles"],
        serde_json::json!([{"claim": "groups", "value": "ops", "role": "dev"}])
    );
    assert!(first["sso"]["key_bound_until"].is_string(), "{first}");
    assert_eq!(
        first["identity"],
        serde_json::json!({"provider": "corp", "subject": "carol", "email": "carol@example.com", "groups": ["ops"]})
    );
    for row in &logins[1..] {
        let d: serde_json::Value = serde_json::from_str(row["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["sso"]["via"], "bound_key", "{d}");
    }
    // Every event of carol's sessions names the identity.
    let rows = env.wait_rows(
        "SELECT type, details FROM events WHERE \"user\" = 'carol' AND type IN ('session.start', 'scp', 'command', 'session.end')",
    );
    assert!(rows.len() >= 4, "{rows:?}");
    for r in &rows {
        let d: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d["identity"]["subject"], "carol", "{r}");
    }

    // Groups decide: ops reaches env=test, not prod.
    let (code, text) = explain(&env, "prod01");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("identity: carol from corp"), "{text}");
    assert!(text.contains("groups ops gives role dev"), "{text}");
    assert!(text.contains("DENY carol -> prod01"), "{text}");
    let out = batch_ssh(&env, &key, "carol:prod01@127.0.0.1", &["true"]);
    assert_ne!(out.code, Some(0));
    // Given prodops at the provider: the next login brings it.
    op.set_account("carol", carol(&["ops", "prodops"])).unwrap();
    let out = batch_ssh(&env, &key, "carol:prod01@127.0.0.1", &["echo", "prod"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    let (code, text) = explain(&env, "prod01");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("groups prodops gives role prod"), "{text}");
    assert!(text.contains("ALLOW carol -> prod01"), "{text}");

    // A Gatehouse lock ends it, whatever the provider says.
    let out = env.gatehouse(&["users", "lock", "carol", "--reason", "on leave"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = batch_ssh(&env, &key, "carol:web01@127.0.0.1", &["true"]);
    assert_ne!(out.code, Some(0));
    env.wait_rows("SELECT 1 FROM events WHERE type = 'auth.failure' AND \"user\" = 'carol' AND reason = 'user is locked: on leave'");
    let out = env.gatehouse(&["users", "unlock", "carol"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = batch_ssh(&env, &key, "carol:web01@127.0.0.1", &["true"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // Removed at the provider: the next login is refused, the key unbound.
    op.remove_account("carol").unwrap();
    let out = batch_ssh(&env, &key, "carol:web01@127.0.0.1", &["true"]);
    assert_ne!(out.code, Some(0), "{}", stdout(&out));
    let failure = env.wait_rows(
        "SELECT reason, details FROM events WHERE type = 'auth.failure' AND \"user\" = 'carol' AND reason LIKE '%refused the key''s sign-in%'",
    );
    let reason = failure[0]["reason"].as_str().unwrap();
    assert!(reason.contains("invalid_grant"), "{reason}");
    let (code, text) = explain(&env, "web01");
    assert_eq!(code, Some(1));
    assert!(!text.contains("identity:"), "the binding is gone: {text}");
}

/// Signs carol in from a terminal and returns the screen once ssh exits.
fn refused_sign_in(op: &OidcProvider, env: &Env, key: &KeyPair) -> String {
    let tmux = interactive_ssh(env, key, "carol:web01@127.0.0.1", "echo never");
    let url = shown_url(&tmux);
    op.sign_in(&url, "carol", PASSWORD)
        .expect("the provider's own sign-in succeeds");
    let screen = tmux
        .wait_for("ssh-exited-", Duration::from_secs(60))
        .unwrap();
    assert!(!screen.contains("never"), "{screen}");
    assert!(!screen.contains("ssh-exited-0"), "{screen}");
    assert!(screen.contains("Sign-in refused"), "{screen}");
    screen
}

fn assert_refused(env: &Env, screen: &str, what: &str) {
    assert!(screen.contains(what), "{screen}");
    let rows = env.wait_rows(&format!(
        "SELECT reason FROM events WHERE type = 'auth.failure' AND \"user\" = 'carol' AND reason LIKE '%{what}%'"
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(env
        .query("SELECT 1 FROM events WHERE type = 'auth.success' AND \"user\" = 'carol'")
        .is_empty());
    let (_, text) = explain(env, "web01");
    assert!(!text.contains("identity:"), "no key was bound: {text}");
}

#[test]
fn an_id_token_for_another_client_is_refused() {
    // A provider that serves what "gatehouse" asks as client "other":
    // a genuine, well-signed token for the wrong audience.
    let (op, env, key) = start(OidcOptions {
        clients: vec![gatehouse_client(), OidcClient::new("other", "0ther")],
        client_mixup: Some(("gatehouse".into(), "other".into(), "0ther".into())),
        ..Default::default()
    });
    let screen = refused_sign_in(&op, &env, &key);
    assert_refused(&env, &screen, "not for client");
}

#[test]
fn an_expired_id_token_is_refused() {
    // The provider's clock is 15 minutes slow; its ID tokens live 5.
    let (op, env, key) = start(OidcOptions {
        clients: vec![gatehouse_client()],
        clock_skew_seconds: -900,
        ..Default::default()
    });
    let screen = refused_sign_in(&op, &env, &key);
    assert_refused(&env, &screen, "expired");
}

#[test]
fn a_role_with_require_sso_asks_the_provider_after_the_key() {
    let mut op = OidcProvider::start(&OidcOptions {
        clients: vec![gatehouse_client()],
        ..Default::default()
    })
    .unwrap();
    op.set_account("carol", carol(&["ops"])).unwrap();
    let mut dave_account = carol(&[]);
    dave_account.email = "dave@example.com".into();
    op.set_account("dave", dave_account).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dave = kit::keygen(dir.path(), "dave").expect("keygen");
    let extra = format!(
        "{}\n[[roles]]\nname = \"sso-only\"\nrequire_sso = true\n\n[[users]]\nname = \"dave\"\nkeys = [\"{}\"]\nroles = [\"dev\", \"sso-only\"]\n",
        sso_config(&op.issuer),
        dave.public_line
    );
    let env = Env::start_with(&extra);

    // dave's registered key alone is not enough.
    let out = batch_ssh(&env, &dave, "dave:web01@127.0.0.1", &["true"]);
    assert_ne!(out.code, Some(0), "{}", stdout(&out));

    // Someone else's sign-in does not log in as dave.
    let tmux = interactive_ssh(&env, &dave, "dave:web01@127.0.0.1", "echo never");
    let screen = tmux.wait_for("user_code=", T).unwrap();
    assert!(screen.contains("Sign in as dave at corp"), "{screen}");
    let url = screen
        .split_whitespace()
        .find(|w| w.contains("/device?user_code="))
        .unwrap()
        .to_string();
    op.sign_in(&url, "carol", PASSWORD).unwrap();
    let screen = tmux.wait_for("ssh-exited-", T).unwrap();
    assert!(
        screen.contains("signed in at corp as \"carol\", but the SSH username names \"dave\""),
        "{screen}"
    );
    assert!(!screen.contains("ssh-exited-0"), "{screen}");

    // dave's own sign-in: admitted with his configured roles, key bound.
    let tmux = interactive_ssh(&env, &dave, "dave:web01@127.0.0.1", "echo dave-$((2+3))");
    let screen = tmux.wait_for("user_code=", T).unwrap();
    let url = screen
        .split_whitespace()
        .find(|w| w.contains("/device?user_code="))
        .unwrap()
        .to_string();
    op.sign_in(&url, "dave", PASSWORD).unwrap();
    let screen = tmux.wait_for("ssh-exited-", T).unwrap();
    assert!(screen.contains("dave-5"), "{screen}\n{}", env.gateway_log());
    let out = batch_ssh(&env, &dave, "dave:web01@127.0.0.1", &["echo", "bound"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.query(
        "SELECT details FROM events WHERE type = 'auth.success' AND \"user\" = 'dave' ORDER BY seq",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    let d: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["method"], "publickey+sso", "{d}");
    assert_eq!(d["identity"]["email"], "dave@example.com", "{d}");
    let wrong = env.query(
        "SELECT details FROM events WHERE type = 'auth.failure' AND \"user\" = 'dave' AND reason LIKE '%as \"carol\"%'",
    );
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    let d: serde_json::Value = serde_json::from_str(wrong[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(d["method"], "sso");
    assert_eq!(d["identity"]["subject"], "carol", "{d}");
}
