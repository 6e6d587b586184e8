//! Command rules on interactive lines.
//!
//! When a role has command deny rules or `reauth_commands`, the bridge
//! keeps a terminal emulator of its own for the session and holds every
//! Enter the user types until it has judged the line the screen shows
//! (the same line the shell is about to run, whatever editing, history
//! recall or completion produced it). An allowed line goes on at once; a
//! denied one is erased from the shell's line buffer and never submitted;
//! a step-up line waits for a fresh TOTP code typed into the session.
//!
//! Sessions whose roles have no command rules skip all of this: no
//! emulator, no held keystrokes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gatehouse_policy::CommandDenial;
use gatehouse_record::capture::LineCapture;
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use crate::session::{Destination, Identity};

/// Longest wait for the echo of what was typed before judging the line.
const ECHO_WAIT: Duration = Duration::from_millis(500);
/// Output quiet for this long counts as a finished echo.
const QUIET: Duration = Duration::from_millis(30);
/// How long the user has to type a step-up code.
pub(crate) const CODE_WAIT: Duration = Duration::from_secs(60);

/// Erases the line being edited: end of line, then kill to its start
/// (readline's and the tty driver's line-kill alike).
pub(crate) const ERASE_LINE: &[u8] = b"\x05\x15";

struct Screen {
    capture: LineCapture,
    last_output: Instant,
    /// Typed bytes not yet followed by any output (their echo is due).
    echo_pending: bool,
    /// What was typed since the last Enter (bounded), for lines the
    /// screen does not show yet: typed ahead before the shell's prompt.
    typed: Vec<u8>,
}

/// Most typed bytes kept per line.
const TYPED_MAX: usize = 4096;

pub(crate) struct LineGuard {
    screen: Mutex<Screen>,
}

impl LineGuard {
    pub fn new(cols: u32, rows: u32) -> LineGuard {
        LineGuard {
            screen: Mutex::new(Screen {
                capture: LineCapture::new(cols, rows),
                last_output: Instant::now(),
                echo_pending: false,
                typed: Vec::new(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Screen) -> R) -> R {
        let mut s = self.screen.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Bytes passed on to the target.
    pub fn input(&self, data: &[u8]) {
        self.with(|s| {
            s.capture.input(data);
            if !data.is_empty() {
                s.echo_pending = true;
            }
            for &b in data {
                if b == b'\r' || b == b'\n' {
                    s.typed.clear();
                } else if s.typed.len() < TYPED_MAX {
                    s.typed.push(b);
                }
            }
        })
    }

    /// The line as typed since the last Enter, when it was plain typing
    /// (no escape sequences: no history recall or cursor movement, whose
    /// result only the screen knows); backspace and line-kill applied.
    pub fn typed_line(&self) -> Option<String> {
        self.with(|s| {
            if s.typed.contains(&0x1b) {
                return None;
            }
            let mut out: Vec<u8> = Vec::new();
            for &b in &s.typed {
                match b {
                    0x08 | 0x7f => {
                        out.pop();
                    }
                    0x15 => out.clear(),
                    b if b < 0x20 => {}
                    b => out.push(b),
                }
            }
            let text = String::from_utf8_lossy(&out).trim().to_string();
            (!text.is_empty()).then_some(text)
        })
    }

    /// Bytes from the target.
    pub fn output(&self, data: &[u8]) {
        self.with(|s| {
            let _ = s.capture.output(data);
            s.last_output = Instant::now();
            s.echo_pending = false;
        })
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        self.with(|s| s.capture.resize(cols, rows))
    }

    /// The line the user is submitting, once the echo of what they typed
    /// has arrived (or [`ECHO_WAIT`] has passed). `None` inside
    /// full-screen programs, where Enter is not a command.
    pub async fn settled_line(&self) -> Option<String> {
        let start = Instant::now();
        loop {
            let (pending, quiet_for) = self.with(|s| (s.echo_pending, s.last_output.elapsed()));
            if (!pending && quiet_for >= QUIET) || start.elapsed() >= ECHO_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.line_now()
    }

    /// The line the screen shows now (what [`Self::settled_line`] judges).
    pub fn line_now(&self) -> Option<String> {
        self.with(|s| s.capture.pending_line())
    }
}

/// What to do with a line.
pub(crate) enum Verdict {
    Allow,
    Deny(CommandDenial),
    StepUp(CommandDenial),
}

pub(crate) fn verdict(who: &Identity, dest: &Destination, line: &str) -> Verdict {
    if line.trim().is_empty() {
        return Verdict::Allow;
    }
    let target = dest.target.clone().unwrap_or_default();
    let login = dest.login.clone().unwrap_or_default();
    if let Some(d) = gatehouse_policy::command_denied(&who.config, &who.user, &target, &login, line)
    {
        return Verdict::Deny(d);
    }
    if let Some(r) = gatehouse_policy::reauth_required(&who.config, &who.user, line) {
        return Verdict::StepUp(r);
    }
    Verdict::Allow
}

/// Whether lines of this session need judging at all.
pub(crate) fn needed(who: &Identity, dest: &Destination) -> bool {
    let target = dest.target.clone().unwrap_or_default();
    let login = dest.login.clone().unwrap_or_default();
    gatehouse_policy::has_command_rules(&who.config, &who.user, &target, &login)
}

/// Reads a line the user types (not echoed, not passed to the target):
/// a step-up code. `None` on Ctrl-C, Ctrl-D, a closed channel or the
/// timeout. Window changes that arrive meanwhile are returned in
/// `resizes` for the caller to pass on.
pub(crate) async fn read_code(
    user_rx: &mut impl MsgSource,
    resizes: &mut Vec<(u32, u32, u32, u32)>,
) -> Option<String> {
    let mut code = String::new();
    let deadline = tokio::time::Instant::now() + CODE_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, user_rx.next_msg())
            .await
            .ok()??;
        match msg {
            ChannelMsg::Data { data } => {
                for &b in data.iter() {
                    match b {
                        b'\r' | b'\n' => return Some(code),
                        0x03 | 0x04 => return None,
                        0x7f | 0x08 => {
                            code.pop();
                        }
                        b if b.is_ascii_graphic() && code.len() < 32 => code.push(b as char),
                        _ => {}
                    }
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => resizes.push((col_width, row_height, pix_width, pix_height)),
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

/// Where the user's channel messages come from: the whole channel before
/// the bridge starts, its read half after.
pub(crate) trait MsgSource {
    fn next_msg(&mut self) -> impl std::future::Future<Output = Option<ChannelMsg>> + Send;
}

impl MsgSource for ChannelReadHalf {
    fn next_msg(&mut self) -> impl std::future::Future<Output = Option<ChannelMsg>> + Send {
        self.wait()
    }
}

impl MsgSource for russh::Channel<Msg> {
    fn next_msg(&mut self) -> impl std::future::Future<Output = Option<ChannelMsg>> + Send {
        self.wait()
    }
}

/// Writes a gateway message on the user's terminal.
pub(crate) async fn tell(user_tx: &ChannelWriteHalf<Msg>, text: &str) {
    let _ = user_tx.data_bytes(text.as_bytes().to_vec()).await;
}
