//! asciicast v2 (the format every asciinema player reads): a JSON header
//! line, then one JSON array per event: `[time, code, data]` with code
//! `o` (output), `i` (input), `r` (resize, data "COLSxROWS") or `m`
//! (marker). Writes go straight to the underlying writer so a recording
//! streams to disk; memory does not grow with session length.

use std::io::{self, Write};

use serde::Serialize;

/// The `gatehouse` object in the header: who, where, as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub user: String,
    pub target: String,
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Header {
    pub version: u8,
    pub width: u32,
    pub height: u32,
    /// Unix time in seconds of the start of the recording.
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub title: String,
    pub env: serde_json::Map<String, serde_json::Value>,
    pub gatehouse: SessionInfo,
}

/// Writes events, keeping UTF-8 intact across chunk boundaries: a
/// multi-byte character split between two packets is held back until its
/// end arrives, and invalid bytes become U+FFFD.
pub struct CastWriter<W: Write> {
    out: W,
    pending_o: Vec<u8>,
    pending_i: Vec<u8>,
}

impl<W: Write> CastWriter<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<CastWriter<W>> {
        let line = serde_json::to_string(header).map_err(io::Error::other)?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(CastWriter {
            out,
            pending_o: Vec::new(),
            pending_i: Vec::new(),
        })
    }

    pub fn output(&mut self, t: f64, data: &[u8]) -> io::Result<()> {
        let text = take_utf8(&mut self.pending_o, data);
        self.event(t, "o", &text)
    }

    pub fn input(&mut self, t: f64, data: &[u8]) -> io::Result<()> {
        let text = take_utf8(&mut self.pending_i, data);
        self.event(t, "i", &text)
    }

    pub fn resize(&mut self, t: f64, cols: u32, rows: u32) -> io::Result<()> {
        self.event(t, "r", &format!("{cols}x{rows}"))
    }

    pub fn marker(&mut self, t: f64, label: &str) -> io::Result<()> {
        self.event(t, "m", label)
    }

    fn event(&mut self, t: f64, code: &str, data: &str) -> io::Result<()> {
        if data.is_empty() && code != "m" {
            return Ok(());
        }
        // Straight into the writer: no line is built in memory first.
        // The same bytes as serde_json writes for the tuple (a test holds
        // them equal), with the data escaped a word at a time.
        self.out.write_all(b"[")?;
        serde_json::to_writer(&mut self.out, &round_time(t)).map_err(io::Error::other)?;
        self.out.write_all(b",\"")?;
        write_escaped(&mut self.out, code)?;
        self.out.write_all(b"\",\"")?;
        write_escaped(&mut self.out, data)?;
        self.out.write_all(b"\"]\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer the cast goes to.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One event line `[time, code, data]` of a cast, or `None` for anything
/// else (the header, a corrupt line, a partial last line left by a crash).
pub fn parse_event(line: &str) -> Option<(f64, String, String)> {
    serde_json::from_str(line.trim_end()).ok()
}

/// A whole cast as one JSON document, `{"header": {...}, "events":
/// [[t, code, data], ...]}` (what `sessions export --format json` prints).
/// Fails when the header line is not JSON; other lines that are not JSON
/// are skipped (a crash can leave a partial last line) and their 1-based
/// line numbers returned alongside.
pub fn cast_to_json(text: &str) -> Result<(String, Vec<usize>), serde_json::Error> {
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("{}"))?;
    let mut events = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => events.push(v),
            Err(_) => skipped.push(n + 2),
        }
    }
    let doc = serde_json::json!({"header": header, "events": events});
    Ok((doc.to_string(), skipped))
}

/// Writes `s` as the inside of a JSON string, escaped exactly as
/// serde_json escapes it: `"` and `\\`, the short forms `\b \t \n \f \r`,
/// other control characters as `\u00xx`. Terminal output is mostly
/// bytes that need none, so it is scanned eight bytes at a time and
/// copied in runs.
fn write_escaped<W: Write>(out: &mut W, s: &str) -> io::Result<()> {
    let bytes = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes[i..].first_chunk::<8>() {
            if !may_need_escape(u64::from_le_bytes(*word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => {
                i += 1;
                continue;
            }
        };
        out.write_all(&bytes[start..i])?;
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.write_all(&[b'\\', b'u', b'0', b'0', hex[0], hex[1]])?;
        } else {
            out.write_all(&[b'\\', short])?;
        }
        i += 1;
        start = i;
    }
    out.write_all(&bytes[start..])
}

