//! The bridge: one task per user channel. It collects the channel's set-up
//! requests (pty, env, agent), authorises the main request (shell, exec,
//! subsystem), opens the matching channel on the target and then copies
//! data both ways.
//!
//! Flow control: a direction reads the next message only after the
//! previous one was handed to the other side, and handing over waits for
//! the receiver's SSH window. A slow reader therefore stalls its sender
//! through the SSH windows instead of growing buffers in the gateway; what
//! the gateway holds per channel is bounded by russh's channel buffer
//! (`channel_buffer_size` messages of at most one packet each).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_model::{EventType, Outcome, Severity};
use gatehouse_store::ApprovalState;
use russh::server::{self, Msg};
use russh::{client, Channel, ChannelMsg, Pty, Sig};

use crate::limits::clamp_pty;
use crate::recorder::{self, Recorder, RecordingSpec};
use crate::server::{
    env_allowed, record_in_session, upstream_for, Authed, ChannelGuard, ConnState, Shared,
};

/// What a channel task needs from its connection.
#[derive(Clone)]
pub(crate) struct ChannelCtx {
    pub shared: Arc<Shared>,
    pub state: Arc<ConnState>,
    pub auth: Authed,
    pub handle: server::Handle,
}

#[derive(Clone, Debug)]
pub(crate) struct PtyReq {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_w: u32,
    pub pix_h: u32,
    pub modes: Vec<(Pty, u32)>,
}

