//! What a user gets without naming a target: with a terminal, a numbered
//! menu of the targets their roles reach; without one, a gateway command
//! (`whoami`, `targets`) or the list.

use gatehouse_model::{EventType, Outcome, Severity};
use gatehouse_policy::{decide, reachable, Reachable};

use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use crate::bridge::{fail, run_on_target, ChannelCtx, Request, Setup};

/// The menu text; numbered from 1.
pub fn render(user: &str, targets: &[Reachable], eol: &str) -> String {
    let mut out = format!("Gatehouse: targets for {user}{eol}");
    if targets.is_empty() {
        out.push_str(&format!(
            "  (none: no role of yours allows any target; ask an administrator){eol}"
        ));
        return out;
    }
    let width = targets.iter().map(|t| t.target.len()).max().unwrap_or(0);
    for (i, t) in targets.iter().enumerate() {
        out.push_str(&format!(
            "  {:>2}) {:<width$}  {}@{}  {}{eol}",
            i + 1,
            t.target,
            t.login,
            t.target,
            t.labels
        ));
    }
    out
}

/// Resolves a menu answer: a number from the list or a target name.
pub fn choose<'a>(targets: &'a [Reachable], answer: &str) -> Option<&'a Reachable> {
    let answer = answer.trim();
    if let Ok(n) = answer.parse::<usize>() {
        return n.checked_sub(1).and_then(|i| targets.get(i));
    }
    targets.iter().find(|t| t.target == answer)
}

pub(crate) async fn run(mut ctx: ChannelCtx, mut channel: Channel<Msg>, setup: Setup) {
    let targets = reachable(&ctx.auth.config, &ctx.auth.user);
    if setup.pty.is_none() {
        let _ = channel
            .data_bytes(render(&ctx.auth.user, &targets, "\n").into_bytes())
            .await;
        end(&channel, 0).await;
        return;
    }
    let mut text = render(&ctx.auth.user, &targets, "\r\n");
    if targets.is_empty() {
        let _ = channel.data_bytes(text.into_bytes()).await;
        end(&channel, 1).await;
        return;
    }
    text.push_str("Choose a target (number or name, q to quit): ");
    let _ = channel.data_bytes(text.into_bytes()).await;
    let chosen = loop {
        let Some(line) = read_line(&mut channel).await else {
            end(&channel, 0).await;
            return;
        };
        if line == "q" || line == "quit" {
            end(&channel, 0).await;
            return;
        }
        match choose(&targets, &line) {
            Some(t) => break t.clone(),
            None => {
                let _ = channel
                    .data_bytes(
                        format!(
                            "no such target {line:?}; choose a number from 1 to {}: ",
                            targets.len()
                        )
                        .into_bytes(),
                    )
                    .await;
            }
        }
    };
    let decision = decide(&ctx.auth.config, &ctx.auth.user, &chosen.target, None);
    ctx.auth.target = Some(chosen.target.clone());
    ctx.auth.login = decision.login.clone();
    ctx.auth.decision = Some(decision.clone());
    if let (Some(need), Some(login)) = (&decision.approval, &decision.login) {
        let granted = ctx
            .shared
            .store
            .active_grant(&ctx.auth.user, &chosen.target, login)
            .await
            .unwrap_or(false);
        if !granted {
            ctx.auth.approval = Some(need.clone());
        }
    }
    if let Ok(mut a) = ctx.state.auth.lock() {
        *a = Some(ctx.auth.clone());
    }
    if !decision.allowed {
        let node = ctx.shared.node();
        let ev = ctx
            .state
            .event(
                &ctx.auth,
                EventType::ACCESS_DENIED,
                Severity::Warn,
                Outcome::Denied,
                &node,
            )
            .reason(decision.reason.clone());
        let _ = ctx
            .shared
            .audit
            .record(ev, ctx.auth.config.audit.on_failure)
            .await;
        fail(
            &channel,
            true,
            &crate::server::denial_shown(&ctx.auth.config, &decision),
            1,
        )
        .await;
        return;
    }
    let _ = channel
        .data_bytes(
            format!("connecting to {} as {}...\r\n", chosen.target, chosen.login).into_bytes(),
        )
        .await;
    run_on_target(ctx, channel, setup, Request::Shell).await;
}