/// True when one of the eight bytes of `w` may be a control character,
/// `"` or `\\` (never false when one is; the bytes are then checked one
/// by one).
fn may_need_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

fn round_time(t: f64) -> f64 {
    (t * 1_000_000.0).round() / 1_000_000.0
}

/// Appends `data` to `pending` and returns the longest valid UTF-8 prefix
/// as text (invalid sequences replaced), keeping an incomplete trailing
/// character for the next call.
fn take_utf8<'a>(pending: &mut Vec<u8>, data: &'a [u8]) -> std::borrow::Cow<'a, str> {
    // The usual case: nothing held back and the chunk is whole UTF-8.
    if pending.is_empty() {
        if let Ok(s) = std::str::from_utf8(data) {
            return std::borrow::Cow::Borrowed(s);
        }
    }
    pending.extend_from_slice(data);
    let mut out = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *pending = keep;
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_the_bytes_serde_json_writes() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        texts.push((0u8..0x80).map(char::from).collect());
        texts.push("é€😀 \u{7f}\u{80}\u{2028}".into());
        // Every alignment of an escape against the eight-byte scan.
        for n in 0..20 {
            for c in ['"', '\\', '\n', '\u{1b}', 'x'] {
                texts.push(format!("{}{c}{}", "a".repeat(n), "b".repeat(20 - n)));
            }
        }
        texts.push("line one\r\nline two\r\n\u{1b}[1;31mred\u{1b}[0m\ttab".repeat(40));
        for (i, text) in texts.iter().enumerate() {
            let t = i as f64 * 0.123_456_789;
            let mut w = CastWriter {
                out: Vec::new(),
                pending_o: Vec::new(),
                pending_i: Vec::new(),
            };
            w.event(t, "o", text).unwrap();
            let mut want = serde_json::to_vec(&(round_time(t), "o", text.as_str())).unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&w.out),
                String::from_utf8_lossy(&want),
                "{text:?}"
            );
        }
    }

    use super::*;

    fn header() -> Header {
        Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            command: None,
            title: "alice@web01".into(),
            env: serde_json::Map::new(),
            gatehouse: SessionInfo {
                session_id: "S1".into(),
                user: "alice".into(),
                target: "web01".into(),
                login: "deploy".into(),
            },
        }
    }

    #[test]
    fn writes_a_v2_header_and_events() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        w.output(0.5, b"hello\r\n").unwrap();
        w.input(0.75, b"ls\r").unwrap();
        w.resize(1.0, 100, 30).unwrap();
        w.marker(1.25, "ls").unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let h: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(h["version"], 2);
        assert_eq!(h["width"], 80);
        assert_eq!(h["gatehouse"]["user"], "alice");
        assert_eq!(lines[1], r#"[0.5,"o","hello\r\n"]"#);
        assert_eq!(lines[2], r#"[0.75,"i","ls\r"]"#);
        assert_eq!(lines[3], r#"[1.0,"r","100x30"]"#);
        assert_eq!(lines[4], r#"[1.25,"m","ls"]"#);
    }

    #[test]
    fn casts_are_read_back_skipping_broken_lines() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        w.output(0.5, b"hi").unwrap();
        let mut text = String::from_utf8(w.into_inner()).unwrap();
        text.push_str("[1.0, \"o\", \"cut");
        let (json, skipped) = cast_to_json(&text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["header"]["gatehouse"]["user"], "alice");
        assert_eq!(v["events"], serde_json::json!([[0.5, "o", "hi"]]));
        assert_eq!(skipped, vec![3]);
        assert_eq!(
            parse_event(text.lines().nth(1).unwrap()),
            Some((0.5, "o".to_string(), "hi".to_string()))
        );
        assert_eq!(parse_event(text.lines().next().unwrap()), None);
        assert!(cast_to_json("not json\n").is_err());
    }

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let mut w = CastWriter::new(Vec::new(), &header()).unwrap();
        let snow = "é☃".as_bytes();
        w.output(0.1, &snow[..2]).unwrap();
        w.output(0.2, &snow[2..4]).unwrap();
        w.output(0.3, &snow[4..]).unwrap();
        w.output(0.4, &[0xff, b'a']).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let joined: String = events.iter().map(|e| e[2].as_str().unwrap()).collect();
        assert_eq!(joined, "é☃\u{FFFD}a");
    }
}