#[derive(Clone, Debug)]
pub(crate) enum Request {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

/// Set-up requests seen before the main request.
pub(crate) struct Setup {
    pub pty: Option<PtyReq>,
    pub env: Vec<(String, String)>,
    pub agent: bool,
}

/// Writes one line on the user's stderr, ends the channel with `code`.
pub(crate) async fn fail(channel: &Channel<Msg>, pty: bool, message: &str, code: u32) {
    let eol = if pty { "\r\n" } else { "\n" };
    let _ = channel
        .extended_data_bytes(1, format!("gatehouse: {message}{eol}").into_bytes())
        .await;
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Runs one session channel; `_guard` counts it among the connection's
/// open channels until it ends.
pub(crate) async fn session_channel(
    ctx: ChannelCtx,
    mut channel: Channel<Msg>,
    _guard: ChannelGuard,
) {
    let (max_cols, max_rows) = (
        ctx.auth.config.server.max_pty_cols,
        ctx.auth.config.server.max_pty_rows,
    );
    let mut setup = Setup {
        pty: None,
        env: Vec::new(),
        agent: false,
    };
    let accept_env = ctx.auth.config.server.accept_env.clone();
    let mut env_dropped: Vec<String> = Vec::new();
    let mut agent_requested = false;
    let request = loop {
        let Some(msg) = channel.wait().await else {
            return;
        };
        match msg {
            ChannelMsg::Close | ChannelMsg::Eof => return,
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } if ctx.auth.permit_pty() => {
                let (cols, rows) = clamp_pty(col_width, row_height, max_cols, max_rows);
                setup.pty = Some(PtyReq {
                    term,
                    cols,
                    rows,
                    pix_w: pix_width,
                    pix_h: pix_height,
                    modes: terminal_modes,
                })
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = setup.pty.as_mut() {
                    (p.cols, p.rows) = clamp_pty(col_width, row_height, max_cols, max_rows);
                }
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&accept_env, &variable_name) && setup.env.len() < 64 => {
                setup.env.push((variable_name, variable_value));
            }
            ChannelMsg::SetEnv { variable_name, .. } if env_dropped.len() < 64 => {
                env_dropped.push(variable_name);
            }
            ChannelMsg::AgentForward { .. } => {
                agent_requested = true;
                setup.agent = ctx
                    .auth
                    .decision
                    .as_ref()
                    .map(|d| d.allowed && d.agent_forwarding)
                    .unwrap_or(false)
                    && ctx.auth.permit_agent_forwarding();
            }
            ChannelMsg::Exec { command, .. } => break Request::Exec(command),
            ChannelMsg::RequestShell { .. } => break Request::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Request::Subsystem(name),
            _ => {}
        }
    };
    // A certificate's force-command runs whatever the client asked for.
    let request = match ctx.auth.cert.as_ref().and_then(|c| c.force_command.clone()) {
        Some(forced) => Request::Exec(forced.into_bytes()),
        None => request,
    };
    let pty = setup.pty.is_some();
    if let Some(refusal) = &ctx.auth.refusal {
        fail(&channel, pty, refusal, 1).await;
        return;
    }
    // Requests that shape what runs, beyond the command itself.
    let subsystem = match &request {
        Request::Subsystem(name) => Some(name.clone()),
        _ => None,
    };
    if subsystem.is_some() || agent_requested || !env_dropped.is_empty() {
        let refused = (agent_requested && !setup.agent) || !env_dropped.is_empty();
        let ev = ctx
            .state
            .event(
                &ctx.auth,
                EventType::CHANNEL_REQUEST,
                if refused {
                    Severity::Warn
                } else {
                    Severity::Info
                },
                if refused {
                    Outcome::Denied
                } else {
                    Outcome::Success
                },
                &ctx.shared.node(),
            )
            .details(serde_json::json!({
                "subsystem": subsystem,
                "agent_forwarding": if agent_requested {
                    serde_json::json!(if setup.agent { "granted" } else { "refused" })
                } else {
                    serde_json::Value::Null
                },
                "env_accepted": setup.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                "env_dropped": env_dropped,
            }));
        let on_failure = ctx.auth.config.audit.on_failure;
        if !record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await {
            return;
        }
    }
    if ctx.auth.target.is_none() {
        match request {
            Request::Shell => Box::pin(crate::menu::run(ctx, channel, setup)).await,
            Request::Exec(cmd) => Box::pin(crate::menu::gateway_command(ctx, channel, &cmd)).await,
            Request::Subsystem(name) => {
                fail(
                    &channel,
                    pty,
                    &format!("subsystem {name:?} needs a target: connect as USER:TARGET"),
                    1,
                )
                .await
            }
        }
        return;
    }
    // Boxed: its state lives as long as the session; the set-up steps
    // before the pump should not size it.
    Box::pin(run_on_target(ctx, channel, setup, request)).await;
}

/// Authorises `request` and runs it on the session's target.
/// Authorises `request` and runs it on the session's target.
pub(crate) async fn run_on_target(
    ctx: ChannelCtx,
    mut channel: Channel<Msg>,
    setup: Setup,
    request: Request,
) {
    let pty = setup.pty.is_some();
    // Stdin may end while the session waits; pass that on afterwards.
    let mut eof_while_waiting = false;
    if ctx.auth.approval.is_some()
        && !Box::pin(wait_for_approval(
            &ctx,
            &mut channel,
            pty,
            &mut eof_while_waiting,
        ))
        .await
    {
        return;
    }
    let node = ctx.shared.node();
    let on_failure = ctx.auth.config.audit.on_failure;
    if let Request::Exec(cmd) = &request {
        let command = String::from_utf8_lossy(cmd).to_string();
        let (target, login) = (
            ctx.auth.target.clone().unwrap_or_default(),
            ctx.auth.login.clone().unwrap_or_default(),
        );
        if let Some(denial) = gatehouse_policy::command_denied(
            &ctx.auth.config,
            &ctx.auth.user,
            &target,
            &login,
            &command,
        ) {
            let ev = ctx
                .state
                .event(
                    &ctx.auth,
                    EventType::COMMAND_DENIED,
                    Severity::Warn,
                    Outcome::Denied,
                    &node,
                )
                .reason(format!("denied by {}", denial.rule))
                .details(serde_json::json!({ "command": command, "source": "exec" }));
            record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await;
            fail(
                &channel,
                pty,
                &format!("command denied by {}", denial.rule),
                1,
            )
            .await;
            return;
        }
        if let Some(rule) =
            gatehouse_policy::reauth_required(&ctx.auth.config, &ctx.auth.user, &command)
        {
            // Step-up needs a terminal to ask in.
            let code = if pty {
                let _ = channel
                    .data_bytes(
                        format!(
                            "gatehouse: this command needs a fresh verification code ({})\r\nVerification code: ",
                            rule.rule
                        )
                        .into_bytes(),
                    )
                    .await;
                let mut resizes = Vec::new();
                let code = crate::guard::read_code(&mut channel, &mut resizes).await;
                let _ = channel.data_bytes(&b"\r\n"[..]).await;
                code
            } else {
                None
            };
            let code = match (pty, code) {
                (true, Some(c)) => Ok(c),
                (true, None) => Err(CANCELLED.to_string()),
                (false, _) => Err(format!(
                    "this command needs a fresh verification code ({}); run it in a terminal: ssh -t",
                    rule.rule
                )),
            };
            if let Err(why) = Box::pin(step_up(&ctx, &command, &rule, code)).await {
                fail(&channel, pty, &why, 1).await;
                return;
            }
        }
        let ev = ctx
            .state
            .event(
                &ctx.auth,
                EventType::COMMAND,
                Severity::Info,
                Outcome::Success,
                &node,
            )
            .details(serde_json::json!({ "command": command, "source": "exec" }));
        if let Err(e) = ctx.shared.audit.record(ev, on_failure).await {
            fail(&channel, pty, &e.to_string(), 1).await;
            return;
        }
    }
    // The recording exists before anything runs on the target.
    // File-transfer protocols are audited per file, not recorded as bytes:
    // bulk transfers must not balloon recordings.
    let transfer_command = match &request {
        Request::Exec(cmd) => {
            let c = String::from_utf8_lossy(cmd);
            gatehouse_record::scp_ops::ScpTracker::from_command(&c).is_some()
                || c.trim_start().starts_with("rsync --server")
        }
        _ => false,
    };
    let recorder = match &request {
        _ if !ctx.auth.config.recording.enabled => None,
        Request::Subsystem(_) => None,
        Request::Exec(_) if transfer_command => None,
        Request::Shell | Request::Exec(_) => Some(recorder::start(
            ctx.shared.clone(),
            ctx.state.clone(),
            ctx.auth.clone(),
            RecordingSpec {
                cols: setup.pty.as_ref().map(|p| p.cols).unwrap_or(80),
                rows: setup.pty.as_ref().map(|p| p.rows).unwrap_or(24),
                command: match &request {
                    Request::Exec(cmd) => Some(String::from_utf8_lossy(cmd).to_string()),
                    _ => None,
                },
                term: setup.pty.as_ref().map(|p| p.term.clone()),
                pty,
            },
        )),
    };
    let recorder = match recorder {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(why)) => {
            let required = ctx.auth.config.recording.required;
            let ev = ctx
                .state
                .event(
                    &ctx.auth,
                    EventType::RECORDING_FAILED,
                    Severity::High,
                    Outcome::Error,
                    &node,
                )
                .reason(why.clone())
                .details(serde_json::json!({ "required": required }));
            let recorded = record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await;
            if required || !recorded {
                fail(
                    &channel,
                    pty,
                    &format!("{why}; recording is required, so the session cannot start; tell your administrator"),
                    1,
                )
                .await;
                return;
            }
            None
        }
    };
    let upstream = match Box::pin(upstream_for(&ctx.shared, &ctx.state, &ctx.auth)).await {
        Ok(u) => u,
        Err(e) => {
            fail(&channel, pty, &e, 255).await;
            keep_recording(&ctx, recorder).await;
            return;
        }
    };
    let up = match upstream.handle.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            fail(
                &channel,
                pty,
                &format!("the target refused a session channel: {e}"),
                255,
            )
            .await;
            keep_recording(&ctx, recorder).await;
            return;
        }
    };
    let sent = async {
        if let Some(p) = &setup.pty {
            up.request_pty(false, &p.term, p.cols, p.rows, p.pix_w, p.pix_h, &p.modes)
                .await?;
        }
        for (k, v) in &setup.env {
            up.set_env(false, k.clone(), v.clone()).await?;
        }
        if setup.agent {
            up.agent_forward(false).await?;
            spawn_agent_bridge(&ctx, upstream.clone()).await;
        }
        match &request {
            Request::Shell => up.request_shell(true).await?,
            Request::Exec(cmd) => up.exec(true, cmd.clone()).await?,
            Request::Subsystem(name) => up.request_subsystem(true, name.clone()).await?,
        }
        if eof_while_waiting {
            up.eof().await?;
        }
        Ok::<(), russh::Error>(())
    }
    .await;
    if let Err(e) = sent {
        fail(
            &channel,
            pty,
            &format!("the target connection failed: {e}"),
            255,
        )
        .await;
        keep_recording(&ctx, recorder).await;
        return;
    }
    let transfers =
        match &request {
            Request::Subsystem(name) if name == "sftp" => Some(
                crate::transfers::TransferAudit::sftp(&ctx.shared, &ctx.state, &ctx.auth),
            ),
            Request::Exec(cmd) => crate::transfers::TransferAudit::scp(
                &String::from_utf8_lossy(cmd),
                &ctx.shared,
                &ctx.state,
                &ctx.auth,
            ),
            _ => None,
        };
    let (transfers, transfer_writer) = match transfers {
        Some((t, w)) => (Some(t), Some(w)),
        None => (None, None),
    };
    // Interactive lines are judged only in a terminal, and only when a
    // command rule can apply.
    let guard = match (&request, &setup.pty) {
        (Request::Shell | Request::Exec(_), Some(p)) if crate::guard::needed(&ctx.auth) => {
            Some(crate::guard::LineGuard::new(p.cols, p.rows))
        }
        _ => None,
    };
    let outcome = pump(
        &ctx,
        channel,
        up,
        pty,
        recorder.as_ref(),
        transfers.as_ref(),
        guard.as_ref(),
    )
    .await;
    drop(transfers);
    if let Some(w) = transfer_writer {
        let _ = w.await;
    }
    if let Some(code) = outcome.exit_status {
        ctx.state.exit_status.store(code as i64, Ordering::Release);
    }
    // A user who left first makes the gateway close the target's side,
    // which the pump may see as a vanished channel: not a lost target.
    if outcome.lost && !ctx.state.user_gone.load(Ordering::Acquire) {
        ctx.state.target_lost.store(true, Ordering::Release);
    }
    if outcome.refused {
        // The `command` event said it was sent; this says it never ran.
        let (kind, details) = match &request {
            Request::Exec(cmd) => (
                EventType::COMMAND_FAILED,
                serde_json::json!({ "command": String::from_utf8_lossy(cmd), "source": "exec" }),
            ),
            Request::Shell => (
                EventType::CHANNEL_REQUEST,
                serde_json::json!({ "request": "shell" }),
            ),
            Request::Subsystem(name) => (
                EventType::CHANNEL_REQUEST,
                serde_json::json!({ "request": "subsystem", "subsystem": name }),
            ),
        };
        let ev = ctx
            .state
            .event(&ctx.auth, kind, Severity::Warn, Outcome::Failure, &node)
            .reason("the target refused the request; nothing ran")
            .details(details);
        record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await;
    }
    keep_recording(&ctx, recorder).await;
}

