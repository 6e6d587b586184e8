//! `gatehouse tokens create|list|revoke`: API tokens for `/api/v1`.

use std::process::ExitCode;

use anyhow::Result;
use gatehouse_control::Control;
use gatehouse_model::{escape_control, Config};
use gatehouse_store::Store;

use crate::cli::{Format, TokensCmd};

pub async fn run(
    cmd: &TokensCmd,
    config: &Config,
    store: &Store,
    format: Format,
) -> Result<ExitCode> {
    let ops = Control::new(store, config, crate::operator::actor());
    match cmd {
        TokensCmd::Create { user, name } => {
            let t = ops.create_token(user, name).await?;
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"id": t.id, "user": user, "token": t.token})
                );
            } else {
                println!("{}", t.token);
                eprintln!(
                    "token {} for {user}: shown only this once; send it as `Authorization: Bearer TOKEN` to /api/v1 (revoke with `gatehouse tokens revoke {}`)",
                    t.id, t.id
                );
            }
        }
        TokensCmd::List { user } => {
            let list = ops.tokens(user.as_deref()).await?;
            if format == Format::Json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "user": t.user, "name": t.name,
                            "created_at": t.created_at, "created_by": t.created_by,
                            "last_used_at": t.last_used_at, "revoked_at": t.revoked_at,
                            "token_hash_prefix": t.token_hash.get(..12),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else if list.is_empty() {
                println!("no API tokens");
            } else {
                for t in list {
                    let state = match (&t.revoked_at, &t.last_used_at) {
                        (Some(r), _) => format!("revoked {r}"),
                        (None, Some(u)) => format!("last used {u}"),
                        (None, None) => "never used".into(),
                    };
                    println!(
                        "{}  {}  {}  created {} by {}  {}",
                        t.id,
                        escape_control(&t.user),
                        escape_control(&t.name),
                        t.created_at,
                        escape_control(&t.created_by),
                        state
                    );
                }
            }
        }
        TokensCmd::Revoke { id } => {
            if ops.revoke_token(id).await? {
                println!("revoked {}", escape_control(id));
            } else {
                println!("{} was revoked already", escape_control(id));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
