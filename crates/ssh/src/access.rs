//! The access decision: where a user may go (policy, a grant in force,
//! the `access.denied` event when refused), and the just-in-time approval
//! wait when policy asks for one.

use std::time::Duration;

use gatehouse_model::{Config, EventType, Outcome, Severity};
use gatehouse_policy::{ApprovalNeed, Decision};
use gatehouse_store::ApprovalState;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use crate::session::{fail, Approval, ChannelCtx, Destination, Events, Identity, Shared};

/// What policy says about `target` (and `login`, or the default one) for
/// this user. Nothing is written yet: [`admit`] does that.
pub(crate) fn decide(who: &Identity, target: &str, login: Option<&str>) -> Destination {
    let decision = gatehouse_policy::decide(&who.config, &who.user, target, login);
    Destination {
        target: Some(target.to_string()),
        login: decision.login.clone().or(login.map(str::to_string)),
        decision: Some(decision),
        refusal: None,
        approval: None,
    }
}

/// Settles a decided destination: refused ones get their `access.denied`
/// event and the text the user is shown; ones that need an approval need
/// none when a grant is in force.
pub(crate) async fn admit(
    shared: &Shared,
    events: &Events,
    who: &Identity,
    dest: &mut Destination,
) {
    let Some(d) = dest.decision.clone() else {
        return;
    };
    if !d.allowed {
        dest.refusal = Some(denial_shown(&who.config, &d));
        let ev = events
            .event(EventType::ACCESS_DENIED, Severity::Warn, Outcome::Denied)
            .reason(d.reason.clone())
            .details(serde_json::json!({
                "rule": d.rule.as_ref().map(|r| r.to_string()),
            }));
        if let Err(e) = events.gate(ev).await {
            dest.refusal = Some(e.to_string());
        }
    } else if let Some(need) = &d.approval {
        // A grant in force lets the user straight in; otherwise the
        // session waits for a decision (`wait_for_approval`).
        let login = d.login.clone().unwrap_or_default();
        let target = dest.target.clone().unwrap_or_default();
        let granted = shared
            .store
            .active_grant(&who.user, &target, &login)
            .await
            .unwrap_or(false);
        if !granted {
            dest.approval = Some(need.clone());
        }
    }
}

/// Resolves a destination chosen after authentication (the menu): the
/// decision, a grant in force, `access.denied` when refused. The channel
/// context then goes there.
pub(crate) async fn resolve(ctx: &mut ChannelCtx, target: &str) {
    let mut dest = decide(&ctx.who, target, None);
    let events = Events::new(&ctx.shared, &ctx.state, &ctx.who, &dest);
    admit(&ctx.shared, &events, &ctx.who, &mut dest).await;
    ctx.go_to(dest);
}

/// What a refused user is told. A target that does not exist reads like
/// one their roles do not allow, so that trying names does not map the
/// gateway's targets; the event keeps the precise reason.
pub(crate) fn denial_shown(config: &Config, d: &Decision) -> String {
    if config.target(&d.target).is_some() {
        return format!("access denied: {}", d.reason);
    }
    let user = &d.user;
    let target = &d.target;
    match &d.login {
        None => {
            format!("access denied: no role of user {user:?} allows any login on target {target:?}")
        }
        Some(login) => {
            let roles = config
                .user(user)
                .map(|u| u.roles.join(", "))
                .unwrap_or_default();
            let roles = if roles.is_empty() {
                "none".to_string()
            } else {
                roles
            };
            format!(
                "access denied: no role of user {user:?} allows login {login:?} on target {target:?} (roles: {roles})"
            )
        }
    }
}

/// May this connection forward ports (`ssh -L` / `ssh -R`)?
pub(crate) fn forwarding_allowed(who: &Identity, dest: &Destination) -> bool {
    dest.open()
        && dest.decision.as_ref().is_some_and(|d| d.port_forwarding)
        && who.permit_port_forwarding()
}

