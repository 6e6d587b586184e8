//! Pure byte-stream transforms for recording and auditing sessions: no
//! I/O beyond the `Write` they are given, tested with data.
//!
//! - [`asciicast`]: asciicast v2 writer (what any asciinema player plays).
//! - [`capture`]: exact interactive command lines from a terminal emulator.

pub mod asciicast;
pub mod capture;
pub mod scp_ops;
pub mod sftp_ops;
