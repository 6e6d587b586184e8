//! The SSH side of Gatehouse: the server that users' OpenSSH clients reach,
//! the client that reaches targets, and the bridge between them.
//!
//! This is the only crate that knows russh. The data path is
//! accept → authenticate → authorise → connect upstream → bridge → audit;
//! each phase lives in one module:
//! - [`server`]: accept loop, connection limits, authentication, channel
//!   requests (the russh `Handler`).
//! - [`upstream`]: connect and verify a target.
//! - [`bridge`]: copy channel data both ways with flow control, forward
//!   requests, exit statuses and signals.
//! - [`audit`]: the one function through which every security decision
//!   becomes an event.

pub mod audit;
pub mod bridge;
pub mod certs;
mod guard;
pub mod keys;
mod limits;
pub mod menu;
pub mod recorder;
pub mod server;
mod transfers;
pub mod upstream;

use std::path::PathBuf;

pub use server::{Gateway, GatewayHandle};

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
