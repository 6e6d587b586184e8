//! Files moved by legacy scp (`scp -O`): the remote command is
//! `scp -t PATH` (the target receives) or `scp -f PATH` (the target
//! sends), and the sender's stream is a sequence of control lines
//! (`C0644 SIZE NAME`, `D0755 0 NAME`, `E`, `T...`) each followed, for
//! files, by SIZE bytes of data and a NUL. Data is counted, not copied.

use serde::Serialize;

const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScpTransfer {
    /// `upload` (to the target) or `download`.
    pub direction: &'static str,
    pub path: String,
    pub name: String,
    pub mode: String,
    pub size: u64,
}

enum State {
    Line(Vec<u8>),
    Data {
        remaining: u64,
        file: ScpTransfer,
    },
    /// The NUL after a file's data.
    Trailer,
    Dead,
}

pub struct ScpTracker {
    upload: bool,
    recursive: bool,
    base: String,
    dirs: Vec<String>,
    state: State,
}

/// Splits a command line the way a POSIX shell would for simple words
/// and single/double quotes (enough for what scp clients send).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

impl ScpTracker {
    /// A tracker for `command` when it is a legacy scp sink or source.
    pub fn from_command(command: &str) -> Option<ScpTracker> {
        let w = words(command);
        let prog = w.first()?;
        if prog != "scp" && !prog.ends_with("/scp") {
            return None;
        }
        let (mut to, mut from, mut recursive) = (false, false, false);
        let mut path = None;
        let mut options_done = false;
        for word in &w[1..] {
            if !options_done && word == "--" {
                options_done = true;
            } else if !options_done && word.starts_with('-') && word.len() > 1 {
                for c in word[1..].chars() {
                    match c {
                        't' => to = true,
                        'f' => from = true,
                        'r' => recursive = true,
                        _ => {}
                    }
                }
            } else if path.is_none() {
                path = Some(word.clone());
            }
        }
        if to == from {
            return None;
        }
        Some(ScpTracker {
            upload: to,
            recursive,
            base: path.unwrap_or_else(|| ".".into()),
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
        })
    }

