//! Certificates and passwords with the real OpenSSH programs: the gateway
//! signs a short-lived certificate per session that a target trusting only
//! its CA accepts; users log in with certificates from a trusted CA
//! (`ssh-keygen -s`), whose principals, validity and critical options are
//! honoured; passwords are checked against argon2id hashes, alone or
//! followed by a TOTP code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{gatehouse_bin, stdout, Env, T};
use gatehouse_testkit::{self as kit, KeyPair, Sshd};

fn target_block(name: &str, sshd: &Sshd, login: &str) -> String {
    format!(
        r#"
[[targets]]
name = "{name}"
address = "{}"
labels = {{ env = "test" }}
host_key = "{}"
default_login = "{login}"
"#,
        sshd.address(),
        sshd.host_key_fingerprint
    )
}

#[test]
fn a_target_that_trusts_only_the_gateway_ca_accepts_its_session_certificate() {
    let keys = tempfile::tempdir().unwrap();
    kit::keygen(keys.path(), "user_ca").unwrap();
    // No authorized_keys at all: only certificates from the CA get in.
    let ca_only = Sshd::start_with(
        &[],
        &format!(
            "TrustedUserCAKeys {}\n",
            keys.path().join("user_ca.pub").display()
        ),
    )
    .unwrap();
    let login = kit::current_login();
    let env = Env::start_full(
        &target_block("ca01", &ca_only, &login),
        &format!(
            "ca_key = \"{}\"\ncert_validity = \"2m\"",
            keys.path().join("user_ca").display()
        ),
    );

    let out = env.ssh("alice:ca01@127.0.0.1", &["echo", "via-$((6*7))-cert"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, ca_only.log());
    assert!(stdout(&out).contains("via-42-cert"), "{}", stdout(&out));

    // The target's own log names the Gatehouse user and session.
    let rows = env.wait_rows("select session_id from sessions where target = 'ca01'");
    let sid = rows[0]["session_id"].as_str().unwrap().to_string();
    let log = ca_only.log();
    assert!(
        log.contains(&format!("ID gatehouse user=alice session={sid}")),
        "{log}"
    );
    assert!(log.contains("ED25519-CERT"), "{log}");

    // A target that knows only the static key still works (fallback).
    let out = env.ssh("alice:web01@127.0.0.1", &["echo", "via-key"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(stdout(&out).contains("via-key"));
}

/// Signs `key`'s public half with `ca` as `ssh-keygen -s` does; returns
/// the certificate file.
fn sign(dir: &Path, ca: &KeyPair, key: &KeyPair, name: &str, args: &[&str]) -> PathBuf {
    let pub_copy = dir.join(format!("{name}.pub"));
    std::fs::write(&pub_copy, format!("{}\n", key.public_line)).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(&ca.private)
        .args(args)
        .arg(&pub_copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(format!("{name}-cert.pub"))
}

fn ssh_with_cert(env: &Env, key: &KeyPair, cert: &Path, args: &[&str]) -> kit::Output {
    let mut cmd = Command::new("ssh");
    cmd.args(env.client(key).opts())
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args(["-p", &env.port.to_string()])
        .args(args.iter().take_while(|a| a.starts_with('-')))
        .arg("carol:web01@127.0.0.1")
        .args(args.iter().skip_while(|a| a.starts_with('-')));
    kit::run(cmd, T).unwrap()
}

#[test]
fn user_certificates_from_a_trusted_ca_with_principals_validity_and_options() {
    let keys = tempfile::tempdir().unwrap();
    let ca = kit::keygen(keys.path(), "ca").unwrap();
    let rogue_ca = kit::keygen(keys.path(), "rogue_ca").unwrap();
    let carol = kit::keygen(keys.path(), "carol").unwrap();
    let env = Env::start_with(&format!(
        r#"
[[users]]
name = "carol"
roles = ["dev"]
principals = ["carol@corp"]

[auth]
trusted_user_ca_keys = ["{}"]
"#,
        ca.public_line
    ));
    let d = keys.path();
    let ok = |out: &kit::Output, want: &str| {
        assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
        assert!(stdout(out).contains(want), "{}", stdout(out));
    };
    let refused = |out: &kit::Output| {
        assert_eq!(out.code, Some(255), "{}", stdout(out));
        assert!(!stdout(out).contains("should-not-run"));
    };

    // carol has no keys in the config: only certificates let her in.
    let good = sign(
        d,
        &ca,
        &carol,
        "good",
        &["-I", "carol-laptop", "-n", "carol", "-V", "-5m:+10m"],
    );
    ok(
        &ssh_with_cert(&env, &carol, &good, &["echo", "cert-$((1+1))"]),
        "cert-2",
    );
    let rows =
        env.wait_rows("select details from events where type = 'auth.success' and user = 'carol'");
    let details: serde_json::Value =
        serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["method"], "certificate");
    assert_eq!(details["certificate"]["key_id"], "carol-laptop");

    // A principal mapped to carol in the config.
    let alias = sign(
        d,
        &ca,
        &carol,
        "alias",
        &["-I", "carol-corp", "-n", "carol@corp"],
    );
    ok(
        &ssh_with_cert(&env, &carol, &alias, &["echo", "alias-ok"]),
        "alias-ok",
    );

    // Someone else's principal.
    let other = sign(d, &ca, &carol, "other", &["-I", "mallory", "-n", "mallory"]);
    refused(&ssh_with_cert(
        &env,
        &carol,
        &other,
        &["echo", "should-not-run"],
    ));
    env.wait_rows("select id from events where type = 'auth.failure' and user = 'carol' and reason like '%is for [\"mallory\"]%'");

    // Expired.
    let expired = sign(
        d,
        &ca,
        &carol,
        "expired",
        &["-I", "old", "-n", "carol", "-V", "20200101:20200102"],
    );
    refused(&ssh_with_cert(
        &env,
        &carol,
        &expired,
        &["echo", "should-not-run"],
    ));

    // Signed by a CA the gateway does not trust.
    let rogue = sign(
        d,
        &rogue_ca,
        &carol,
        "rogue",
        &["-I", "rogue", "-n", "carol"],
    );
    refused(&ssh_with_cert(
        &env,
        &carol,
        &rogue,
        &["echo", "should-not-run"],
    ));
    env.wait_rows("select id from events where type = 'auth.failure' and user = 'carol' and reason like '%not in auth.trusted_user_ca_keys%'");

    // source-address: only from elsewhere.
    let far = sign(
        d,
        &ca,
        &carol,
        "far",
        &[
            "-I",
            "far",
            "-n",
            "carol",
            "-O",
            "source-address=10.9.9.0/24",
        ],
    );
    refused(&ssh_with_cert(
        &env,
        &carol,
        &far,
        &["echo", "should-not-run"],
    ));
    env.wait_rows("select id from events where type = 'auth.failure' and user = 'carol' and reason like '%may only be used from 10.9.9.0/24%'");
    let near = sign(
        d,
        &ca,
        &carol,
        "near",
        &[
            "-I",
            "near",
            "-n",
            "carol",
            "-O",
            "source-address=127.0.0.0/8",
        ],
    );
    ok(
        &ssh_with_cert(&env, &carol, &near, &["echo", "near-ok"]),
        "near-ok",
    );

    // force-command runs instead of what was asked.
    let forced = sign(
        d,
        &ca,
        &carol,
        "forced",
        &[
            "-I",
            "forced",
            "-n",
            "carol",
            "-O",
            "force-command=echo forced-by-$((2*3))",
        ],
    );
    let out = ssh_with_cert(&env, &carol, &forced, &["echo", "asked-for"]);
    ok(&out, "forced-by-6");
    assert!(!stdout(&out).contains("asked-for"));

    // no-pty: the terminal is refused (and ssh -tt, which insists on one,
    // gives up); without -t the command runs.
    let nopty = sign(
        d,
        &ca,
        &carol,
        "nopty",
        &["-I", "nopty", "-n", "carol", "-O", "no-pty"],
    );
    let out = ssh_with_cert(&env, &carol, &nopty, &["-tt", "tty"]);
    assert!(
        out.stderr.contains("PTY allocation request failed"),
        "{}",
        out.stderr
    );
    assert!(!stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
    ok(
        &ssh_with_cert(&env, &carol, &nopty, &["echo", "nopty-ok"]),
        "nopty-ok",
    );
    let withpty = sign(d, &ca, &carol, "withpty", &["-I", "withpty", "-n", "carol"]);
    let out = ssh_with_cert(&env, &carol, &withpty, &["-tt", "tty"]);
    assert!(
        stdout(&out).contains("/dev/pts/"),
        "{}\n{}",
        stdout(&out),
        out.stderr
    );
}

/// ssh answering its prompts through SSH_ASKPASS: the password, or the
/// TOTP code in `code_file` when asked for a verification code.
fn ssh_with_password(env: &Env, user: &str, password: &str, code_file: &Path) -> kit::Output {
    let script = env.dir.path().join(format!("askpass-{user}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  *erification*) cat '{}' ;;\n  *) printf '%s\\n' '{password}' ;;\nesac\n",
            code_file.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &env.port.to_string(),
        &format!("{user}:web01@127.0.0.1"),
        "echo",
        "pw-$((3*3))",
    ])
    .env("SSH_ASKPASS", &script)
    .env("SSH_ASKPASS_REQUIRE", "force")
    .env("DISPLAY", ":0");
    kit::run(cmd, T).unwrap()
}

fn hash_password(password: &str) -> String {
    let mut child = Command::new(gatehouse_bin())
        .args(["users", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

#[test]
fn passwords_are_checked_against_argon2id_hashes_and_can_demand_totp() {
    let dave = hash_password("dave long passphrase");
    let erin = hash_password("erin-secret");
    let env = Env::start_with(&format!(
        r#"
[[roles]]
name = "secure"
allow = [{{ targets = {{ env = "test" }}, logins = ["*"] }}]
require_mfa = true

[[users]]
name = "dave"
roles = ["dev"]
password_hash = '{dave}'

[[users]]
name = "erin"
roles = ["secure"]
password_hash = '{erin}'
"#
    ));
    let no_code = env.dir.path().join("no-code");
    std::fs::write(&no_code, "\n").unwrap();

    let out = ssh_with_password(&env, "dave", "dave long passphrase", &no_code);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert!(stdout(&out).contains("pw-9"));
    let rows =
        env.wait_rows("select details from events where type = 'auth.success' and user = 'dave'");
    assert!(rows[0]["details"]
        .as_str()
        .unwrap()
        .contains("\"password\""));

    let out = ssh_with_password(&env, "dave", "wrong", &no_code);
    assert_eq!(out.code, Some(255));
    assert!(!stdout(&out).contains("pw-9"));
    env.wait_rows("select id from events where type = 'auth.failure' and user = 'dave' and reason = 'wrong password'");

    // alice has no password: a password is never enough for her.
    let out = ssh_with_password(&env, "alice", "anything", &no_code);
    assert_eq!(out.code, Some(255));

    // erin's role demands a second factor after the password.
    let out = env.gatehouse(&["--format", "json", "users", "totp-enroll", "erin"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = gatehouse_auth::totp::base32_decode(v["secret"].as_str().unwrap()).unwrap();
    let out = ssh_with_password(&env, "erin", "erin-secret", &no_code);
    assert_eq!(out.code, Some(255), "the password alone is not enough");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code_file = env.dir.path().join("code");
    std::fs::write(&code_file, gatehouse_auth::totp::code(&secret, now) + "\n").unwrap();
    let out = ssh_with_password(&env, "erin", "erin-secret", &code_file);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert!(stdout(&out).contains("pw-9"));
    let rows = env
        .wait_rows("select mfa, details from events where type = 'auth.success' and user = 'erin'");
    assert_eq!(rows[0]["mfa"], 1);
    assert!(rows[0]["details"]
        .as_str()
        .unwrap()
        .contains("password+totp"));

    // A hash that is not argon2id fails `gatehouse check`, naming the user.
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        &erin,
        "$2b$12$abcdefghijklmnopqrstuu5Hm1hX1GSX8Sb0qVJGxL1lXqWS1rFoW",
    );
    std::fs::write(&env.config_path, text).unwrap();
    let out = env.gatehouse(&["check"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("users[3].password_hash"),
        "{}",
        out.stderr
    );
}
