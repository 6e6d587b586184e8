//! Channels: a session channel collects its set-up requests (pty, env,
//! agent), is authorised (approval, command rules, step-up), gets its
//! recording and taps, is opened on the target and handed to the pump;
//! without a target the menu or a gateway command answers. Port forwards
//! (`ssh -L`, `ssh -R`) and ProxyJump channels are authorised here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gatehouse_model::{EventType, Outcome, Severity};
use russh::server::{self, Msg};
use russh::{client, Channel, ChannelMsg, ChannelOpenFailure, Pty};

use crate::access::{self, forwarding_allowed, wait_for_approval};
use crate::connect::upstream_for;
use crate::guard::LineGuard;
use crate::limits::clamp_pty;
use crate::pump::{self, PumpOutcome};
use crate::recorder::{self, Recorder, RecordingSpec};
use crate::session::{fail, truncate, ChannelCtx, ChannelGuard, ConnState, Jump};
use crate::transfers::TransferAudit;
use crate::upstream::Upstream;

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
    /// Agent forwarding was asked for (granted or not).
    pub agent_requested: bool,
    /// Variables `server.accept_env` does not let through.
    pub env_dropped: Vec<String>,
}

/// sshd's `AcceptEnv` matching: exact names, or a prefix ending in `*`.
pub fn env_allowed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Opens a session channel: counted against `server.max_sessions`, then
/// run by its own task.
pub(crate) async fn open_session(
    ctx: ChannelCtx,
    channel: Channel<Msg>,
    reply: server::ChannelOpenHandle,
) {
    // OpenSSH's MaxSessions: each session channel costs a task, a
    // recording and up to two terminal screens.
    let max = ctx.who.config.server.max_sessions;
    if ctx.state.channels_open.load(Ordering::Acquire) >= max {
        tracing::warn!(session = %ctx.state.session_id, max, "session channel refused: server.max_sessions reached");
        reply.reject(ChannelOpenFailure::ResourceShortage).await;
        return;
    }
    let guard = ChannelGuard::new(ctx.state.clone());
    ctx.shared.track_channel(ctx.state.conn_id, channel.id());
    reply.accept().await;
    tokio::spawn(session_channel(ctx, channel, guard));
}

