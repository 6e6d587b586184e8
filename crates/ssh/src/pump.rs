//! The pump: copies a running channel's data both ways with flow
//! control, hands each chunk to the taps (recorder, transfer audit,
//! command guard), forwards window changes, signals and exit statuses;
//! and the raw copies of port forwards and agent channels.
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
use russh::server::Msg;
use russh::{client, Channel, ChannelMsg, Sig};

use crate::connect::upstream_for;
use crate::guard::LineGuard;
use crate::limits::clamp_pty;
use crate::recorder::Recorder;
use crate::session::ChannelCtx;
use crate::transfers::TransferAudit;

/// Bridges agent channels the target opens back to the user's agent.
pub(crate) async fn spawn_agent_bridge(ctx: &ChannelCtx, upstream: Arc<crate::upstream::Upstream>) {
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

/// How long the target's EOF waits for its exit status before it is
/// passed on alone (a command that closed its output and runs on).
const EOF_HOLD: Duration = Duration::from_millis(200);

/// The taps a session channel's data passes through.
#[derive(Clone, Copy)]
pub(crate) struct Taps<'a> {
    pub rec: Option<&'a Recorder>,
    pub transfers: Option<&'a TransferAudit>,
    pub guard: Option<&'a LineGuard>,
}

/// Copies a session channel both ways until either side closes.
pub(crate) async fn pump(
    ctx: &ChannelCtx,
    user: Channel<Msg>,
    up: Channel<client::Msg>,
    pty: bool,
    taps: Taps<'_>,
) -> PumpOutcome {
    let user_id = user.id();
    let (mut user_rx, user_tx) = user.split();
    let (mut up_rx, up_tx) = up.split();
    let to_target = to_target(ctx, &mut user_rx, &user_tx, &up_tx, taps);
    let to_user = to_user(ctx, &mut up_rx, &user_tx, user_id, pty, taps);
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

/// The user's side towards the target: data through the taps, EOF,
/// window changes and signals. Returns the bytes passed on.
async fn to_target(
    ctx: &ChannelCtx,
    user_rx: &mut russh::ChannelReadHalf,
    user_tx: &russh::ChannelWriteHalf<Msg>,
    up_tx: &russh::ChannelWriteHalf<client::Msg>,
    taps: Taps<'_>,
) -> u64 {
    let Taps {
        rec,
        transfers,
        guard,
    } = taps;
    let mut n = 0u64;
    while let Some(msg) = user_rx.wait().await {
        let r = match msg {
            ChannelMsg::Data { data } => {
                n += data.len() as u64;
                ctx.state
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(g) = guard {
                    Box::pin(guarded_input(ctx, g, &data, user_rx, user_tx, up_tx, rec)).await
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
                    ctx.who.config.server.max_pty_cols,
                    ctx.who.config.server.max_pty_rows,
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
}

/// The target's side towards the user: data and stderr through the
/// taps, EOF, exit status or signal, a refused request, a lost target.
/// Returns the bytes passed on, the exit status, whether the target
/// refused the request and whether its connection was lost.
async fn to_user(
    ctx: &ChannelCtx,
    up_rx: &mut russh::ChannelReadHalf,
    user_tx: &russh::ChannelWriteHalf<Msg>,
    user_id: russh::ChannelId,
    pty: bool,
    taps: Taps<'_>,
) -> (u64, Option<u32>, bool, bool) {
    let Taps {
        rec,
        transfers,
        guard,
    } = taps;
    let handle = &ctx.handle;
    let mut n = 0u64;
    let mut exit = None;
    let mut refused = false;
    let mut eof = HeldEof::default();
    // The upstream channel vanished without a close: its connection
    // died (the target's sshd, the network).
    let mut lost = false;
    loop {
        let Ok(next) = eof.next(up_rx, user_tx).await else {
            break;
        };
        let Some(msg) = next else {
            lost = true;
            break;
        };
        let r = match msg {
            ChannelMsg::Data { data } => {
                n += data.len() as u64;
                ctx.state
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
                ctx.state
                    .bytes_out
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(r) = rec {
                    r.output(&data).await;
                }
                user_tx.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => {
                eof.held = true;
                Ok(())
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
                    .exit_signal_request(user_id, signal_name, core_dumped, error_message, lang_tag)
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
        if eof.held && exit.is_some() && eof.pass_on(user_tx).await.is_err() {
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
    if !eof.sent {
        let _ = user_tx.eof().await;
    }
    let _ = user_tx.close().await;
    (n, exit, refused, lost)
}

/// The target's EOF, held until its exit status follows (at most
/// `EOF_HOLD`) and passed on after it: a client that closes as soon as
/// both directions saw EOF (Dropbear's dbclient) would otherwise close
/// before the exit status arrived, and a channel the user closed takes
/// nothing more.
#[derive(Default)]
struct HeldEof {
    held: bool,
    sent: bool,
}

impl HeldEof {
    /// The target's next message (None: its channel is gone); a held EOF
    /// is passed on first when `EOF_HOLD` runs out. Err: the user's side
    /// is gone.
    async fn next(
        &mut self,
        up_rx: &mut russh::ChannelReadHalf,
        user_tx: &russh::ChannelWriteHalf<Msg>,
    ) -> Result<Option<ChannelMsg>, russh::Error> {
        loop {
            if !self.held {
                return Ok(up_rx.wait().await);
            }
            match tokio::time::timeout(EOF_HOLD, up_rx.wait()).await {
                Ok(next) => return Ok(next),
                Err(_) => self.pass_on(user_tx).await?,
            }
        }
    }

    async fn pass_on(
        &mut self,
        user_tx: &russh::ChannelWriteHalf<Msg>,
    ) -> Result<(), russh::Error> {
        (self.held, self.sent) = (false, true);
        user_tx.eof().await
    }
}

/// Passes keystrokes on with every Enter held until the line on screen
/// has been judged (see [`crate::guard`]).
async fn guarded_input(
    ctx: &ChannelCtx,
    guard: &LineGuard,
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
                let v = crate::guard::verdict(&ctx.who, &ctx.dest, &l);
                (l, v)
            })
            .find(|(_, v)| !matches!(v, Verdict::Allow))
            .unwrap_or((shown, Verdict::Allow));
        let refusal = match verdict {
            Verdict::Allow => None,
            Verdict::Deny(d) => {
                let ev = ctx
                    .events
                    .event(EventType::COMMAND_DENIED, Severity::Warn, Outcome::Denied)
                    .reason(format!("denied by {}", d.rule))
                    .details(serde_json::json!({ "command": line, "source": "interactive" }));
                ctx.events.fact(ev).await;
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
                        ctx.who.config.server.max_pty_cols,
                        ctx.who.config.server.max_pty_rows,
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

pub(crate) const CANCELLED: &str = "step-up verification cancelled; the command was not run";

/// Checks a step-up code and audits the outcome; the error is what the
/// user is told.
pub(crate) async fn step_up(
    ctx: &ChannelCtx,
    command: &str,
    rule: &gatehouse_policy::CommandDenial,
    code: Result<String, String>,
) -> Result<(), String> {
    let user = &ctx.who.user;
    let verdict = match code {
        Err(why) => Err(why),
        Ok(code) => match ctx.shared.store.totp(user).await {
            Ok(Some((sealed, _))) => match ctx
                .shared
                .totp_fresh(&ctx.who.config, user, &sealed, code.trim())
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
            .events
            .event(EventType::AUTH_SUCCESS, Severity::Info, Outcome::Success)
            .details(details),
        Err(why) => ctx
            .events
            .event(EventType::AUTH_FAILURE, Severity::Warn, Outcome::Failure)
            .reason(why.clone())
            .details(details),
    };
    if verdict.is_ok() {
        ev.mfa = true;
    }
    if let Err(e) = ctx.events.gate(ev).await {
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
    let to_target = one_way(&mut user_rx, &up_tx, &sent_in);
    let to_user = one_way(&mut up_rx, &user_tx, &sent_out);
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

/// One direction of [`raw_pump`]: data and EOF passed on (counted) until
/// either side closes; then the receiving side is closed.
async fn one_way<S>(
    rx: &mut russh::ChannelReadHalf,
    tx: &russh::ChannelWriteHalf<S>,
    sent: &std::sync::atomic::AtomicU64,
) where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(msg) = rx.wait().await {
        let r = match msg {
            ChannelMsg::Data { data } => {
                sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                tx.data_bytes(data).await
            }
            ChannelMsg::Eof => tx.eof().await,
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if r.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
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
    let upstream = match Box::pin(upstream_for(&ctx.events, &ctx.who, &ctx.dest)).await {
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
                .events
                .event(
                    EventType::PORT_FORWARD_CLOSE,
                    Severity::Info,
                    Outcome::Failure,
                )
                .reason(format!("the target could not open {host}:{port}: {e}"))
                .details(serde_json::json!({ "host": host, "port": port }));
            ctx.events.fact(ev).await;
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
        .events
        .event(
            EventType::PORT_FORWARD_CLOSE,
            Severity::Info,
            Outcome::Success,
        )
        .details(details);
    ctx.events.fact(ev).await;
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
                        .events
                        .event(
                            EventType::PORT_FORWARD_CLOSE,
                            Severity::Info,
                            Outcome::Failure,
                        )
                        .reason(format!(
                            "the user's client refused the forwarded connection: {e}"
                        ))
                        .details(details);
                    ctx.events.fact(ev).await;
                    let _ = f.channel.close().await;
                    return;
                }
            };
            let ev = ctx
                .events
                .event(
                    EventType::PORT_FORWARD_OPEN,
                    Severity::Info,
                    Outcome::Success,
                )
                .details(details.clone());
            if !ctx.events.fact(ev).await {
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
