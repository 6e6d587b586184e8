//! `gatehouse users ...`: locks and second factors. Users themselves are
//! declared in the config; their runtime state lives in the store.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_control::Control;
use gatehouse_model::{escape_control, parse_duration, Config};
use gatehouse_store::Store;

use crate::cli::Format;
pub use crate::cli::UsersCmd;

/// `users hash-password`: the first line of stdin (a terminal prompt when
/// stdin is one), hashed with argon2id.
pub fn hash_password(format: Format) -> Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (echoed): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!(
            "empty password; pipe it in, e.g. `printf %s \"$PW\" | gatehouse users hash-password`"
        );
    }
    let hash = gatehouse_auth::password::hash(password)?;
    match format {
        Format::Json => println!("{}", serde_json::json!({ "password_hash": hash })),
        _ => println!("{hash}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn known(config: &Config, user: &str) -> Result<()> {
    if config.user(user).is_none() {
        bail!("unknown user {user:?}; users are declared in the config with [[users]]");
    }
    Ok(())
}

pub async fn run(
    cmd: &UsersCmd,
    config: &Config,
    store: &Store,
    format: Format,
) -> Result<ExitCode> {
    match cmd {
        UsersCmd::List => {
            let mut rows = Vec::new();
            for u in &config.users {
                let mfa = store.totp(&u.name).await?.is_some();
                let lock = store.user_lock(&u.name).await?;
                rows.push(serde_json::json!({
                    "user": u.name, "roles": u.roles.join(","), "keys": u.keys.len(),
                    "totp": mfa, "locked": lock.as_ref().map(|l| l.reason.clone()),
                }));
            }
            if format == Format::Json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<20} {:<30} {:>4} {:<5} locked",
                    "user", "roles", "keys", "totp"
                );
                for r in rows {
                    println!(
                        "{:<20} {:<30} {:>4} {:<5} {}",
                        escape_control(r["user"].as_str().unwrap_or("")),
                        escape_control(r["roles"].as_str().unwrap_or("")),
                        r["keys"],
                        r["totp"],
                        escape_control(r["locked"].as_str().unwrap_or("-"))
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::Show { user } => {
            known(config, user)?;
            let u = config.user(user).context("unknown user")?;
            let lock = store.user_lock(user).await?;
            let v = serde_json::json!({
                "user": u.name, "roles": u.roles, "keys": u.keys,
                "totp": store.totp(user).await?.is_some(),
                "locked": lock.map(|l| serde_json::json!({"reason": l.reason, "until": l.until, "by": l.by})),
                "targets": gatehouse_policy::reachable(config, user).iter().map(|r| format!("{}@{}", r.login, r.target)).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                if format == Format::Json {
                    v.to_string()
                } else {
                    serde_json::to_string_pretty(&v)?
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::Lock { user, reason, ttl } => {
            let ttl = ttl.as_deref().map(parse_duration).transpose()?;
            let ops = Control::new(store, config, crate::operator::actor());
            let locked = ops.lock_user(user, reason, ttl).await?;
            wait_for_kills(store, &locked.ending).await?;
            println!(
                "locked {user}; ended {} live session(s)",
                locked.ending.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::Unlock { user } => {
            let ops = Control::new(store, config, crate::operator::actor());
            if ops.unlock_user(user).await? {
                println!("unlocked {user}");
            } else {
                println!("{user} was not locked");
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::TotpEnroll { user } => {
            let ops = Control::new(store, config, crate::operator::actor());
            let e = ops.enroll_totp(user).await?;
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"user": user, "uri": e.uri, "secret": e.secret_base32})
                );
            } else {
                if let Some(qr) = gatehouse_auth::totp::qr_text(&e.uri) {
                    print!("{qr}");
                }
                println!("{}", e.uri);
                println!("Scan the code (or enter the secret) in an authenticator app; {user} will be asked for a code after their key.");
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::HashPassword => hash_password(format),
        UsersCmd::TotpReset { user } => {
            let ops = Control::new(store, config, crate::operator::actor());
            if ops.reset_totp(user).await? {
                println!("removed the authenticator of {user}");
            } else {
                println!("{user} had no authenticator");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Waits (up to 3 s) for the gateway to end the sessions a lock asked to
/// end, so that the command's output is true when it returns.
async fn wait_for_kills(store: &Store, sessions: &[String]) -> Result<()> {
    for _ in 0..30 {
        let pending = store.pending_kills().await?;
        if sessions.is_empty() || !pending.iter().any(|k| sessions.contains(&k.session_id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
