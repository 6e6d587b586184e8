//! Showing untrusted text to a person.
//!
//! Usernames, command lines, reasons and paths in the audit trail are
//! stored exactly as they arrived: they are evidence. Written raw to an
//! administrator's terminal, though, an ESC or CR in them lets a user
//! rewrite what the administrator sees (clear the line, move the cursor,
//! set the window title, reverse the text with a bidi override). Every
//! human-readable output therefore goes through [`escape_control`]; JSON
//! output needs nothing more, since JSON escapes control characters itself.

use std::borrow::Cow;

/// Lowercase hex of `bytes` (digests, tokens), two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Does `c` need escaping before it reaches a terminal? C0 controls
/// (including CR, LF and TAB), DEL, C1 controls, and the Unicode
/// characters that reorder or separate text invisibly (bidi embeddings,
/// overrides, isolates and marks; line and paragraph separators).
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `s` with every character [`is_unsafe_char`] replaced by a visible
/// escape: `\e` (ESC), `\r`, `\n`, `\t`, `\x07` for other C0 controls and
/// DEL, `\u{85}` / `\u{202e}` for C1 and Unicode controls. Everything else
/// (backslashes included) is unchanged, so ordinary text reads as typed;
/// the exact bytes stay available in the JSON output.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\u{1b}' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        let s = "grep 'a\\|b' /var/log/syslog — ünïcödé ✓";
        assert!(matches!(escape_control(s), Cow::Borrowed(_)));
        assert_eq!(escape_control(s), s);
    }

    #[test]
    fn controls_become_visible_escapes() {
        let cases = [
            ("alice\x1b]0;title\x07", "alice\\e]0;title\\x07"),
            (
                "true; \x1b[2K\r\x1b[1Aecho harmless",
                "true; \\e[2K\\r\\e[1Aecho harmless",
            ),
            ("a\nb\tc\x08d\0e\x7f", "a\\nb\\tc\\x08d\\x00e\\x7f"),
            ("c1\u{9b}31m", "c1\\u{9b}31m"),
            ("txt.\u{202e}fdp.exe", "txt.\\u{202e}fdp.exe"),
            (
                "\u{2066}x\u{2069}\u{200f}\u{61c}\u{2028}",
                "\\u{2066}x\\u{2069}\\u{200f}\\u{61c}\\u{2028}",
            ),
        ];
        for (raw, shown) in cases {
            let out = escape_control(raw);
            assert_eq!(out, shown, "{raw:?}");
            assert!(!out.chars().any(is_unsafe_char), "{out:?}");
        }
    }
}
