//! File transfers with the real clients: sftp, scp in SFTP and legacy
//! (`-O`) modes, and rsync, all through the gateway to a real sshd.
//!
//! These programs read `alice:web01@gw:path` as host `alice`, so the
//! Gatehouse username goes in `-o User=alice:web01` (or `User` in
//! ~/.ssh/config), exactly as a user would write it.

mod common;

use std::path::Path;

use common::{Env, T};
use gatehouse_testkit as kit;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn sftp_put_get_rename_remove() {
    let env = Env::start();
    let d = env.dir.path();
    let local = d.join("local.bin");
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    std::fs::write(&local, &data).unwrap();
    let remote_dir = d.join("remote");
    std::fs::create_dir(&remote_dir).unwrap();
    let batch = format!(
        "put {local} {r}/a.bin\nrename {r}/a.bin {r}/b.bin\nget {r}/b.bin {d}/back.bin\nmkdir {r}/sub\nrm {r}/b.bin\n",
        local = local.display(),
        r = remote_dir.display(),
        d = d.display()
    );
    let (cmd, _batch_file) =
        env.alice()
            .with_user("alice:web01")
            .sftp_batch(env.port, "127.0.0.1", &batch);
    let out = kit::run(cmd, T).expect("sftp");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(std::fs::read(d.join("back.bin")).unwrap(), data);
    assert!(!remote_dir.join("b.bin").exists());
    assert!(remote_dir.join("sub").is_dir());
}

fn scp_roundtrip(env: &Env, legacy: bool) {
    let d = env.dir.path();
    let tag = if legacy { "legacy" } else { "sftp" };
    let local = d.join(format!("{tag}.bin"));
    let data = pattern(5 * 1024 * 1024 + 3, if legacy { 7 } else { 9 });
    std::fs::write(&local, &data).unwrap();
    let remote = d.join(format!("{tag}-remote.bin"));
    let back = d.join(format!("{tag}-back.bin"));
    let mut up: Vec<String> = Vec::new();
    if legacy {
        up.push("-O".into());
    }
    up.push(local.display().to_string());
    up.push(format!("127.0.0.1:{}", remote.display()));
    let up_refs: Vec<&str> = up.iter().map(String::as_str).collect();
    let out = kit::run(
        env.alice().with_user("alice:web01").scp(env.port, &up_refs),
        T,
    )
    .expect("scp up");
    assert_eq!(out.code, Some(0), "{tag} upload: {}", out.stderr);
    assert_eq!(
        std::fs::read(&remote).unwrap(),
        data,
        "{tag} upload differs"
    );

    let mut down: Vec<String> = Vec::new();
    if legacy {
        down.push("-O".into());
    }
    down.push(format!("127.0.0.1:{}", remote.display()));
    down.push(back.display().to_string());
    let down_refs: Vec<&str> = down.iter().map(String::as_str).collect();
    let out = kit::run(
        env.alice()
            .with_user("alice:web01")
            .scp(env.port, &down_refs),
        T,
    )
    .expect("scp down");
    assert_eq!(out.code, Some(0), "{tag} download: {}", out.stderr);
    assert_eq!(
        std::fs::read(&back).unwrap(),
        data,
        "{tag} download differs"
    );
}

#[test]
fn scp_in_sftp_mode_both_ways() {
    let env = Env::start();
    scp_roundtrip(&env, false);
}

#[test]
fn scp_in_legacy_mode_both_ways() {
    let env = Env::start();
    scp_roundtrip(&env, true);
    let rows = env.query("select command from commands");
    assert!(
        rows.iter()
            .any(|r| r["command"].as_str().unwrap_or("").starts_with("scp -t")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["command"].as_str().unwrap_or("").starts_with("scp -f")),
        "{rows:?}"
    );
}

#[test]
fn scp_of_a_missing_file_fails_like_openssh() {
    let env = Env::start();
    let out = kit::run(
        env.alice().with_user("alice:web01").scp(
            env.port,
            &["-O", "127.0.0.1:/nonexistent/file", "/tmp/never"],
        ),
        T,
    )
    .expect("scp");
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("No such file"), "{}", out.stderr);
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("top.txt"), b"top\n").unwrap();
    std::fs::write(root.join("a/one.bin"), pattern(200_000, 3)).unwrap();
    std::fs::write(root.join("a/b/two.bin"), pattern(1_000_000, 5)).unwrap();
}

