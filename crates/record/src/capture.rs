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

pub struct LineCapture {
    parser: vt100::Parser,
    /// Screen text left of the cursor when the user began the line.
    prompt: Option<String>,
    /// Enters typed whose line has not yet been accepted by the shell.
    submits: usize,
    /// A line ended with `\`, waiting for its continuation.
    partial: String,
}

fn dim(v: u32, default: u16) -> NonZeroU16 {
    let v = u16::try_from(v).unwrap_or(MAX_DIM).min(MAX_DIM);
    NonZeroU16::new(v)
        .or(NonZeroU16::new(default))
        .unwrap_or(NonZeroU16::MIN)
}

impl LineCapture {
    pub fn new(cols: u32, rows: u32) -> LineCapture {
        LineCapture {
            parser: vt100::Parser::new(dim(rows, 24), dim(cols, 80), 0),
            prompt: None,
            submits: 0,
            partial: String::new(),
        }
    }

    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.parser.set_size(dim(rows, 24), dim(cols, 80));
    }

    fn alternate(&self) -> bool {
        self.parser.screen().alternate_screen()
    }

    /// Keystrokes from the user.
    pub fn input(&mut self, data: &[u8]) {
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
    pub fn output(&mut self, data: &[u8]) -> Vec<String> {
        let mut commands = Vec::new();
        let mut rest = data;
        while self.submits > 0 {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            self.parser.process(&rest[..nl]);
            rest = &rest[nl..];
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
}