    pub fn direction(&self) -> &'static str {
        if self.upload {
            "upload"
        } else {
            "download"
        }
    }

    /// Bytes from the client to the target.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<ScpTransfer> {
        if self.upload {
            self.sender(data)
        } else {
            Vec::new()
        }
    }

    /// Bytes from the target to the client.
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<ScpTransfer> {
        if self.upload {
            Vec::new()
        } else {
            self.sender(data)
        }
    }

    fn path_for(&self, name: &str) -> String {
        let join = |base: &str, parts: &[String]| {
            let mut p = base.trim_end_matches('/').to_string();
            if p.is_empty() && base.starts_with('/') {
                p.push('/');
            }
            for part in parts {
                if !p.ends_with('/') {
                    p.push('/');
                }
                p.push_str(part);
            }
            p
        };
        if self.upload {
            if self.dirs.is_empty() && !self.recursive && !self.base.ends_with('/') {
                return self.base.clone();
            }
            let mut parts = self.dirs.clone();
            parts.push(name.to_string());
            join(&self.base, &parts)
        } else {
            if self.dirs.is_empty() {
                return self.base.clone();
            }
            // The first directory sent is the requested path itself.
            let mut parts: Vec<String> = self.dirs[1..].to_vec();
            parts.push(name.to_string());
            join(&self.base, &parts)
        }
    }

    fn sender(&mut self, mut data: &[u8]) -> Vec<ScpTransfer> {
        let mut done = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                State::Dead => break,
                State::Trailer => {
                    data = &data[1..];
                    self.state = State::Line(Vec::new());
                }
                State::Data { remaining, file } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        done.push(file.clone());
                        self.state = State::Trailer;
                    }
                }
                State::Line(buf) => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        buf.extend_from_slice(data);
                        if buf.len() > MAX_LINE {
                            self.state = State::Dead;
                        }
                        break;
                    };
                    buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    if buf.len() > MAX_LINE {
                        self.state = State::Dead;
                        break;
                    }
                    let line = String::from_utf8_lossy(buf).into_owned();
                    self.state = State::Line(Vec::new());
                    if let Some(file) = self.control(&line) {
                        done.push(file);
                    }
                }
            }
        }
        done
    }

    /// Handles one control line; returns a file that is complete already
    /// (an empty one).
    fn control(&mut self, line: &str) -> Option<ScpTransfer> {
        let kind = line.chars().next()?;
        let rest = &line[kind.len_utf8()..];
        match kind {
            'C' => {
                let mut parts = rest.splitn(3, ' ');
                let (mode, size, name) = (parts.next()?, parts.next()?, parts.next()?);
                let size = size.parse::<u64>().ok()?;
                let file = ScpTransfer {
                    direction: self.direction(),
                    path: self.path_for(name),
                    name: name.to_string(),
                    mode: mode.to_string(),
                    size,
                };
                if size == 0 {
                    self.state = State::Trailer;
                    return Some(file);
                }
                self.state = State::Data {
                    remaining: size,
                    file,
                };
                None
            }
            'D' => {
                let mut parts = rest.splitn(3, ' ');
                let (_, _, name) = (parts.next()?, parts.next()?, parts.next()?);
                if self.dirs.len() < 256 {
                    self.dirs.push(name.to_string());
                }
                None
            }
            'E' => {
                self.dirs.pop();
                None
            }
            // Times, warnings (\x01) and errors (\x02): nothing moved.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut ScpTracker, stream: &[u8], chunk: usize) -> Vec<ScpTransfer> {
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            out.extend(t.client_bytes(c));
            out.extend(t.server_bytes(c));
        }
        out
    }

    fn file(line: &str, data: &[u8]) -> Vec<u8> {
        let mut v = line.as_bytes().to_vec();
        v.extend_from_slice(data);
        v.push(0);
        v
    }

    #[test]
    fn commands_are_recognised() {
        let t = ScpTracker::from_command("scp -t /tmp/").unwrap();
        assert_eq!((t.direction(), t.base.as_str()), ("upload", "/tmp/"));
        let t = ScpTracker::from_command("scp -r -t -- 'dir with space'").unwrap();
        assert!(t.recursive);
        assert_eq!(t.base, "dir with space");
        let t = ScpTracker::from_command("/usr/bin/scp -v -f /etc/hosts").unwrap();
        assert_eq!((t.direction(), t.base.as_str()), ("download", "/etc/hosts"));
        for not in ["ls -la", "scp", "scp -t -f x", "echo scp -t /x", ""] {
            assert!(ScpTracker::from_command(not).is_none(), "{not}");
        }
    }

    #[test]
    fn a_single_upload_in_any_chunking() {
        let mut stream = b"T1700000000 0 1700000000 0\n".to_vec();
        stream.extend(file("C0644 11 a.txt\n", b"hello world"));
        for chunk in [1, 3, 1000] {
            let mut t = ScpTracker::from_command("scp -t /tmp/").unwrap();
            let got = feed(&mut t, &stream, chunk);
            assert_eq!(got.len(), 1, "chunk {chunk}");
            assert_eq!(got[0].path, "/tmp/a.txt");
            assert_eq!(got[0].size, 11);
            assert_eq!(got[0].mode, "0644");
        }
        let mut t = ScpTracker::from_command("scp -t /tmp/renamed.txt").unwrap();
        assert_eq!(feed(&mut t, &stream, 5)[0].path, "/tmp/renamed.txt");
    }

    #[test]
    fn a_recursive_upload_reports_nested_paths() {
        let mut s = b"D0755 0 top\n".to_vec();
        s.extend(file("C0644 3 one\n", b"abc"));
        s.extend_from_slice(b"D0700 0 sub\n");
        s.extend(file("C0600 0 empty\n", b""));
        s.extend(file("C0600 2 two\n", b"xy"));
        s.extend_from_slice(b"E\nE\n");
        let mut t = ScpTracker::from_command("scp -r -t /dst").unwrap();
        let got: Vec<String> = feed(&mut t, &s, 2).into_iter().map(|f| f.path).collect();
        assert_eq!(
            got,
            vec!["/dst/top/one", "/dst/top/sub/empty", "/dst/top/sub/two"]
        );
    }

    #[test]
    fn a_download_is_read_from_the_targets_stream() {
        let mut t = ScpTracker::from_command("scp -f /etc/hosts").unwrap();
        // The client's acknowledgements are not parsed.
        assert!(t.client_bytes(b"\0\0\0").is_empty());
        let got = t.server_bytes(&file("C0644 4 hosts\n", b"1234"));
        assert_eq!(got[0].direction, "download");
        assert_eq!(got[0].path, "/etc/hosts");
        let mut t = ScpTracker::from_command("scp -f /nope").unwrap();
        assert!(t
            .server_bytes(b"\x01scp: /nope: No such file or directory\n")
            .is_empty());
    }

    #[test]
    fn hostile_streams_stop_quietly() {
        let mut t = ScpTracker::from_command("scp -t /x/").unwrap();
        assert!(t.client_bytes(&vec![b'a'; 10_000]).is_empty());
        assert!(
            t.client_bytes(b"\nC0644 1 x\nz\0").is_empty(),
            "dead after an overlong line"
        );
        let mut t = ScpTracker::from_command("scp -t /x/").unwrap();
        assert!(t
            .client_bytes(b"C0644 notanumber x\nC bad\nD\nE\nE\n")
            .is_empty());
        let got = t.client_bytes(&file("C0644 1 ok\n", b"!"));
        assert_eq!(got.len(), 1);
    }
}
