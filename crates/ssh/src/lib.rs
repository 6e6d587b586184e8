//! The SSH side of Gatehouse: the server that users' OpenSSH clients reach,
//! the client that reaches targets, and the bridge between them.
//!
//! This is the only crate that knows russh. The modules read in the
//! direction data flows — accept → connection → authentication → access
//! decision → channel → pump → taps → audit trail — and each imports only
//! modules listed above it (bottom first; `tests/module_order.rs` keeps it
//! so):
//! - [`keys`]: load, generate and parse SSH keys.
//! - [`certs`]: check user certificates against the trusted CAs.
//! - [`limits`]: login deadline, startup and per-user connection limits.
//! - `proxy`: the PROXY protocol header a trusted load balancer sends.
//! - [`audit`]: the one function through which every security decision
//!   becomes an event (gating events and spooled facts).
//! - `nodes`: this node's heartbeat in the store, and closing the
//!   sessions of nodes that stopped heartbeating.
//! - [`upstream`]: connect and verify a target.
//! - `session`: the per-connection types every stage shares, and the
//!   one event emitter of a session.
//! - [`recorder`]: a tap: asciicast recording and interactive commands.
//! - [`transfers`]: a tap: SFTP and scp operations as events.
//! - `guard`: a tap: judges interactive command lines before they run.
//! - `connect`: connects the session's target once (`session.start`,
//!   `max_session`).
//! - `pump`: copies channel data both ways through the taps; port
//!   forwards and agent channels.
//! - `access`: where a user may go (policy, grants, `access.denied`) and
//!   the just-in-time approval wait.
//! - [`menu`]: the target menu and gateway commands; returns a choice.
//! - `channel`: session channel set-up, authorisation and dispatch;
//!   port-forward and ProxyJump channels.
//! - `sso`: single sign-on at an identity provider: bound keys checked
//!   with the provider, device sign-ins, roles from claims.
//! - `auth`: publickey, certificate, password, single sign-on and TOTP
//!   authentication, failure throttling and blocking.
//! - `handler`: the russh `Handler`; each method hands over to a stage.
//! - `accept`: the listener, its limits, kill requests, the spool
//!   flusher, and one task per connection up to `session.end`.

mod accept;
mod access;
pub mod audit;
mod auth;
pub mod certs;
mod channel;
mod connect;
mod guard;
mod handler;
pub mod keys;
mod limits;
pub mod menu;
mod nodes;
mod proxy;
mod pump;
pub mod recorder;
mod session;
mod sso;
mod transfers;
pub mod upstream;

use std::path::PathBuf;

pub use accept::{Gateway, GatewayHandle, KILL_POLL};
pub use channel::env_allowed;

/// Not API: the command guard's screen, driven without a session, for
/// gatehouse-fuzzing (the guard itself stays private).
#[doc(hidden)]
pub mod fuzzing {
    pub struct Guard(crate::guard::LineGuard);

    impl Guard {
        pub fn new(cols: u32, rows: u32) -> Guard {
            Guard(crate::guard::LineGuard::new(cols, rows))
        }
        pub fn input(&self, data: &[u8]) {
            self.0.input(data)
        }
        pub fn output(&self, data: &[u8]) {
            self.0.output(data)
        }
        pub fn resize(&self, cols: u32, rows: u32) {
            self.0.resize(cols, rows)
        }
        pub fn line_now(&self) -> Option<String> {
            self.0.line_now()
        }
    }
}

/// The SSH channel window both legs advertise: OpenSSH's own (sshd's and
/// ssh's). A larger one lets the far side queue that much per channel
/// whenever the other leg is slower, and OpenSSH's buffers pay for it in
/// copies and page faults: with 8 MiB, 100 concurrent streams through the
/// gateway moved 46 MB/s in all; with 2 MiB, 154 MB/s (BENCHMARKS.md).
pub const CHANNEL_WINDOW: u32 = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{what} {}: {message}", path.display())]
    Key {
        path: PathBuf,
        what: String,
        message: String,
    },
    #[error("cannot listen on {addr}: {source}; check server.listen and that no other program uses the port")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}
