//! What a user gets without naming a target: with a terminal, a numbered
//! menu of the targets their roles reach; without one, a gateway command
//! (`whoami`, `targets`) or the list. The menu only returns the user's
//! choice: the channel stage decides access and connects.

use gatehouse_model::escape_control;
use gatehouse_policy::{reachable, Reachable};

use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use crate::session::{fail, ChannelCtx};

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

/// Shows the menu and returns the target the user chose. None when
/// there is nothing to choose (no terminal: the list is printed) or the
/// user left; the channel is then ended.
pub(crate) async fn choose_target(
    ctx: &ChannelCtx,
    channel: &mut Channel<Msg>,
    pty: bool,
) -> Option<Reachable> {
    let targets = reachable(&ctx.who.config, &ctx.who.user);
    if !pty {
        let _ = channel
            .data_bytes(render(&ctx.who.user, &targets, "\n").into_bytes())
            .await;
        end(channel, 0).await;
        return None;
    }
    let mut text = render(&ctx.who.user, &targets, "\r\n");
    if targets.is_empty() {
        let _ = channel.data_bytes(text.into_bytes()).await;
        end(channel, 1).await;
        return None;
    }
    text.push_str("Choose a target (number or name, q to quit): ");
    let _ = channel.data_bytes(text.into_bytes()).await;
    loop {
        let Some(line) = read_line(channel).await else {
            end(channel, 0).await;
            return None;
        };
        if line == "q" || line == "quit" {
            end(channel, 0).await;
            return None;
        }
        match choose(&targets, &line) {
            Some(t) => return Some(t.clone()),
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
    }
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

/// `sessions`: the user's newest sessions, one a line.
fn own_sessions(user: &str, list: &[gatehouse_store::SessionLine]) -> String {
    if list.is_empty() {
        return format!("no sessions of {user}\n");
    }
    let mut out = String::new();
    for s in list {
        let state = match &s.end {
            Some(end) => format!("ended {end}"),
            None => "running".to_string(),
        };
        out.push_str(&escape_control(&format!(
            "{}  {}@{}  started {}  {state}",
            s.id, s.login, s.target, s.start
        )));
        out.push('\n');
    }
    out
}

/// `ssh alice@gw COMMAND`: commands of the gateway itself.
pub(crate) async fn gateway_command(ctx: ChannelCtx, channel: Channel<Msg>, raw: &[u8]) {
    let cmd = String::from_utf8_lossy(raw);
    let mut words = cmd.split_whitespace();
    match words.next() {
        Some("whoami") => {
            let roles = ctx
                .who
                .config
                .user(&ctx.who.user)
                .map(|u| u.roles.join(","))
                .unwrap_or_default();
            let _ = channel
                .data_bytes(
                    format!("{} roles={roles} mfa={}\n", ctx.who.user, ctx.who.mfa).into_bytes(),
                )
                .await;
            end(&channel, 0).await;
        }
        Some("targets") | Some("list") => {
            let targets = reachable(&ctx.who.config, &ctx.who.user);
            let _ = channel
                .data_bytes(render(&ctx.who.user, &targets, "\n").into_bytes())
                .await;
            end(&channel, 0).await;
        }
        Some("sessions") => {
            let text = match ctx.shared.store.sessions_of(&ctx.who.user, 20).await {
                Ok(list) => own_sessions(&ctx.who.user, &list),
                Err(e) => {
                    fail(
                        &channel,
                        false,
                        &format!("cannot read your sessions: {e}"),
                        1,
                    )
                    .await;
                    return;
                }
            };
            let _ = channel.data_bytes(text.into_bytes()).await;
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
                    "unknown gateway command {:?}; available: whoami, targets, sessions, requests, approve ID, deny ID [reason] (to run a command on a target, connect as USER:TARGET)",
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
        &ctx.who.user,
        &ctx.state.session_id,
        Some(&ctx.state.peer.ip().to_string()),
    );
    gatehouse_control::Control::with_trail(
        &ctx.shared.store,
        &ctx.shared.audit,
        &ctx.who.config,
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
