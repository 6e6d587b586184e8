//! `gatehouse users ...`: locks and second factors. Users themselves are
//! declared in the config; their runtime state lives in the store.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_model::{
    escape_control, parse_duration, Config, EventType, NewEvent, Outcome, Severity,
};
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

fn operator() -> String {
    crate::operator::current().name
}

fn known(config: &Config, user: &str) -> Result<()> {
    if config.user(user).is_none() {
        bail!("unknown user {user:?}; users are declared in the config with [[users]]");
    }
    Ok(())
}

async fn audit(
    store: &Store,
    config: &Config,
    kind: &str,
    user: &str,
    reason: Option<String>,
    details: serde_json::Value,
) -> Result<()> {
    let mut ev = NewEvent::new(kind, Severity::Warn, Outcome::Success, &config.server.node)
        .user(user)
        .details(crate::operator::current().annotate(details));
    ev.reason = reason;
    store
        .append(&ev)
        .await
        .context("cannot write the audit event, so nothing was changed")?;
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
            known(config, user)?;
            let until = match ttl {
                Some(t) => {
                    let d = parse_duration(t)?;
                    Some(gatehouse_model::event::format_time(
                        chrono::Utc::now() + chrono::Duration::from_std(d)?,
                    ))
                }
                None => None,
            };
            audit(
                store,
                config,
                EventType::USER_LOCKED,
                user,
                Some(reason.clone()),
                serde_json::json!({"by": operator(), "until": until}),
            )
            .await?;
            store
                .lock_user(user, reason, until.as_deref(), &operator())
                .await?;
            // End the user's live sessions through the gateway's kill path.
            let live = store
                .query_readonly(&format!(
                    "SELECT session_id FROM sessions WHERE \"user\" = '{}' AND end_time IS NULL",
                    user.replace('\'', "''")
                ))
                .await?;
            let mut ended = 0;
            for row in &live.rows {
                if let Some(serde_json::Value::String(sid)) = row.first() {
                    store
                        .request_kill(sid, &format!("user locked: {reason}"), &operator())
                        .await?;
                    ended += 1;
                }
            }
            for _ in 0..30 {
                let pending = store.pending_kills().await?;
                if pending.is_empty() || ended == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("locked {user}; ended {ended} live session(s)");
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::Unlock { user } => {
            known(config, user)?;
            audit(
                store,
                config,
                EventType::USER_UNLOCKED,
                user,
                None,
                serde_json::json!({"by": operator()}),
            )
            .await?;
            if store.unlock_user(user).await? {
                println!("unlocked {user}");
            } else {
                println!("{user} was not locked");
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::TotpEnroll { user } => {
            known(config, user)?;
            let sbox = gatehouse_auth::SecretBox::load_or_create(&config.auth.secrets_key)?;
            let secret = gatehouse_auth::random_bytes(20)?;
            let sealed = sbox.seal(&secret)?;
            if !store.enroll_totp(user, &sealed).await? {
                bail!("{user} already has an authenticator; run `gatehouse users totp-reset {user}` first");
            }
            audit(
                store,
                config,
                EventType::MFA_ENROLLED,
                user,
                None,
                serde_json::json!({"by": operator(), "method": "totp"}),
            )
            .await?;
            let uri = gatehouse_auth::totp::uri(user, &secret);
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"user": user, "uri": uri, "secret": gatehouse_auth::totp::base32(&secret)})
                );
            } else {
                if let Some(qr) = gatehouse_auth::totp::qr_text(&uri) {
                    print!("{qr}");
                }
                println!("{uri}");
                println!("Scan the code (or enter the secret) in an authenticator app; {user} will be asked for a code after their key.");
            }
            Ok(ExitCode::SUCCESS)
        }
        UsersCmd::HashPassword => hash_password(format),
        UsersCmd::TotpReset { user } => {
            known(config, user)?;
            audit(
                store,
                config,
                EventType::MFA_RESET,
                user,
                None,
                serde_json::json!({"by": operator()}),
            )
            .await?;
            if store.reset_totp(user).await? {
                println!("removed the authenticator of {user}");
            } else {
                println!("{user} had no authenticator");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