/// Runs one session channel; `_guard` counts it among the connection's
/// open channels until it ends.
async fn session_channel(ctx: ChannelCtx, mut channel: Channel<Msg>, _guard: ChannelGuard) {
    let Some((setup, request)) = read_setup(&ctx, &mut channel).await else {
        return;
    };
    // A certificate's force-command runs whatever the client asked for.
    let request = match ctx.who.cert().and_then(|c| c.force_command.clone()) {
        Some(forced) => Request::Exec(forced.into_bytes()),
        None => request,
    };
    let pty = setup.pty.is_some();
    if let Some(refusal) = &ctx.dest.refusal {
        fail(&channel, pty, refusal, 1).await;
        return;
    }
    if !audit_setup(&ctx, &setup, &request).await {
        return;
    }
    if matches!(&request, Request::Subsystem(name) if name.contains('\0')) {
        // The target's sshd would drop the whole connection.
        fail(&channel, pty, NUL_SUBSYSTEM, 1).await;
        return;
    }
    if ctx.dest.target.is_none() {
        match request {
            Request::Shell => Box::pin(via_menu(ctx, channel, setup)).await,
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

/// Collects the set-up requests up to the main one (shell, exec,
/// subsystem). None when the channel ends first.
async fn read_setup(ctx: &ChannelCtx, channel: &mut Channel<Msg>) -> Option<(Setup, Request)> {
    let (max_cols, max_rows) = (
        ctx.who.config.server.max_pty_cols,
        ctx.who.config.server.max_pty_rows,
    );
    let mut setup = Setup {
        pty: None,
        env: Vec::new(),
        agent: false,
        agent_requested: false,
        env_dropped: Vec::new(),
    };
    let accept_env = &ctx.who.config.server.accept_env;
    let request = loop {
        match channel.wait().await? {
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } if ctx.who.permit_pty() => {
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
            // A NUL character would make the target's sshd drop the whole
            // connection: such a variable is dropped, and audited as such.
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(accept_env, &variable_name)
                && !variable_name.contains('\0')
                && !variable_value.contains('\0')
                && setup.env.len() < 64 =>
            {
                setup.env.push((variable_name, variable_value));
            }
            ChannelMsg::SetEnv { variable_name, .. } if setup.env_dropped.len() < 64 => {
                setup.env_dropped.push(variable_name);
            }
            ChannelMsg::AgentForward { .. } => {
                setup.agent_requested = true;
                setup.agent = ctx.dest.agent_forwarding() && ctx.who.permit_agent_forwarding();
            }
            ChannelMsg::Exec { command, .. } => break Request::Exec(command),
            ChannelMsg::RequestShell { .. } => break Request::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Request::Subsystem(name),
            _ => {}
        }
    };
    Some((setup, request))
}

/// Audits the requests that shape what runs, beyond the command itself
/// (`channel.request`). False when the session is being stopped.
async fn audit_setup(ctx: &ChannelCtx, setup: &Setup, request: &Request) -> bool {
    let subsystem = match request {
        Request::Subsystem(name) => Some(name.clone()),
        _ => None,
    };
    if subsystem.is_none() && !setup.agent_requested && setup.env_dropped.is_empty() {
        return true;
    }
    let nul = subsystem.as_deref().is_some_and(|n| n.contains('\0'));
    let refused = (setup.agent_requested && !setup.agent) || !setup.env_dropped.is_empty() || nul;
    let (sev, result) = if refused {
        (Severity::Warn, Outcome::Denied)
    } else {
        (Severity::Info, Outcome::Success)
    };
    let mut ev = ctx.events.event(EventType::CHANNEL_REQUEST, sev, result);
    if nul {
        ev = ev.reason(NUL_SUBSYSTEM);
    }
    let ev = ev.details(serde_json::json!({
        "subsystem": subsystem,
        "agent_forwarding": if setup.agent_requested {
            serde_json::json!(if setup.agent { "granted" } else { "refused" })
        } else {
            serde_json::Value::Null
        },
        "env_accepted": setup.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "env_dropped": setup.env_dropped,
    }));
    ctx.events.fact(ev).await
}

/// What a user who asked for a subsystem whose name holds NUL is told.
const NUL_SUBSYSTEM: &str =
    "the subsystem name holds a NUL character, which SSH servers refuse; nothing ran";

/// A shell without a target: the menu returns the user's choice, access
/// is decided for it, and the shell runs there.
async fn via_menu(mut ctx: ChannelCtx, mut channel: Channel<Msg>, setup: Setup) {
    let pty = setup.pty.is_some();
    let Some(chosen) = crate::menu::choose_target(&ctx, &mut channel, pty).await else {
        return;
    };
    access::resolve(&mut ctx, &chosen.target).await;
    if let Some(refusal) = &ctx.dest.refusal {
        fail(&channel, true, refusal, 1).await;
        return;
    }
    let _ = channel
        .data_bytes(
            format!("connecting to {} as {}...\r\n", chosen.target, chosen.login).into_bytes(),
        )
        .await;
    run_on_target(ctx, channel, setup, Request::Shell).await;
}

/// Authorises `request` and runs it on the session's target.
async fn run_on_target(ctx: ChannelCtx, mut channel: Channel<Msg>, setup: Setup, request: Request) {
    let pty = setup.pty.is_some();
    // Stdin may end while the session waits; pass that on afterwards.
    let mut eof_while_waiting = false;
    if ctx.dest.approval.is_some()
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
    if let Request::Exec(cmd) = &request {
        let command = String::from_utf8_lossy(cmd).to_string();
        if !authorise_command(&ctx, &mut channel, pty, &command).await {
            return;
        }
    }
    // The recording exists before anything runs on the target.
    let Ok(recorder) = start_recording(&ctx, &channel, &setup, &request).await else {
        return;
    };
    let opened = open_on_target(&ctx, &setup, &request, eof_while_waiting).await;
    let up = match opened {
        Ok(up) => up,
        Err((message, code)) => {
            fail(&channel, pty, &message, code).await;
            keep_recording(&ctx, recorder).await;
            return;
        }
    };
    let transfers = match &request {
        Request::Subsystem(name) if name == "sftp" => Some(TransferAudit::sftp(&ctx.events)),
        Request::Exec(cmd) => TransferAudit::scp(&String::from_utf8_lossy(cmd), &ctx.events),
        _ => None,
    };
    let (transfers, transfer_writer) = match transfers {
        Some((t, w)) => (Some(t), Some(w)),
        None => (None, None),
    };
    // Interactive lines are judged only in a terminal, and only when a
    // command rule can apply.
    let guard = match (&request, &setup.pty) {
        (Request::Shell | Request::Exec(_), Some(p))
            if crate::guard::needed(&ctx.who, &ctx.dest) =>
        {
            Some(LineGuard::new(p.cols, p.rows))
        }
        _ => None,
    };
    let taps = pump::Taps {
        rec: recorder.as_ref(),
        transfers: transfers.as_ref(),
        guard: guard.as_ref(),
    };
    let outcome = pump::pump(&ctx, channel, up, pty, taps).await;
    drop(transfers);
    if let Some(w) = transfer_writer {
        let _ = w.await;
    }
    pumped(&ctx, &request, outcome).await;
    keep_recording(&ctx, recorder).await;
}

/// An exec request's command: command rules, step-up, then the `command`
/// event (a gate: nothing runs that the trail does not show). False when
/// it may not run (the user was told).
async fn authorise_command(
    ctx: &ChannelCtx,
    channel: &mut Channel<Msg>,
    pty: bool,
    command: &str,
) -> bool {
    let (target, login) = (
        ctx.dest.target.clone().unwrap_or_default(),
        ctx.dest.login.clone().unwrap_or_default(),
    );
    // An SSH server refuses a command string holding NUL by dropping the
    // whole connection (OpenSSH does), which would end every channel of
    // the session there: refused here with a line that says why.
    if command.contains('\0') {
        let why = "the command holds a NUL character, which SSH servers refuse; nothing ran";
        let ev = ctx
            .events
            .event(EventType::COMMAND_DENIED, Severity::Warn, Outcome::Denied)
            .reason(why)
            .details(serde_json::json!({ "command": command, "source": "exec" }));
        ctx.events.fact(ev).await;
        fail(channel, pty, why, 1).await;
        return false;
    }
    if let Some(denial) =
        gatehouse_policy::command_denied(&ctx.who.config, &ctx.who.user, &target, &login, command)
    {
        let ev = ctx
            .events
            .event(EventType::COMMAND_DENIED, Severity::Warn, Outcome::Denied)
            .reason(format!("denied by {}", denial.rule))
            .details(serde_json::json!({ "command": command, "source": "exec" }));
        ctx.events.fact(ev).await;
        let message = format!("command denied by {}", denial.rule);
        fail(channel, pty, &message, 1).await;
        return false;
    }
    if let Some(rule) = gatehouse_policy::reauth_required(&ctx.who.config, &ctx.who.user, command) {
        let code = ask_code(channel, pty, &rule).await;
        if let Err(why) = Box::pin(pump::step_up(ctx, command, &rule, code)).await {
            fail(channel, pty, &why, 1).await;
            return false;
        }
    }
    let ev = ctx
        .events
        .event(EventType::COMMAND, Severity::Info, Outcome::Success)
        .details(serde_json::json!({ "command": command, "source": "exec" }));
    if let Err(e) = ctx.events.gate(ev).await {
        fail(channel, pty, &e.to_string(), 1).await;
        return false;
    }
    true
}

/// Asks for a step-up code; step-up needs a terminal to ask in.
async fn ask_code(
    channel: &mut Channel<Msg>,
    pty: bool,
    rule: &gatehouse_policy::CommandDenial,
) -> Result<String, String> {
    if !pty {
        return Err(format!(
            "this command needs a fresh verification code ({}); run it in a terminal: ssh -t",
            rule.rule
        ));
    }
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
    let code = crate::guard::read_code(channel, &mut resizes).await;
    let _ = channel.data_bytes(&b"\r\n"[..]).await;
    code.ok_or_else(|| pump::CANCELLED.to_string())
}

/// Starts the channel's recording when it is recorded. File-transfer
/// protocols are audited per file, not recorded as bytes: bulk transfers
/// must not balloon recordings. Err when the channel may not run without
/// one (the user was told).
async fn start_recording(
    ctx: &ChannelCtx,
    channel: &Channel<Msg>,
    setup: &Setup,
    request: &Request,
) -> Result<Option<Recorder>, ()> {
    let pty = setup.pty.is_some();
    let transfer_command = match request {
        Request::Exec(cmd) => {
            let c = String::from_utf8_lossy(cmd);
            gatehouse_record::scp_ops::ScpTracker::from_command(&c).is_some()
                || c.trim_start().starts_with("rsync --server")
        }
        _ => false,
    };
    let started = match request {
        _ if !ctx.who.config.recording.enabled => return Ok(None),
        Request::Subsystem(_) => return Ok(None),
        Request::Exec(_) if transfer_command => return Ok(None),
        Request::Shell | Request::Exec(_) => recorder::start(
            ctx.events.clone(),
            &ctx.who,
            &ctx.dest,
            RecordingSpec {
                cols: setup.pty.as_ref().map(|p| p.cols).unwrap_or(80),
                rows: setup.pty.as_ref().map(|p| p.rows).unwrap_or(24),
                command: match request {
                    Request::Exec(cmd) => Some(String::from_utf8_lossy(cmd).to_string()),
                    _ => None,
                },
                term: setup.pty.as_ref().map(|p| p.term.clone()),
                pty,
            },
        ),
    };
    let why = match started {
        Ok(r) => return Ok(Some(r)),
        Err(why) => why,
    };
    let required = ctx.who.config.recording.required;
    let ev = ctx
        .events
        .event(EventType::RECORDING_FAILED, Severity::High, Outcome::Error)
        .reason(why.clone())
        .details(serde_json::json!({ "required": required }));
    let recorded = ctx.events.fact(ev).await;
    if required || !recorded {
        fail(
            channel,
            pty,
            &format!("{why}; recording is required, so the session cannot start; tell your administrator"),
            1,
        )
        .await;
        return Err(());
    }
    Ok(None)
}

/// Opens the matching channel on the target and passes on the set-up
/// and the main request. The error is what the user is told, with the
/// exit status.
async fn open_on_target(
    ctx: &ChannelCtx,
    setup: &Setup,
    request: &Request,
    eof_while_waiting: bool,
) -> Result<Channel<client::Msg>, (String, u32)> {
    let upstream = Box::pin(upstream_for(&ctx.events, &ctx.who, &ctx.dest))
        .await
        .map_err(|e| (e, 255))?;
    let up = upstream
        .handle
        .channel_open_session()
        .await
        .map_err(|e| (format!("the target refused a session channel: {e}"), 255))?;
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
            pump::spawn_agent_bridge(ctx, upstream.clone()).await;
        }
        match request {
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
    match sent {
        Ok(()) => Ok(up),
        Err(e) => Err((format!("the target connection failed: {e}"), 255)),
    }
}

/// What the pump saw goes into the session: the exit status, a lost
/// target, and a request the target refused.
async fn pumped(ctx: &ChannelCtx, request: &Request, outcome: PumpOutcome) {
    if let Some(code) = outcome.exit_status {
        if let Ok(mut exit) = ctx.state.exit_status.lock() {
            *exit = Some(code);
        }
    }
    // A user who left first makes the gateway close the target's side,
    // which the pump may see as a vanished channel: not a lost target.
    if outcome.lost && !ctx.state.user_gone.load(Ordering::Acquire) {
        ctx.state.target_lost.store(true, Ordering::Release);
    }
    if !outcome.refused {
        return;
    }
    // The `command` event said it was sent; this says it never ran.
    let (kind, details) = match request {
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
        .events
        .event(kind, Severity::Warn, Outcome::Failure)
        .reason("the target refused the request; nothing ran")
        .details(details);
    ctx.events.fact(ev).await;
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

/// Why port forwarding is refused to this connection.
fn forwarding_refusal(ctx: &ChannelCtx) -> String {
    if ctx.dest.target.is_none() {
        "port forwarding needs a target: connect as USER:TARGET".to_string()
    } else {
        "port forwarding is not allowed by the user's roles".to_string()
    }
}

/// `ssh -L` (a `direct-tcpip` channel): authorised and audited before it
/// opens; without a target it is a ProxyJump.
pub(crate) async fn open_direct_tcpip(
    ctx: ChannelCtx,
    channel: Channel<Msg>,
    (host, port): (&str, u32),
    (orig_addr, orig_port): (&str, u32),
    jumped: bool,
    reply: server::ChannelOpenHandle,
) {
    if ctx.dest.target.is_none() && !jumped && ctx.dest.refusal.is_none() {
        return proxy_jump(ctx, channel, host, port, reply).await;
    }
    let details = serde_json::json!({
        "host": host, "port": port, "originator": format!("{orig_addr}:{orig_port}"),
    });
    if !forwarding_allowed(&ctx.who, &ctx.dest) {
        let ev = ctx
            .events
            .event(
                EventType::PORT_FORWARD_OPEN,
                Severity::Warn,
                Outcome::Denied,
            )
            .reason(forwarding_refusal(&ctx))
            .details(details);
        let _ = ctx.events.gate(ev).await;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    }
    let ev = ctx
        .events
        .event(
            EventType::PORT_FORWARD_OPEN,
            Severity::Info,
            Outcome::Success,
        )
        .details(details);
    if ctx.events.gate(ev).await.is_err() {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    }
    reply.accept().await;
    tokio::spawn(pump::forward_channel(
        ctx,
        channel,
        host.to_string(),
        port,
        orig_addr.to_string(),
        orig_port,
    ));
}

/// `ssh -J user@gw login@TARGET`: serve the inner connection for a
/// configured target. Any other host is refused: the gateway is not an
/// open proxy.
async fn proxy_jump(
    ctx: ChannelCtx,
    channel: Channel<Msg>,
    host: &str,
    port: u32,
    reply: server::ChannelOpenHandle,
) {
    if ctx.who.config.target(host).is_none() {
        let mut ev = ctx
            .events
            .event(EventType::ACCESS_DENIED, Severity::Warn, Outcome::Denied)
            .reason(format!(
                "ProxyJump to {host}:{port}, which is not a configured target"
            ))
            .details(serde_json::json!({ "via": "proxyjump", "port": port }));
        ev.target = Some(truncate(host, 64));
        let _ = ctx.events.gate(ev).await;
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: format!("gatehouse: access denied to {host:?}"),
            })
            .await;
        return;
    }
    reply.accept().await;
    let jump = Jump {
        user: ctx.who.user.clone(),
        target: host.to_string(),
    };
    let serve = ctx.shared.serve_inner;
    tokio::spawn(serve(
        ctx.shared.clone(),
        channel.into_stream(),
        ctx.state.peer,
        jump,
    ));
}

/// `ssh -R`: the target listens on the user's behalf (when their roles
/// allow port forwarding), audited like `ssh -L`. The port the target
/// bound, or None when refused.
pub(crate) async fn tcpip_forward(ctx: ChannelCtx, address: &str, port: u32) -> Option<u32> {
    let mut details = serde_json::json!({
        "direction": "remote", "listen": format!("{address}:{port}"),
    });
    let refused = |reason: String, details: serde_json::Value| {
        ctx.events
            .event(
                EventType::PORT_FORWARD_OPEN,
                Severity::Warn,
                Outcome::Denied,
            )
            .reason(reason)
            .details(details)
    };
    if !forwarding_allowed(&ctx.who, &ctx.dest) {
        let _ = ctx
            .events
            .gate(refused(forwarding_refusal(&ctx), details))
            .await;
        return None;
    }
    let upstream: Arc<Upstream> = match upstream_for(&ctx.events, &ctx.who, &ctx.dest).await {
        Ok(u) => u,
        Err(e) => {
            let _ = ctx.events.gate(refused(e, details)).await;
            return None;
        }
    };
    // Audit first: the target listens only once this is recorded.
    let ev = ctx
        .events
        .event(
            EventType::PORT_FORWARD_OPEN,
            Severity::Info,
            Outcome::Success,
        )
        .details(details.clone());
    if ctx.events.gate(ev).await.is_err() {
        return None;
    }
    match upstream.handle.tcpip_forward(address, port).await {
        Ok(bound) => {
            tokio::spawn(pump::remote_forwards(ctx, upstream));
            Some(if port == 0 { bound } else { port })
        }
        Err(e) => {
            details["port"] = port.into();
            let ev = ctx
                .events
                .event(
                    EventType::PORT_FORWARD_CLOSE,
                    Severity::Info,
                    Outcome::Failure,
                )
                .reason(format!(
                    "the target refused to listen on {address}:{port}: {e}"
                ))
                .details(details);
            ctx.events.fact_unstopped(ev).await;
            None
        }
    }
}

/// Cancels an `ssh -R` forward on the target.
pub(crate) async fn cancel_tcpip_forward(state: &ConnState, address: &str, port: u32) -> bool {
    let upstream = state.upstream.lock().await.clone();
    match upstream {
        Some(Ok(up)) => up.handle.cancel_tcpip_forward(address, port).await.is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::env_allowed;

    #[test]
    fn accept_env_patterns() {
        let p = vec!["LANG".to_string(), "LC_*".to_string()];
        assert!(env_allowed(&p, "LANG"));
        assert!(env_allowed(&p, "LC_ALL"));
        assert!(!env_allowed(&p, "LD_PRELOAD"));
        assert!(!env_allowed(&p, "LANGUAGE"));
    }
}
