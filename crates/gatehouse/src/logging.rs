//! The gateway's log on stderr.
//!
//! Usernames, commands, paths and reasons in log lines come from users.
//! Every field and message is written through
//! [`gatehouse_model::escape_control`], whether it was logged with `?`
//! (Debug) or `%` (Display), so that nothing a user sends can drive the
//! terminal of whoever reads the log. Colour only when stderr is a
//! terminal.

use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};

/// Writes one field: `name=value`, or the bare message, escaped.
fn write_field(
    w: &mut Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    let text = format!("{value:?}");
    let text = gatehouse_model::escape_control(&text);
    if field.name() == "message" {
        write!(w, "{text}")
    } else {
        write!(w, "{field}={text}")
    }
}

/// Installs the subscriber: `GATEHOUSE_LOG` filter (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(debug_fn(write_field).delimited(" "))
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn display_debug_and_message_fields_are_escaped() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(debug_fn(write_field).delimited(" "))
            .finish();
        let evil = "alice\x1b]0;t\x07\r\x08\0\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(user = %evil, other = ?evil, "seen {}", evil);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let body = text.trim_end_matches('\n');
        assert!(
            !body.chars().any(gatehouse_model::text::is_unsafe_char),
            "{body:?}"
        );
        assert!(
            body.contains("user=alice\\e]0;t\\x07\\r\\x08\\x00\\u{202e}"),
            "{body}"
        );
        assert!(body.contains("seen alice\\e]0;t"), "{body}");
        assert!(body.contains("other=\"alice\\u{1b}"), "{body}");
    }
}
