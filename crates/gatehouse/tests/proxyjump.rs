//! `ProxyJump` through the gateway, written as a user would in
//! ~/.ssh/config: the gateway serves the inner connection itself, so
//! policy, audit and the usual tools (ssh, scp, rsync) all work unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stdout, Env, T};
use gatehouse_testkit as kit;

/// An ssh_config with the gateway as jump host and web01/prod01/nosuch
/// behind it.
fn ssh_config(env: &Env) -> PathBuf {
    let key = env.alice.private.display();
    let common = format!(
        "    IdentityFile {key}\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n"
    );
    let mut text = format!(
        "Host gw\n    HostName 127.0.0.1\n    Port {}\n    User alice\n{common}",
        env.port
    );
    for host in ["web01", "prod01", "nosuch"] {
        text.push_str(&format!(
            "Host {host}\n    ProxyJump gw\n    User {}\n{common}",
            env.login
        ));
    }
    let path = env.dir.path().join("ssh_config");
    std::fs::write(&path, text).unwrap();
    path
}

fn ssh(config: &Path, host: &str, cmd: &str) -> kit::Output {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).arg(host).arg(cmd);
    kit::run(c, T).expect("ssh")
}

#[test]
fn ssh_through_proxyjump_is_authorised_and_audited() {
    let env = Env::start();
    let config = ssh_config(&env);
    let out = ssh(&config, "web01", "echo jumped; exit 5");
    assert_eq!(out.code, Some(5), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(stdout(&out), "jumped\n");
    let rows = env.wait_rows(
        "select user, target, login from commands where command = 'echo jumped; exit 5'",
    );
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["target"], "web01");
    assert_eq!(rows[0]["login"], env.login.as_str());

    // prod01 is not allowed for alice: the inner session is refused.
    let out = ssh(&config, "prod01", "true");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);

    // A host that is not a target is not reachable: no open proxy.
    let out = ssh(&config, "nosuch", "true");
    assert_eq!(out.code, Some(255));
    // OpenSSH reports a refused -W channel as "stdio forwarding failed".
    assert!(out.stderr.contains("forwarding failed"), "{}", out.stderr);
    let rows = env
        .wait_rows("select reason from events where type = 'access.denied' and target = 'nosuch'");
    assert!(rows[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("ProxyJump"));
}

#[test]
fn scp_and_rsync_work_transparently_through_proxyjump() {
    let env = Env::start();
    let config = ssh_config(&env);
    let d = env.dir.path();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("src.bin"), &data).unwrap();
    let out = kit::run(
        {
            let mut c = Command::new("scp");
            c.arg("-F")
                .arg(&config)
                .arg(d.join("src.bin"))
                .arg(format!("web01:{}", d.join("copied.bin").display()));
            c
        },
        T,
    )
    .expect("scp");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(std::fs::read(d.join("copied.bin")).unwrap(), data);

    std::fs::create_dir_all(d.join("tree/sub")).unwrap();
    std::fs::write(d.join("tree/sub/f.txt"), b"rsynced\n").unwrap();
    let out = kit::run(
        {
            let mut c = Command::new("rsync");
            c.arg("-a")
                .arg("-e")
                .arg(format!("ssh -F {}", config.display()))
                .arg(format!("{}/", d.join("tree").display()))
                .arg(format!("web01:{}/", d.join("tree-copy").display()));
            c
        },
        T,
    )
    .expect("rsync");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        std::fs::read(d.join("tree-copy/sub/f.txt")).unwrap(),
        b"rsynced\n"
    );
}
