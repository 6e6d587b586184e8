//! Exact interactive command lines, without an agent on the target.
//!
//! Guessing commands from keystrokes gets them wrong as soon as the user
//! edits the line, recalls history or completes with Tab. Instead, the
//! session's output runs through a terminal emulator (`vt100`), so the
//! gateway sees the same screen as the user. When the user presses Enter,
//! the line is taken from the screen at the moment the shell accepts it
//! (just before the shell moves to the next line): whatever editing,
//! recall or completion happened, that is the line the shell executes.
//!
//! The prompt is told apart from the command by remembering where the
//! cursor stood when the user started typing. Lines typed while a
//! full-screen program (vim, less, top) owns the alternate screen are not
//! commands and are ignored; so are empty lines (including passwords,
//! which are not echoed). A line ending in `\` continues on the next one.

use std::num::NonZeroU16;

/// The most scrollback-free rows/cols accepted (bounds memory).
const MAX_DIM: u16 = 1000;
/// Output since the last keystroke beyond which the emulator stops
/// parsing every byte and keeps only the tail (see [`LineCapture::output`]).
const LAZY_AFTER: usize = 256 * 1024;
/// How much output tail is kept in lazy mode: enough to redraw any screen.
const TAIL: usize = 64 * 1024;

pub struct LineCapture {
    parser: vt100::Parser,
    /// Screen text left of the cursor when the user began the line.
    prompt: Option<String>,
    /// Enters typed whose line has not yet been accepted by the shell.
    submits: usize,
    /// A line ended with `\`, waiting for its continuation.
    partial: String,
    /// Output bytes since the user last typed.
    since_input: usize,
    /// Bulk output mode: the tail of the output, not yet parsed.
    lazy: Option<Vec<u8>>,
    /// Alternate screen state seen while lazy.
    lazy_alt: bool,
    /// Screen size (rows, cols), kept while the emulator is dropped.
    dims: (NonZeroU16, NonZeroU16),
}

fn dim(v: u32, default: u16) -> NonZeroU16 {
    let v = u16::try_from(v).unwrap_or(MAX_DIM).min(MAX_DIM);
    NonZeroU16::new(v)
        .or(NonZeroU16::new(default))
        .unwrap_or(NonZeroU16::MIN)
}