/// Just-in-time approval: files a request (once per connection), tells
/// the user whom to ask, and waits for a decision, the timeout, or the
/// user giving up. True when granted.
pub(crate) async fn wait_for_approval(
    ctx: &ChannelCtx,
    channel: &mut Channel<Msg>,
    pty: bool,
    eof: &mut bool,
) -> bool {
    let Some(need) = ctx.dest.approval.clone() else {
        return true;
    };
    let id = match file_request(ctx, channel, pty, &need).await {
        Filed::Granted => return true,
        Filed::Failed => return false,
        Filed::Waiting(id) => id,
    };
    let eol = if pty { "\r\n" } else { "\n" };
    let approvers = need.approvers.join(",");
    let _ = channel
        .extended_data_bytes(
            1,
            format!(
                "gatehouse: waiting for approval of request {id} (ask a member of {approvers}: ssh APPROVER@gateway approve {id}){eol}"
            )
            .into_bytes(),
        )
        .await;
    let wait = ctx.who.config.server.approval_wait.get();
    let deadline = tokio::time::Instant::now() + wait;
    // A decision wakes this wait at once (LISTEN/NOTIFY on PostgreSQL);
    // the fallback interval is the safety net.
    let mut wake = ctx.shared.store.wake_ups();
    let fallback = gatehouse_store::wake::fallback_interval(ctx.shared.store.backend())
        .max(Duration::from_millis(300));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(fallback) => {}
            _ = wake.recv() => {}
            msg = channel.wait() => match msg {
                None | Some(ChannelMsg::Close) => {
                    expire(ctx, &id, "the user left before a decision").await;
                    return false;
                }
                Some(ChannelMsg::Eof) => {
                    *eof = true;
                    continue;
                }
                // Ctrl-C while waiting gives up.
                Some(ChannelMsg::Data { data }) if data.contains(&3) => {
                    expire(ctx, &id, "the user gave up waiting").await;
                    fail(channel, pty, &format!("request {id} withdrawn"), 1).await;
                    return false;
                }
                _ => continue,
            },
        }
        if let Some(granted) = decided(ctx, channel, pty, &id).await {
            return granted;
        }
        if tokio::time::Instant::now() >= deadline {
            expire(ctx, &id, "no decision in time").await;
            fail(
                channel,
                pty,
                &format!(
                    "request {id} expired without a decision after {}s; connect again to ask again",
                    wait.as_secs()
                ),
                1,
            )
            .await;
            return false;
        }
    }
}

enum Filed {
    /// An earlier channel of this connection was granted.
    Granted,
    /// The request (filed now or by an earlier channel) waits.
    Waiting(String),
    /// It could not be filed; the user was told.
    Failed,
}

/// Files this connection's approval request, once.
async fn file_request(
    ctx: &ChannelCtx,
    channel: &Channel<Msg>,
    pty: bool,
    need: &ApprovalNeed,
) -> Filed {
    let mut slot = ctx.state.approval.lock().await;
    match &*slot {
        Approval::Granted => return Filed::Granted,
        Approval::Requested(id) => return Filed::Waiting(id.clone()),
        Approval::NotRequested => {}
    }
    let (target, login) = (
        ctx.dest.target.clone().unwrap_or_default(),
        ctx.dest.login.clone().unwrap_or_default(),
    );
    let approvers = need.approvers.join(",");
    let id = match ctx
        .shared
        .store
        .request_approval(&ctx.who.user, &target, &login, &approvers)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            let why = format!("cannot file the approval request: {e}");
            fail(channel, pty, &why, 1).await;
            return Filed::Failed;
        }
    };
    let ev = ctx
        .events
        .event(
            EventType::APPROVAL_REQUESTED,
            Severity::Warn,
            Outcome::Success,
        )
        .details(serde_json::json!({ "request": id, "approvers": need.approvers }));
    if let Err(e) = ctx.events.gate(ev).await {
        fail(channel, pty, &e.to_string(), 1).await;
        return Filed::Failed;
    }
    *slot = Approval::Requested(id.clone());
    Filed::Waiting(id)
}

/// The decision on request `id`, if there is one yet (the user is told).
async fn decided(ctx: &ChannelCtx, channel: &Channel<Msg>, pty: bool, id: &str) -> Option<bool> {
    let eol = if pty { "\r\n" } else { "\n" };
    match ctx.shared.store.approval(id).await {
        Ok(Some(a)) if a.status == ApprovalState::Granted => {
            *ctx.state.approval.lock().await = Approval::Granted;
            let by = a.decided_by.unwrap_or_default();
            let _ = channel
                .extended_data_bytes(
                    1,
                    format!("gatehouse: request {id} approved by {by}{eol}").into_bytes(),
                )
                .await;
            Some(true)
        }
        Ok(Some(a)) if a.status == ApprovalState::Denied => {
            let why = a.reason.map(|r| format!(": {r}")).unwrap_or_default();
            let by = a.decided_by.unwrap_or_default();
            let message = format!("request {id} was denied by {by}{why}");
            fail(channel, pty, &message, 1).await;
            Some(false)
        }
        Ok(Some(a)) if a.status == ApprovalState::Expired => {
            fail(channel, pty, &format!("request {id} expired"), 1).await;
            Some(false)
        }
        _ => None,
    }
}

/// Expires request `id` unless it was decided meanwhile
/// (`approval.expired`).
async fn expire(ctx: &ChannelCtx, id: &str, why: &'static str) {
    if ctx.shared.store.expire_approval(id).await.unwrap_or(false) {
        let ev = ctx
            .events
            .event(
                EventType::APPROVAL_EXPIRED,
                Severity::Info,
                Outcome::Failure,
            )
            .reason(why)
            .details(serde_json::json!({ "request": id }));
        let _ = ctx.events.gate(ev).await;
    }
}