#[test]
fn rsync_copies_a_tree_both_ways() {
    let env = Env::start();
    let d = env.dir.path();
    let src = d.join("src");
    write_tree(&src);
    let dst = d.join("dst");
    let out = kit::run(
        env.alice().with_user("alice:web01").rsync(
            env.port,
            &[
                "-a",
                &format!("{}/", src.display()),
                &format!("127.0.0.1:{}/", dst.display()),
            ],
        ),
        T,
    )
    .expect("rsync");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for f in ["top.txt", "a/one.bin", "a/b/two.bin"] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dst.join(f)).unwrap(),
            "{f}"
        );
    }
    let back = d.join("back");
    let out = kit::run(
        env.alice().with_user("alice:web01").rsync(
            env.port,
            &[
                "-a",
                &format!("127.0.0.1:{}/", dst.display()),
                &format!("{}/", back.display()),
            ],
        ),
        T,
    )
    .expect("rsync back");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        std::fs::read(back.join("a/b/two.bin")).unwrap(),
        pattern(1_000_000, 5)
    );
}

#[test]
fn sftp_and_scp_transfers_are_audited_per_file() {
    let env = Env::start();
    let d = env.dir.path();
    let local = d.join("audit-src.bin");
    std::fs::write(&local, pattern(100_000, 4)).unwrap();
    let r = d.join("audit-remote");
    std::fs::create_dir(&r).unwrap();
    let batch = format!(
        "put {l} {r}/a.bin\nrename {r}/a.bin {r}/b.bin\nmkdir {r}/sub\nrmdir {r}/sub\nrm {r}/b.bin\n-rm {r}/missing\n",
        l = local.display(),
        r = r.display()
    );
    let (cmd, _f) = env
        .alice()
        .with_user("alice:web01")
        .sftp_batch(env.port, "127.0.0.1", &batch);
    let out = kit::run(cmd, T).expect("sftp");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows(
        "select type, result, details from events where type like 'sftp.%' and type <> 'sftp.open' order by seq",
    );
    let got: Vec<(String, String, serde_json::Value)> = rows
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap_or("").to_string(),
                r["result"].as_str().unwrap_or("").to_string(),
                serde_json::from_str(r["details"].as_str().unwrap_or("{}")).unwrap_or_default(),
            )
        })
        .collect();
    // `put` may add a setstat depending on the client's options.
    let types: Vec<&str> = got
        .iter()
        .map(|g| g.0.as_str())
        .filter(|t| *t != "sftp.setstat")
        .collect();
    assert_eq!(
        types,
        vec![
            "sftp.close",
            "sftp.rename",
            "sftp.mkdir",
            "sftp.rmdir",
            "sftp.remove",
            "sftp.remove"
        ]
    );
    let close = got
        .iter()
        .find(|g| g.0 == "sftp.close")
        .expect("close event");
    assert_eq!(close.2["bytes_written"], 100_000);
    assert_eq!(close.2["path"], format!("{}/a.bin", r.display()));
    let rename = got.iter().find(|g| g.0 == "sftp.rename").expect("rename");
    assert_eq!(rename.2["target_path"], format!("{}/b.bin", r.display()));
    let removes: Vec<&str> = got
        .iter()
        .filter(|g| g.0 == "sftp.remove")
        .map(|g| g.1.as_str())
        .collect();
    assert_eq!(removes, vec!["success", "failure"]);

    // Legacy scp both ways.
    let out = kit::run(
        env.alice().with_user("alice:web01").scp(
            env.port,
            &[
                "-O",
                local.to_str().unwrap(),
                &format!("127.0.0.1:{}/", r.display()),
            ],
        ),
        T,
    )
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = env.wait_rows("select details from events where type = 'scp'");
    let v: serde_json::Value = serde_json::from_str(rows[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(v["direction"], "upload");
    assert_eq!(v["size"], 100_000);
    assert_eq!(v["path"], format!("{}/audit-src.bin", r.display()));
}