impl LineCapture {
    pub fn new(cols: u32, rows: u32) -> LineCapture {
        let dims = (dim(rows, 24), dim(cols, 80));
        LineCapture {
            dims,
            parser: vt100::Parser::new(dims.0, dims.1, 0),
            prompt: None,
            submits: 0,
            partial: String::new(),
            since_input: 0,
            lazy: None,
            lazy_alt: false,
        }
    }

    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.dims = (dim(rows, 24), dim(cols, 80));
        if self.lazy.is_none() {
            self.parser.set_size(self.dims.0, self.dims.1);
        }
    }

    /// An idle session's screen costs 32 bytes a cell in the emulator;
    /// keep it as the escape sequences that redraw it instead (usually a
    /// few hundred bytes) until the user types again. Nothing is lost:
    /// waking replays them into a fresh emulator, as after bulk output.
    pub fn hibernate(&mut self) {
        if self.lazy.is_some() || self.submits > 0 || self.alternate() {
            return;
        }
        let state = self.parser.screen().state_formatted().into_bytes();
        self.lazy_alt = false;
        self.lazy = Some(state);
        self.parser = vt100::Parser::new(NonZeroU16::MIN, NonZeroU16::MIN, 0);
    }

    fn alternate(&self) -> bool {
        self.parser.screen().alternate_screen()
    }

    /// Keystrokes from the user.
    pub fn input(&mut self, data: &[u8]) {
        self.since_input = 0;
        self.wake();
        if self.alternate() {
            self.prompt = None;
            self.submits = 0;
            return;
        }
        for &b in data {
            if self.prompt.is_none() && self.submits == 0 {
                self.prompt = Some(self.left_of_cursor());
            }
            match b {
                b'\r' | b'\n' => self.submits = self.submits.saturating_add(1).min(64),
                // Ctrl-C abandons the line.
                0x03 => {
                    self.prompt = None;
                    self.submits = 0;
                    self.partial.clear();
                }
                _ => {}
            }
        }
    }

    /// Output from the target. Returns the command lines the shell
    /// accepted in this chunk, in order.
    ///
    /// Bulk output (a large `cat`, a build log) is not parsed byte by byte:
    /// after [`LAZY_AFTER`] bytes without a keystroke only the last
    /// [`TAIL`] bytes are kept, and replayed into a fresh screen when the
    /// user types again. The screen then looks as it would have; only
    /// switches to and from the alternate screen are tracked throughout.
    pub fn output(&mut self, data: &[u8]) -> Vec<String> {
        self.since_input = self.since_input.saturating_add(data.len());
        if self.submits == 0 {
            if self.lazy.is_none() && self.since_input > LAZY_AFTER {
                self.lazy_alt = self.alternate();
                self.lazy = Some(Vec::new());
            }
            if let Some(tail) = self.lazy.as_mut() {
                if let Some(alt) = last_alt_switch(data) {
                    self.lazy_alt = alt;
                }
                tail.extend_from_slice(data);
                if tail.len() > TAIL * 2 {
                    let cut = tail.len() - TAIL;
                    tail.drain(..cut);
                }
                return Vec::new();
            }
        }
        self.wake();
        let mut commands = Vec::new();
        let mut rest = data;
        // After the first line, `rest` starts with the newline that ended
        // the line just read: look for the next one past it.
        let mut from = 0;
        while self.submits > 0 {
            let Some(nl) = rest[from..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let nl = from + nl;
            self.parser.process(&rest[..nl]);
            rest = &rest[nl..];
            from = 1;
            self.submits -= 1;
            if self.alternate() {
                self.prompt = None;
                continue;
            }
            let line = self.current_line();
            self.prompt = None;
            if let Some(stripped) = line.strip_suffix('\\') {
                self.partial.push_str(stripped);
                continue;
            }
            let full = std::mem::take(&mut self.partial) + &line;
            let full = full.trim().to_string();
            if !full.is_empty() {
                commands.push(full);
            }
        }
        self.parser.process(rest);
        commands
    }

    /// The line the user is about to submit, as the screen shows it now
    /// (with any `\`-continued lines before it), or `None` while a
    /// full-screen program owns the terminal. Call it when Enter is typed,
    /// before passing the Enter on, once the echo has arrived.
    pub fn pending_line(&mut self) -> Option<String> {
        self.wake();
        if self.alternate() {
            return None;
        }
        let line = self.current_line();
        let line = line.strip_suffix('\\').unwrap_or(&line);
        Some((self.partial.clone() + line).trim().to_string())
    }

    /// Leaves lazy mode: redraw the screen from the kept tail.
    fn wake(&mut self) {
        let Some(tail) = self.lazy.take() else { return };
        self.parser = vt100::Parser::new(self.dims.0, self.dims.1, 0);
        // When the tail was cut, start at a line boundary so that no
        // escape sequence is cut in half.
        let skip = tail.len().saturating_sub(TAIL);
        let from = if skip == 0 {
            0
        } else {
            tail[skip..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| skip + i + 1)
                .unwrap_or(skip)
        };
        self.parser.process(&tail[from..]);
        if self.lazy_alt != self.alternate() {
            self.parser.process(if self.lazy_alt {
                b"\x1b[?1049h"
            } else {
                b"\x1b[?1049l"
            });
        }
    }

    fn left_of_cursor(&self) -> String {
        let screen = self.parser.screen();
        let (row, col) = screen.cursor_position();
        screen.contents_between(row, 0, row, col)
    }

    /// The logical line under the cursor (following wraps) without the
    /// prompt.
    fn current_line(&self) -> String {
        let screen = self.parser.screen();
        let (_, cols) = screen.size();
        let rows: Vec<String> = screen.rows(0, cols.get()).collect();
        let (cur, _) = screen.cursor_position();
        let cur = usize::from(cur).min(rows.len().saturating_sub(1));
        let mut start = cur;
        while start > 0 && screen.row_wrapped((start - 1) as u16) {
            start -= 1;
        }
        let mut end = cur;
        while end + 1 < rows.len() && screen.row_wrapped(end as u16) {
            end += 1;
        }
        let mut line = String::new();
        for row in rows.iter().take(end + 1).skip(start) {
            line.push_str(row);
        }
        let prompt = self.prompt.clone().unwrap_or_default();
        let prompt = prompt.trim_end();
        if !prompt.is_empty() {
            if let Some(after) = line.strip_prefix(prompt) {
                return after.trim().to_string();
            }
        }
        strip_common_prompt(&line)
    }
}