/// Reads one line typed in a raw-mode terminal, echoing it.
async fn read_line(channel: &mut Channel<Msg>) -> Option<String> {
    let mut line = String::new();
    loop {
        match channel.wait().await? {
            ChannelMsg::Data { data } => {
                for &b in data.iter() {
                    match b {
                        b'\r' | b'\n' => {
                            let _ = channel.data_bytes(&b"\r\n"[..]).await;
                            return Some(line.trim().to_string());
                        }
                        0x03 | 0x04 => return None,
                        0x7f | 0x08 if line.pop().is_some() => {
                            let _ = channel.data_bytes(&b"\x08 \x08"[..]).await;
                        }
                        0x20..=0x7e if line.len() < 128 => {
                            line.push(b as char);
                            let _ = channel.data_bytes(vec![b]).await;
                        }
                        _ => {}
                    }
                }
            }
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

async fn end(channel: &Channel<Msg>, code: u32) {
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// `ssh alice@gw COMMAND`: commands of the gateway itself.
pub(crate) async fn gateway_command(ctx: ChannelCtx, channel: Channel<Msg>, raw: &[u8]) {
    let cmd = String::from_utf8_lossy(raw);
    let mut words = cmd.split_whitespace();
    match words.next() {
        Some("whoami") => {
            let roles = ctx
                .auth
                .config
                .user(&ctx.auth.user)
                .map(|u| u.roles.join(","))
                .unwrap_or_default();
            let _ = channel
                .data_bytes(
                    format!("{} roles={roles} mfa={}\n", ctx.auth.user, ctx.auth.mfa).into_bytes(),
                )
                .await;
            end(&channel, 0).await;
        }
        Some("targets") | Some("list") => {
            let targets = reachable(&ctx.auth.config, &ctx.auth.user);
            let _ = channel
                .data_bytes(render(&ctx.auth.user, &targets, "\n").into_bytes())
                .await;
            end(&channel, 0).await;
        }
        Some("requests") => {
            let mut out = String::new();
            let ops = control(&ctx);
            match ops.decidable_requests().await {
                Ok(list) => {
                    for a in list {
                        out.push_str(&format!(
                            "{}  {} wants {}@{}  (since {})\n",
                            a.id, a.user, a.login, a.target, a.requested_at
                        ));
                    }
                }
                Err(e) => {
                    fail(&channel, false, &e.to_string(), 1).await;
                    return;
                }
            }
            if out.is_empty() {
                out.push_str("no pending requests you may decide\n");
            }
            let _ = channel.data_bytes(out.into_bytes()).await;
            end(&channel, 0).await;
        }
        Some(verb @ ("approve" | "deny")) => {
            let Some(id) = words.next() else {
                fail(
                    &channel,
                    false,
                    &format!("usage: {verb} REQUEST-ID [reason]"),
                    2,
                )
                .await;
                return;
            };
            let reason: Vec<&str> = words.collect();
            let reason = (!reason.is_empty()).then(|| reason.join(" "));
            match control(&ctx)
                .decide_approval(id, verb == "approve", reason)
                .await
            {
                Ok(decided) => {
                    let text = format!("{}\n", decided.summary());
                    let _ = channel.data_bytes(text.into_bytes()).await;
                    end(&channel, 0).await;
                }
                Err(e) => fail(&channel, false, &e.to_string(), 1).await,
            }
        }
        _ => {
            fail(
                &channel,
                false,
                &format!(
                    "unknown gateway command {:?}; available: whoami, targets, requests, approve ID, deny ID [reason] (to run a command on a target, connect as USER:TARGET)",
                    cmd.chars().take(80).collect::<String>()
                ),
                2,
            )
            .await;
        }
    }
}

/// The control layer, acting as this session's user.
fn control(ctx: &ChannelCtx) -> gatehouse_control::Control<'_> {
    let actor = gatehouse_control::Actor::user_in_session(
        &ctx.auth.user,
        &ctx.state.session_id,
        Some(&ctx.state.peer.ip().to_string()),
    );
    gatehouse_control::Control::with_trail(
        &ctx.shared.store,
        &ctx.shared.audit,
        &ctx.auth.config,
        actor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str) -> Reachable {
        Reachable {
            target: t.into(),
            login: "deploy".into(),
            labels: "env=prod".into(),
        }
    }

    #[test]
    fn menu_is_numbered_and_choices_resolve() {
        let list = vec![r("web01"), r("db01")];
        let text = render("alice", &list, "\n");
        assert!(text.contains(" 1) web01"), "{text}");
        assert!(text.contains(" 2) db01"), "{text}");
        assert_eq!(choose(&list, "2").map(|t| t.target.as_str()), Some("db01"));
        assert_eq!(
            choose(&list, "web01").map(|t| t.target.as_str()),
            Some("web01")
        );
        assert!(choose(&list, "0").is_none());
        assert!(choose(&list, "3").is_none());
        assert!(choose(&list, "nope").is_none());
    }
}