/// Ends a channel's recording and adds it to the session's, for
/// `session.end`.
async fn keep_recording(ctx: &ChannelCtx, recorder: Option<Recorder>) {
    if let Some(r) = recorder {
        if let Some(summary) = r.finish().await {
            if let Ok(mut list) = ctx.state.recordings.lock() {
                list.push(summary);
            }
        }
    }
}

/// Just-in-time approval: files a request (once per connection), tells
/// the user whom to ask, and waits for a decision, the timeout, or the
/// user giving up. True when granted.
async fn wait_for_approval(
    ctx: &ChannelCtx,
    channel: &mut Channel<Msg>,
    pty: bool,
    eof: &mut bool,
) -> bool {
    if ctx.state.approved.load(Ordering::Acquire) {
        return true;
    }
    let Some(need) = ctx.auth.approval.clone() else {
        return true;
    };
    let node = ctx.shared.node();
    let on_failure = ctx.auth.config.audit.on_failure;
    let eol = if pty { "\r\n" } else { "\n" };
    let approvers = need.approvers.join(",");
    let (target, login) = (
        ctx.auth.target.clone().unwrap_or_default(),
        ctx.auth.login.clone().unwrap_or_default(),
    );
    let id = {
        let mut slot = ctx.state.approval_id.lock().await;
        match slot.clone() {
            Some(id) => id,
            None => {
                let id = match ctx
                    .shared
                    .store
                    .request_approval(&ctx.auth.user, &target, &login, &approvers)
                    .await
                {
                    Ok(id) => id,
                    Err(e) => {
                        fail(
                            channel,
                            pty,
                            &format!("cannot file the approval request: {e}"),
                            1,
                        )
                        .await;
                        return false;
                    }
                };
                let ev = ctx
                    .state
                    .event(
                        &ctx.auth,
                        EventType::APPROVAL_REQUESTED,
                        Severity::Warn,
                        Outcome::Success,
                        &node,
                    )
                    .details(serde_json::json!({ "request": id, "approvers": need.approvers }));
                if let Err(e) = ctx.shared.audit.record(ev, on_failure).await {
                    fail(channel, pty, &e.to_string(), 1).await;
                    return false;
                }
                *slot = Some(id.clone());
                id
            }
        }
    };
    let _ = channel
        .extended_data_bytes(
            1,
            format!(
                "gatehouse: waiting for approval of request {id} (ask a member of {approvers}: ssh APPROVER@gateway approve {id}){eol}"
            )
            .into_bytes(),
        )
        .await;
    let wait = ctx.auth.config.server.approval_wait.get();
    let deadline = tokio::time::Instant::now() + wait;
    let expire = |why: &'static str| {
        let (shared, state, auth, id, node) = (
            ctx.shared.clone(),
            ctx.state.clone(),
            ctx.auth.clone(),
            id.clone(),
            node.clone(),
        );
        async move {
            if shared.store.expire_approval(&id).await.unwrap_or(false) {
                let ev = state
                    .event(
                        &auth,
                        EventType::APPROVAL_EXPIRED,
                        Severity::Info,
                        Outcome::Failure,
                        &node,
                    )
                    .reason(why)
                    .details(serde_json::json!({ "request": id }));
                let _ = shared.audit.record(ev, on_failure).await;
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            msg = channel.wait() => match msg {
                None | Some(ChannelMsg::Close) => {
                    expire("the user left before a decision").await;
                    return false;
                }
                Some(ChannelMsg::Eof) => {
                    *eof = true;
                    continue;
                }
                // Ctrl-C while waiting gives up.
                Some(ChannelMsg::Data { data }) if data.contains(&3) => {
                    expire("the user gave up waiting").await;
                    fail(channel, pty, &format!("request {id} withdrawn"), 1).await;
                    return false;
                }
                _ => continue,
            },
        }
        match ctx.shared.store.approval(&id).await {
            Ok(Some(a)) if a.status == ApprovalState::Granted => {
                ctx.state.approved.store(true, Ordering::Release);
                let by = a.decided_by.unwrap_or_default();
                let _ = channel
                    .extended_data_bytes(
                        1,
                        format!("gatehouse: request {id} approved by {by}{eol}").into_bytes(),
                    )
                    .await;
                return true;
            }
            Ok(Some(a)) if a.status == ApprovalState::Denied => {
                let why = a.reason.map(|r| format!(": {r}")).unwrap_or_default();
                fail(
                    channel,
                    pty,
                    &format!(
                        "request {id} was denied by {}{why}",
                        a.decided_by.unwrap_or_default()
                    ),
                    1,
                )
                .await;
                return false;
            }
            Ok(Some(a)) if a.status == ApprovalState::Expired => {
                fail(channel, pty, &format!("request {id} expired"), 1).await;
                return false;
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            expire("no decision in time").await;
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

/// Bridges agent channels the target opens back to the user's agent.
async fn spawn_agent_bridge(ctx: &ChannelCtx, upstream: Arc<crate::upstream::Upstream>) {
    let Some(mut rx) = upstream.agent_rx.lock().await.take() else {
        return;
    };
    let handle = ctx.handle.clone();
    tokio::spawn(async move {
        while let Some(up_agent) = rx.recv().await {
            let Ok(user_agent) = handle.channel_open_agent().await else {
                let _ = up_agent.close().await;
                continue;
            };
            tokio::spawn(raw_pump(user_agent, up_agent));
        }
    });
}

/// What a finished bridge saw.
#[derive(Debug, Default)]
pub(crate) struct PumpOutcome {
    pub exit_status: Option<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The target answered the shell/exec/subsystem request with a
    /// failure: nothing ran.
    pub refused: bool,
    /// The target's connection died under the channel.
    pub lost: bool,
}

/// Copies a session channel both ways until either side closes.
async fn pump(
    ctx: &ChannelCtx,
    user: Channel<Msg>,
    up: Channel<client::Msg>,
    pty: bool,
    rec: Option<&Recorder>,
    transfers: Option<&crate::transfers::TransferAudit>,
    guard: Option<&crate::guard::LineGuard>,
) -> PumpOutcome {
    let user_id = user.id();
    let (mut user_rx, user_tx) = user.split();
    let (mut up_rx, up_tx) = up.split();
    let state = ctx.state.clone();
    let to_target = async {
        let mut n = 0u64;
        while let Some(msg) = user_rx.wait().await {
            let r = match msg {
                ChannelMsg::Data { data } => {
                    n += data.len() as u64;
                    state
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(g) = guard {
                        Box::pin(guarded_input(
                            ctx,
                            g,
                            &data,
                            &mut user_rx,
                            &user_tx,
                            &up_tx,
                            rec,
                        ))
                        .await
                    } else {
                        if let Some(r) = rec {
                            r.input(&data).await;
                        }
                        if let Some(t) = transfers {
                            t.client(&data).await;
                        }
                        up_tx.data_bytes(data).await
                    }
                }
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    let (col_width, row_height) = clamp_pty(
                        col_width,
                        row_height,
                        ctx.auth.config.server.max_pty_cols,
                        ctx.auth.config.server.max_pty_rows,
                    );
                    if let Some(r) = rec {
                        r.resize(col_width, row_height).await;
                    }
                    if let Some(g) = guard {
                        g.resize(col_width, row_height);
                    }
                    up_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
        n
    };
    let handle = ctx.handle.clone();
    let to_user = async {
        let mut n = 0u64;
        let mut exit = None;
        let mut refused = false;
        let mut eof_sent = false;
        // The upstream channel vanished without a close: its connection
        // died (the target's sshd, the network).
        let mut lost = false;
        loop {
            let Some(msg) = up_rx.wait().await else {
                lost = true;
                break;
            };
            let r = match msg {
                ChannelMsg::Data { data } => {
                    n += data.len() as u64;
                    state
                        .bytes_out
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(r) = rec {
                        r.output(&data).await;
                    }
                    if let Some(g) = guard {
                        g.output(&data);
                    }
                    if let Some(t) = transfers {
                        t.server(&data).await;
                    }
                    user_tx.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    n += data.len() as u64;
                    state
                        .bytes_out
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(r) = rec {
                        r.output(&data).await;
                    }
                    user_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => {
                    eof_sent = true;
                    user_tx.eof().await
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exit = Some(exit_status);
                    user_tx.exit_status(exit_status).await
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    exit = Some(128 + signal_number(&signal_name));
                    handle
                        .exit_signal_request(
                            user_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await
                        .map_err(|_| russh::Error::SendError)
                }
                ChannelMsg::Failure => {
                    let eol = if pty { "\r\n" } else { "\n" };
                    let _ = user_tx
                        .extended_data_bytes(
                            1,
                            format!("gatehouse: the target refused the request{eol}").into_bytes(),
                        )
                        .await;
                    exit = Some(1);
                    refused = true;
                    let _ = user_tx.exit_status(1).await;
                    break;
                }
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let lost = lost && exit.is_none();
        if lost {
            let eol = if pty { "\r\n" } else { "\n" };
            let _ = user_tx
                .extended_data_bytes(
                    1,
                    format!("gatehouse: the connection to the target was lost{eol}").into_bytes(),
                )
                .await;
            let _ = user_tx.exit_status(255).await;
        }
        // One EOF only: clients such as asyncssh treat a second as an error.
        if !eof_sent {
            let _ = user_tx.eof().await;
        }
        let _ = user_tx.close().await;
        (n, exit, refused, lost)
    };
    tokio::pin!(to_target);
    tokio::pin!(to_user);
    let mut outcome = PumpOutcome::default();
    tokio::select! {
        n = &mut to_target => {
            outcome.bytes_in = n;
            // The user closed: give the target a moment to confirm.
            if let Ok((m, exit, refused, _)) = tokio::time::timeout(Duration::from_secs(5), &mut to_user).await {
                outcome.bytes_out = m;
                outcome.exit_status = exit;
                outcome.refused = refused;
            }
        }
        (m, exit, refused, lost) = &mut to_user => {
            outcome.bytes_out = m;
            outcome.exit_status = exit;
            outcome.refused = refused;
            outcome.lost = lost;
        }
    }
    outcome
}

/// Passes keystrokes on with every Enter held until the line on screen
/// has been judged (see [`crate::guard`]).
async fn guarded_input(
    ctx: &ChannelCtx,
    guard: &crate::guard::LineGuard,
    data: &[u8],
    user_rx: &mut russh::ChannelReadHalf,
    user_tx: &russh::ChannelWriteHalf<Msg>,
    up_tx: &russh::ChannelWriteHalf<client::Msg>,
    rec: Option<&Recorder>,
) -> Result<(), russh::Error> {
    use crate::guard::{tell, Verdict, ERASE_LINE};
    let send = |bytes: Vec<u8>| async move {
        let bytes = bytes::Bytes::from(bytes);
        if let Some(r) = rec {
            r.input(&bytes).await;
        }
        guard.input(&bytes);
        up_tx.data_bytes(bytes).await
    };
    let node = ctx.shared.node();
    let on_failure = ctx.auth.config.audit.on_failure;
    let mut rest = data;
    while !rest.is_empty() {
        let Some(at) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return send(rest.to_vec()).await;
        };
        if at > 0 {
            send(rest[..at].to_vec()).await?;
        }
        let enter = rest[at];
        rest = &rest[at + 1..];
        let Some(shown) = guard.settled_line().await else {
            send(vec![enter]).await?;
            continue;
        };
        // The screen's line is what the shell runs; a line typed ahead of
        // the shell's prompt is not on the screen yet, so what was typed
        // is judged as well.
        let mut lines = vec![shown.clone()];
        if let Some(typed) = guard.typed_line() {
            if !shown.contains(&typed) {
                lines.push(typed);
            }
        }
        let (line, verdict) = lines
            .into_iter()
            .map(|l| {
                let v = crate::guard::verdict(&ctx.auth, &l);
                (l, v)
            })
            .find(|(_, v)| !matches!(v, Verdict::Allow))
            .unwrap_or((shown, Verdict::Allow));
        let refusal = match verdict {
            Verdict::Allow => None,
            Verdict::Deny(d) => {
                let ev = ctx
                    .state
                    .event(
                        &ctx.auth,
                        EventType::COMMAND_DENIED,
                        Severity::Warn,
                        Outcome::Denied,
                        &node,
                    )
                    .reason(format!("denied by {}", d.rule))
                    .details(serde_json::json!({ "command": line, "source": "interactive" }));
                record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await;
                Some(format!("command denied by {}", d.rule))
            }
            Verdict::StepUp(r) => {
                tell(
                    user_tx,
                    &format!(
                        "\r\ngatehouse: this command needs a fresh verification code ({})\r\nVerification code: ",
                        r.rule
                    ),
                )
                .await;
                let mut resizes = Vec::new();
                let code = crate::guard::read_code(user_rx, &mut resizes).await;
                for (c, r, pw, ph) in resizes {
                    let (c, r) = clamp_pty(
                        c,
                        r,
                        ctx.auth.config.server.max_pty_cols,
                        ctx.auth.config.server.max_pty_rows,
                    );
                    guard.resize(c, r);
                    up_tx.window_change(c, r, pw, ph).await?;
                }
                let code = code.ok_or_else(|| CANCELLED.to_string());
                Box::pin(step_up(ctx, &line, &r, code)).await.err()
            }
        };
        match refusal {
            None => send(vec![enter]).await?,
            Some(why) => {
                // Never submitted: erase the line from the shell's buffer,
                // say why, and let the shell draw a fresh prompt.
                send(ERASE_LINE.to_vec()).await?;
                let _ = guard.settled_line().await;
                tell(user_tx, &format!("\r\ngatehouse: {why}")).await;
                send(vec![b'\r']).await?;
                // Typed-ahead input after a refused line is dropped too.
                return Ok(());
            }
        }
    }
    Ok(())
}

const CANCELLED: &str = "step-up verification cancelled; the command was not run";

/// Checks a step-up code and audits the outcome; the error is what the
/// user is told.
async fn step_up(
    ctx: &ChannelCtx,
    command: &str,
    rule: &gatehouse_policy::CommandDenial,
    code: Result<String, String>,
) -> Result<(), String> {
    let node = ctx.shared.node();
    let on_failure = ctx.auth.config.audit.on_failure;
    let user = &ctx.auth.user;
    let verdict = match code {
        Err(why) => Err(why),
        Ok(code) => match ctx.shared.store.totp(user).await {
            Ok(Some((sealed, _))) => match ctx
                .shared
                .totp_fresh(&ctx.auth.config, user, &sealed, code.trim())
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("wrong or already used verification code; the command was not run".to_string()),
                Err(e) => Err(e),
            },
            Ok(None) => Err(format!(
                "no authenticator is enrolled for {user}; ask an administrator to run: gatehouse users totp-enroll {user}"
            )),
            Err(e) => Err(format!("cannot read the TOTP secret: {e}")),
        },
    };
    let details = serde_json::json!({
        "step_up": true, "method": "totp", "command": command, "rule": rule.rule.to_string(),
    });
    let mut ev = match &verdict {
        Ok(()) => ctx
            .state
            .event(
                &ctx.auth,
                EventType::AUTH_SUCCESS,
                Severity::Info,
                Outcome::Success,
                &node,
            )
            .details(details),
        Err(why) => ctx
            .state
            .event(
                &ctx.auth,
                EventType::AUTH_FAILURE,
                Severity::Warn,
                Outcome::Failure,
                &node,
            )
            .reason(why.clone())
            .details(details),
    };
    if verdict.is_ok() {
        ev.mfa = true;
    }
    if let Err(e) = ctx.shared.audit.record(ev, on_failure).await {
        return Err(e.to_string());
    }
    verdict
}

/// Copies a non-session channel (port forward, agent) both ways.
///
/// A `close` from either side ends the copy: the peer that closed takes
/// no more data, and russh does not deliver the other side's answering
/// close once the gateway has sent its own, so waiting for it would keep
/// the task (and the forward's `port_forward.close`) forever.
async fn raw_pump(user: Channel<Msg>, up: Channel<client::Msg>) -> (u64, u64) {
    use std::sync::atomic::AtomicU64;
    let (mut user_rx, user_tx) = user.split();
    let (mut up_rx, up_tx) = up.split();
    let (sent_in, sent_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let to_target = async {
        while let Some(msg) = user_rx.wait().await {
            let r = match msg {
                ChannelMsg::Data { data } => {
                    sent_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    up_tx.data_bytes(data).await
                }
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    let to_user = async {
        while let Some(msg) = up_rx.wait().await {
            let r = match msg {
                ChannelMsg::Data { data } => {
                    sent_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                    user_tx.data_bytes(data).await
                }
                ChannelMsg::Eof => user_tx.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = user_tx.close().await;
    };
    tokio::pin!(to_target);
    tokio::pin!(to_user);
    // Whichever side is done first, the other gets a moment to pass on
    // what it already holds.
    tokio::select! {
        _ = &mut to_target => {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut to_user).await;
        }
        _ = &mut to_user => {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut to_target).await;
        }
    }
    (
        sent_in.load(Ordering::Relaxed),
        sent_out.load(Ordering::Relaxed),
    )
}

/// A `direct-tcpip` channel (`ssh -L`), already authorised and audited.
pub(crate) async fn forward_channel(
    ctx: ChannelCtx,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    orig_addr: String,
    orig_port: u32,
) {
    let node = ctx.shared.node();
    let upstream = match Box::pin(upstream_for(&ctx.shared, &ctx.state, &ctx.auth)).await {
        Ok(u) => u,
        Err(_) => {
            let _ = channel.close().await;
            return;
        }
    };
    let up = match upstream
        .handle
        .channel_open_direct_tcpip(host.clone(), port, orig_addr, orig_port)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let ev = ctx
                .state
                .event(
                    &ctx.auth,
                    EventType::PORT_FORWARD_CLOSE,
                    Severity::Info,
                    Outcome::Failure,
                    &node,
                )
                .reason(format!("the target could not open {host}:{port}: {e}"))
                .details(serde_json::json!({ "host": host, "port": port }));
            record_in_session(
                &ctx.shared,
                &ctx.state,
                ctx.auth.config.audit.on_failure,
                ev,
            )
            .await;
            let _ = channel.close().await;
            return;
        }
    };
    let details = serde_json::json!({ "host": host, "port": port });
    pump_forward(&ctx, channel, up, details).await;
}

/// Copies a forwarded connection both ways, adds its bytes to the
/// session's, and writes its `port_forward.close` with them.
async fn pump_forward(
    ctx: &ChannelCtx,
    user: Channel<Msg>,
    up: Channel<client::Msg>,
    mut details: serde_json::Value,
) {
    let (bytes_in, bytes_out) = raw_pump(user, up).await;
    ctx.state.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    ctx.state.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    details["bytes_in"] = bytes_in.into();
    details["bytes_out"] = bytes_out.into();
    let ev = ctx
        .state
        .event(
            &ctx.auth,
            EventType::PORT_FORWARD_CLOSE,
            Severity::Info,
            Outcome::Success,
            &ctx.shared.node(),
        )
        .details(details);
    record_in_session(
        &ctx.shared,
        &ctx.state,
        ctx.auth.config.audit.on_failure,
        ev,
    )
    .await;
}

/// Carries the connections the target accepts on `ssh -R` ports back to
/// the user, each audited like a local forward (`direction = "remote"`).
pub(crate) async fn remote_forwards(ctx: ChannelCtx, upstream: Arc<crate::upstream::Upstream>) {
    let Some(mut rx) = upstream.forwarded_rx.lock().await.take() else {
        return;
    };
    while let Some(f) = rx.recv().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let node = ctx.shared.node();
            let on_failure = ctx.auth.config.audit.on_failure;
            let details = serde_json::json!({
                "direction": "remote",
                "host": f.connected_address,
                "port": f.connected_port,
                "originator": format!("{}:{}", f.originator_address, f.originator_port),
            });
            let user = match ctx
                .handle
                .channel_open_forwarded_tcpip(
                    f.connected_address.clone(),
                    f.connected_port,
                    f.originator_address.clone(),
                    f.originator_port,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let ev = ctx
                        .state
                        .event(
                            &ctx.auth,
                            EventType::PORT_FORWARD_CLOSE,
                            Severity::Info,
                            Outcome::Failure,
                            &node,
                        )
                        .reason(format!(
                            "the user's client refused the forwarded connection: {e}"
                        ))
                        .details(details);
                    record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await;
                    let _ = f.channel.close().await;
                    return;
                }
            };
            let ev = ctx
                .state
                .event(
                    &ctx.auth,
                    EventType::PORT_FORWARD_OPEN,
                    Severity::Info,
                    Outcome::Success,
                    &node,
                )
                .details(details.clone());
            if !record_in_session(&ctx.shared, &ctx.state, on_failure, ev).await {
                let _ = f.channel.close().await;
                let _ = user.close().await;
                return;
            }
            pump_forward(&ctx, user, f.channel, details).await;
        });
    }
}

fn signal_number(sig: &Sig) -> u32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        _ => 0,
    }
}