/// The last switch to (`true`) or from (`false`) the alternate screen in
/// `data`, if any (`ESC [ ? 1049|1047|47 h|l`).
fn last_alt_switch(data: &[u8]) -> Option<bool> {
    let mut found = None;
    for at in memchr::memchr_iter(0x1b, data) {
        let rest = &data[at..];
        for code in [&b"\x1b[?1049"[..], b"\x1b[?1047", b"\x1b[?47"] {
            if rest.starts_with(code) {
                match rest.get(code.len()) {
                    Some(b'h') => found = Some(true),
                    Some(b'l') => found = Some(false),
                    _ => {}
                }
            }
        }
    }
    found
}

/// Fallback when the prompt was not seen (typed ahead or pasted): drop
/// everything up to the first usual prompt terminator.
fn strip_common_prompt(line: &str) -> String {
    for end in ["$ ", "# ", "> ", "% "] {
        if let Some(i) = line.find(end) {
            return line[i + end.len()..].trim().to_string();
        }
    }
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a shell: what the user types and what the shell draws.
    fn run(steps: &[(&str, &str)]) -> Vec<String> {
        let mut c = LineCapture::new(40, 10);
        let mut out = Vec::new();
        for (typed, drawn) in steps {
            c.input(typed.as_bytes());
            out.extend(c.output(drawn.as_bytes()));
        }
        out
    }

    #[test]
    fn a_typed_line_without_the_prompt() {
        let cmds = run(&[
            ("", "user@host:~$ "),
            ("ls -la\r", "ls -la\r\nfile\r\nuser@host:~$ "),
        ]);
        assert_eq!(cmds, vec!["ls -la"]);
    }

    #[test]
    fn backspace_edits_are_applied() {
        let cmds = run(&[
            ("", "$ "),
            ("echo helo", "echo helo"),
            ("\x7f\x7f", "\x08 \x08\x08 \x08"),
            ("llo\r", "llo\r\nhello\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["echo hello"]);
    }

    #[test]
    fn history_recall_takes_the_redrawn_line() {
        let cmds = run(&[
            ("", "$ "),
            ("echo one\r", "echo one\r\none\r\n$ "),
            // Up: the shell redraws the previous command; the user edits it.
            ("\x1b[A", "echo one"),
            ("\x7f\x7f\x7ftwo\r", "\x08\x08\x08two\x1b[K\r\ntwo\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["echo one", "echo two"]);
    }

    #[test]
    fn tab_completion_takes_the_completed_name() {
        let cmds = run(&[
            ("", "$ "),
            ("cat some\t", "cat somefile.txt "),
            ("\r", "\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["cat somefile.txt"]);
    }

    #[test]
    fn long_lines_wrap_and_continuations_join() {
        let long = "echo ".to_string() + &"x".repeat(60);
        let cmds = run(&[
            ("", "$ "),
            (&format!("{long}\r"), &format!("{long}\r\n")),
            ("", "$ "),
            ("echo a \\\r", "echo a \\\r\n> "),
            ("b\r", "b\r\na b\r\n$ "),
        ]);
        assert_eq!(cmds, vec![long, "echo a b".to_string()]);
    }

    #[test]
    fn full_screen_programs_and_empty_lines_produce_nothing() {
        let cmds = run(&[
            ("", "$ "),
            ("vim x\r", "vim x\r\n\x1b[?1049h\x1b[H~\r\n~"),
            ("ihello\x1b:wq\r", "hello\r\n"),
            ("", "\x1b[?1049l$ "),
            ("\r", "\r\n$ "),
            ("ls\r", "ls\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["vim x", "ls"]);
    }

    #[test]
    fn bulk_output_is_not_parsed_but_the_next_line_is_still_exact() {
        let mut big = String::new();
        for i in 0..20_000 {
            big.push_str(&format!("line {i} of a long log\r\n"));
        }
        big.push_str("$ ");
        let cmds = run(&[
            ("", "$ "),
            ("cat log\r", &format!("cat log\r\n{big}")),
            ("echo after\r", "echo after\r\nafter\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["cat log", "echo after"]);
    }

    #[test]
    fn bulk_output_inside_a_full_screen_program_keeps_it_full_screen() {
        let mut c = LineCapture::new(80, 24);
        c.output(b"$ ");
        c.input(b"top\r");
        c.output(b"top\r\n\x1b[?1049h");
        let frame = "\x1b[H".to_string() + &"x".repeat(2000);
        for _ in 0..300 {
            assert!(c.output(frame.as_bytes()).is_empty());
        }
        c.input(b"q\r");
        assert!(
            c.output(b"\r\n").is_empty(),
            "keys typed in top are not commands"
        );
        c.output(b"\x1b[?1049l$ ");
        c.input(b"ls\r");
        assert_eq!(c.output(b"ls\r\n$ "), vec!["ls"]);
    }

    #[test]
    fn ctrl_c_abandons_the_line() {
        let cmds = run(&[
            ("", "$ "),
            ("rm -rf x\x03", "rm -rf x^C\r\n$ "),
            ("pwd\r", "pwd\r\n/\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["pwd"]);
    }

    #[test]
    fn enter_and_echo_in_one_packet_still_capture_the_whole_line() {
        // tmux and fast typists send the line and Enter together, before
        // the shell has echoed anything.
        let cmds = run(&[
            ("", "$ "),
            ("uname -a\r", ""),
            ("", "uname -a\r\nLinux\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["uname -a"]);
    }

    #[test]
    fn lines_typed_ahead_and_answered_in_one_chunk_are_each_captured() {
        // Found by fuzzing the guard: with several Enters pending, every
        // one re-read the first line (logged "a" twice, never "b").
        let cmds = run(&[("", "$ "), ("a\rb\r", "a\r\n$ b\r\n$ ")]);
        assert_eq!(cmds, vec!["a", "b"]);
        let cmds = run(&[
            ("", "$ "),
            ("echo x \\\r", ""),
            ("y\r", "echo x \\\r\n> y\r\nx y\r\n$ "),
        ]);
        assert_eq!(cmds, vec!["echo x y"]);
    }

    #[test]
    fn pending_line_is_what_the_screen_shows_before_enter() {
        let mut c = LineCapture::new(40, 10);
        c.output(b"user@host:~$ ");
        c.input(b"rm -rf /tmp/x");
        c.output(b"rm -rf /tmp/x");
        assert_eq!(c.pending_line().as_deref(), Some("rm -rf /tmp/x"));
        // Edited: the screen, not the keystrokes, is the truth.
        c.input(b"\x7fy");
        c.output(b"\x08 \x08y");
        assert_eq!(c.pending_line().as_deref(), Some("rm -rf /tmp/y"));
        c.output(b"\x1b[?1049h");
        assert_eq!(c.pending_line(), None);
    }

    #[test]
    fn a_hibernated_screen_wakes_up_as_it_was() {
        let mut c = LineCapture::new(40, 10);
        c.output(b"\x1b[1mbold\x1b[0m banner\r\nuser@host:~$ ");
        c.input(b"ls -l");
        c.output(b"ls -l");
        c.hibernate();
        assert!(c.lazy.is_some());
        // Output while asleep, then the user goes on typing.
        c.output(b" /etc");
        c.input(b"\r");
        let got = c.output(b"\r\ntotal 0\r\nuser@host:~$ ");
        assert_eq!(got, vec!["ls -l /etc".to_string()]);
        // And the prompt is still told apart after another sleep.
        c.hibernate();
        c.input(b"pwd\r");
        let got = c.output(b"pwd\r\n/root\r\nuser@host:~$ ");
        assert_eq!(got, vec!["pwd".to_string()]);
    }
}
