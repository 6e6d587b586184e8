//! What a shell command line would run, for command rules.
//!
//! Matching a deny pattern against the raw line is trivially bypassed
//! (`true; id`, `"id"`, `/usr/bin/id`, `sh -c id`, …). [`analyse`] reads
//! the line the way a POSIX shell (bash) would split it and returns every
//! simple command in it, normalised:
//!
//! - split on `;`, `&`, `&&`, `|`, `||`, newlines, `( … )` subshells,
//!   `{ …; }` groups, `$( … )` and `` ` … ` `` substitutions and
//!   `<( … )` / `>( … )`;
//! - quotes and backslashes removed as the shell removes them (`'i'd`,
//!   `\id`, `c""at`, `$'\x69d'`);
//! - leading `NAME=value` assignments, redirections and reserved words
//!   (`!`, `{`, `if`, `then`, `do`, …) dropped;
//! - the command name without its directory (`/usr/bin/id` → `id`);
//! - wrappers looked through: `sh`/`bash`/… `-c STRING` and `eval`/`su -c`
//!   (the string is analysed in turn), `env`, `exec`, `command`,
//!   `builtin`, `sudo`, `doas`, `nice`, `ionice`, `nohup`, `setsid`,
//!   `time`, `timeout`, `stdbuf`, `xargs`, `busybox`. A wrapped command
//!   is listed both whole (`sudo id`) and unwrapped (`id`), so a pattern
//!   for either matches.
//!
//! Each normalised command is its words joined by single spaces, so a
//! pattern such as `^rm\s+-rf` still sees the arguments.
//!
//! Some lines run commands that cannot be read off the line at all: a
//! shell fed by a pipe or a redirect (`base64 -d <<< … | sh`), or a command
//! name computed when the line runs (`$cmd`, `$(echo id)`, `` `…` ``,
//! `/usr/bin/i?`, `{i,}d`). [`Analysis::opaque`] says so, and the policy
//! denies such a line wherever a command deny rule applies.
//!
//! This is not a sandbox. A user with a shell can write a script, start an
//! interpreter (`python3 -c …`), or use a program's own escape to a shell;
//! command rules stop mistakes and record intent, they do not stop a
//! determined user.

/// The result of [`analyse`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every simple command the line runs, normalised, in order, without
    /// duplicates.
    pub commands: Vec<String>,
    /// Why part of the line cannot be judged, when it cannot.
    pub opaque: Option<&'static str>,
}

/// Deepest nesting of `sh -c`, `$( … )` and the like that is followed;
/// anything deeper is opaque.
const MAX_DEPTH: usize = 8;

/// Longest line analysed; the rest of a longer one is opaque.
const MAX_LINE: usize = 64 * 1024;

pub(crate) const OPAQUE_PIPE: &str =
    "a shell reads its commands from a pipe or a file, so they cannot be checked";
pub(crate) const OPAQUE_NAME: &str =
    "the command name is computed when the line runs, so it cannot be checked";
pub(crate) const OPAQUE_DEEP: &str = "the line nests shells too deeply to be checked";

/// Splits and normalises `line`; see the module documentation.
pub fn analyse(line: &str) -> Analysis {
    let mut out = Analysis::default();
    analyse_into(line, 0, &mut out);
    out
}

fn analyse_into(line: &str, depth: usize, out: &mut Analysis) {
    if depth > MAX_DEPTH || line.len() > MAX_LINE {
        out.opaque.get_or_insert(OPAQUE_DEEP);
        return;
    }
    let chars: Vec<char> = line.chars().collect();
    let mut p = Parser {
        s: &chars,
        i: 0,
        commands: Vec::new(),
        depth,
        opaque: None,
    };
    p.list(None);
    if let Some(o) = p.opaque {
        out.opaque.get_or_insert(o);
    }
    for cmd in p.commands {
        normalise(cmd, depth, out);
    }
}

#[derive(Debug, Default, Clone)]
struct Word {
    text: String,
    /// Where in `text` the first quoted or escaped character is.
    quoted_at: Option<usize>,
    /// Contains an expansion or substitution (`$x`, `$( … )`, `` ` … ` ``).
    dynamic: bool,
    /// Contains an unquoted glob or brace character.
    pattern: bool,
}

impl Word {
    fn quoted(&mut self) {
        self.quoted_at.get_or_insert(self.text.len());
    }

    /// `NAME=…` or `NAME+=…` with the name unquoted: what the shell takes
    /// for an assignment.
    fn is_assignment(&self) -> bool {
        match self.text.find('=') {
            Some(eq) if self.quoted_at.is_none_or(|q| q >= eq) => is_assignment_text(&self.text),
            _ => false,
        }
    }
}

/// `NAME=…` (or `NAME+=…`, `NAME[i]=…`), quotes aside: what `env` takes for
/// an assignment.
fn is_assignment_text(text: &str) -> bool {
    let Some(eq) = text.find('=') else {
        return false;
    };
    let name = text[..eq].strip_suffix('+').unwrap_or(&text[..eq]);
    let name = match name.find('[') {
        Some(b) if name.ends_with(']') => &name[..b],
        _ => name,
    };
    let mut cs = name.chars();
    matches!(cs.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && cs.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[derive(Debug, Default)]
struct RawCommand {
    words: Vec<Word>,
    /// Stdin comes from a pipe (`… | cmd`).
    piped: bool,
    /// Stdin comes from a redirect (`<`, `<<`, `<<<`).
    stdin_redirected: bool,
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
    commands: Vec<RawCommand>,
    depth: usize,
    opaque: Option<&'static str>,
}

/// What the lexer is building.
#[derive(Default)]
struct Current {
    cmd: RawCommand,
    word: Option<Word>,
    /// The next word is a redirection target, not an argument.
    redirect_target: bool,
}

impl Parser<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    fn word(cur: &mut Current) -> &mut Word {
        cur.word.get_or_insert_with(Word::default)
    }

    fn end_word(cur: &mut Current) {
        if let Some(w) = cur.word.take() {
            if cur.redirect_target {
                cur.redirect_target = false;
            } else {
                cur.cmd.words.push(w);
            }
        }
    }

    fn end_command(&mut self, cur: &mut Current, next_piped: bool) {
        Self::end_word(cur);
        cur.redirect_target = false;
        let cmd = std::mem::take(&mut cur.cmd);
        if !cmd.words.is_empty() {
            self.commands.push(cmd);
        }
        cur.cmd.piped = next_piped;
    }

    /// A nested list (`$( … )`, `( … )`, `` ` … ` ``, `<( … )`) up to
    /// `end`; its commands are added to this parser's.
    fn nested(&mut self, end: char) {
        if self.depth + 1 > MAX_DEPTH {
            // Too deep to follow: skip to the matching end, unread.
            self.opaque.get_or_insert(OPAQUE_DEEP);
            let mut level = 1usize;
            while let Some(c) = self.peek(0) {
                self.i += 1;
                if c == end {
                    level -= 1;
                    if level == 0 {
                        return;
                    }
                } else if c == '(' && end == ')' {
                    level += 1;
                }
            }
            return;
        }
        self.depth += 1;
        self.list(Some(end));
        self.depth -= 1;
    }

    /// `((` … `))` at `self.i` (pointing at the first `(`): arithmetic,
    /// whose command substitutions are still parsed. Returns false, with
    /// nothing consumed, when the parentheses do not close with `))`:
    /// bash then reads a subshell (`$((id) )` runs `id`).
    fn arithmetic(&mut self) -> bool {
        let start = self.i;
        let mut i = self.i + 2;
        let mut level = 2usize;
        while let Some(&c) = self.s.get(i) {
            match c {
                '(' => level += 1,
                ')' => {
                    level -= 1;
                    if level == 1 {
                        if self.s.get(i + 1) == Some(&')') {
                            // Parse the substitutions inside, then skip.
                            self.i = start + 2;
                            let end = i;
                            while self.i < end {
                                match self.peek(0) {
                                    Some('$') if self.peek(1) == Some('(') => {
                                        self.i += 2;
                                        self.nested(')');
                                    }
                                    Some('`') => {
                                        self.i += 1;
                                        self.nested('`');
                                    }
                                    _ => self.i += 1,
                                }
                            }
                            self.i = end + 2;
                            return true;
                        }
                        return false;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        false
    }

    /// Parses commands until `end` (consumed) or the end of the input.
    fn list(&mut self, end: Option<char>) {
        let mut cur = Current::default();
        while let Some(c) = self.peek(0) {
            if Some(c) == end {
                self.i += 1;
                break;
            }
            match c {
                ' ' | '\t' => {
                    Self::end_word(&mut cur);
                    self.i += 1;
                }
                '\n' | ';' => {
                    self.i += 1;
                    self.end_command(&mut cur, false);
                }
                '|' => self.pipe(&mut cur),
                '&' if self.peek(1) == Some('>') => self.redirect_both(&mut cur),
                '&' => self.background_or_and(&mut cur),
                '(' if self.peek(1) == Some('(')
                    && cur.word.is_none()
                    && cur.cmd.words.iter().all(is_reserved)
                    && self.arithmetic() =>
                {
                    // `(( … ))`: an arithmetic command, no command name.
                }
                '(' => self.subshell(&mut cur),
                ')' => self.unbalanced_close(&mut cur),
                '`' => self.backquoted(&mut cur),
                '<' | '>' => self.redirect(&mut cur),
                '#' if cur.word.is_none() => self.comment(),
                '\\' => self.backslash(&mut cur),
                '\'' => self.single_quoted(&mut cur),
                '"' => {
                    self.i += 1;
                    self.double_quoted(&mut cur);
                }
                '$' => self.dollar(&mut cur, false),
                '*' | '?' | '[' | '{' => {
                    let w = Self::word(&mut cur);
                    w.pattern = true;
                    w.text.push(c);
                    self.i += 1;
                }
                '!' | '^' => self.history(&mut cur, c),
                c => {
                    Self::word(&mut cur).text.push(c);
                    self.i += 1;
                }
            }
        }
        self.end_command(&mut cur, false);
    }

    /// `|`, `||` or `|&` at `self.i`: ends the command; after `|` and
    /// `|&` the next one reads this one's output.
    fn pipe(&mut self, cur: &mut Current) {
        self.i += 1;
        let piped = match self.peek(0) {
            Some('|') => {
                self.i += 1;
                false
            }
            Some('&') => {
                self.i += 1;
                true
            }
            _ => true,
        };
        self.end_command(cur, piped);
    }

    /// `&>` or `&>>` at `self.i`: the next word is where output goes.
    fn redirect_both(&mut self, cur: &mut Current) {
        Self::end_word(cur);
        self.i += 2;
        if self.peek(0) == Some('>') {
            self.i += 1;
        }
        cur.redirect_target = true;
    }

    /// `&` or `&&` at `self.i`: ends the command.
    fn background_or_and(&mut self, cur: &mut Current) {
        self.i += 1;
        if self.peek(0) == Some('&') {
            self.i += 1;
        }
        self.end_command(cur, false);
    }

    /// `(` at `self.i`, not arithmetic.
    fn subshell(&mut self, cur: &mut Current) {
        // A subshell, or the `()` of a function definition.
        self.i += 1;
        self.end_command(cur, false);
        self.nested(')');
    }

    /// `)` at `self.i` that closes nothing.
    fn unbalanced_close(&mut self, cur: &mut Current) {
        // Unbalanced: the end of a `case` pattern (`a|*)`), which
        // runs nothing, or a syntax error, which runs nothing.
        self.i += 1;
        cur.word = None;
        cur.cmd.words.clear();
        cur.redirect_target = false;
    }

    /// `` ` `` at `self.i`: a command substitution, in or out of double
    /// quotes.
    fn backquoted(&mut self, cur: &mut Current) {
        self.i += 1;
        Self::word(cur).dynamic = true;
        Self::word(cur).text.push_str("`…`");
        self.nested('`');
    }

    /// `#` at `self.i`, at the start of a word: a comment, skipped up to
    /// the end of the line.
    fn comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                break;
            }
            self.i += 1;
        }
    }

    /// `\` at `self.i`, outside quotes.
    fn backslash(&mut self, cur: &mut Current) {
        self.i += 1;
        match self.peek(0) {
            Some('\n') => self.i += 1,
            Some(n) => {
                let w = Self::word(cur);
                w.quoted();
                w.text.push(n);
                self.i += 1;
            }
            None => {}
        }
    }

    /// `'…'` at `self.i`.
    fn single_quoted(&mut self, cur: &mut Current) {
        self.i += 1;
        let w = Self::word(cur);
        w.quoted();
        while let Some(c) = self.s.get(self.i).copied() {
            self.i += 1;
            if c == '\'' {
                break;
            }
            w.text.push(c);
        }
    }

    /// `!` or `^` (`c`) at `self.i`, outside quotes.
    fn history(&mut self, cur: &mut Current, c: char) {
        // History expansion (`!!:1`, `!-2`) and quick substitution
        // (`^old^new`) in an interactive shell.
        let next = self.peek(1);
        let history = if c == '!' {
            !matches!(next, None | Some(' ' | '\t' | '\n' | '=' | '('))
        } else {
            cur.word.is_none() && self.commands.is_empty()
        };
        let w = Self::word(cur);
        w.dynamic |= history;
        w.text.push(c);
        self.i += 1;
    }

    fn redirect(&mut self, cur: &mut Current) {
        // A word of digits right before the operator is a descriptor.
        if let Some(w) = &cur.word {
            if w.quoted_at.is_none() && !w.dynamic && w.text.chars().all(|c| c.is_ascii_digit()) {
                cur.word = None;
            }
        }
        Self::end_word(cur);
        let first = self.peek(0);
        self.i += 1;
        if self.peek(0) == Some('(') {
            // Process substitution.
            self.i += 1;
            self.nested(')');
            return;
        }
        if first == Some('<') {
            cur.cmd.stdin_redirected = true;
        }
        while let Some(c) = self.peek(0) {
            if matches!(c, '<' | '>' | '&' | '|' | '-') {
                self.i += 1;
            } else {
                break;
            }
        }
        cur.redirect_target = true;
    }

    fn double_quoted(&mut self, cur: &mut Current) {
        Self::word(cur).quoted();
        while let Some(c) = self.peek(0) {
            match c {
                '"' => {
                    self.i += 1;
                    return;
                }
                '\\' => {
                    self.i += 1;
                    match self.peek(0) {
                        Some('\n') => self.i += 1,
                        Some(n @ ('$' | '`' | '"' | '\\')) => {
                            Self::word(cur).text.push(n);
                            self.i += 1;
                        }
                        _ => Self::word(cur).text.push('\\'),
                    }
                }
                '`' => self.backquoted(cur),
                '$' => self.dollar(cur, true),
                '!' if !matches!(
                    self.peek(1),
                    None | Some(' ' | '\t' | '\n' | '=' | '(' | '"')
                ) =>
                {
                    let w = Self::word(cur);
                    w.dynamic = true;
                    w.text.push('!');
                    self.i += 1;
                }
                c => {
                    Self::word(cur).text.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `$…` at `self.i`.
    fn dollar(&mut self, cur: &mut Current, in_quotes: bool) {
        self.i += 1;
        match self.peek(0) {
            Some('(') if self.peek(1) == Some('(') && self.arithmetic() => {
                // `$(( … ))`: a number, not a command.
                let w = Self::word(cur);
                w.dynamic = true;
                w.text.push_str("$((…))");
            }
            Some('(') => {
                self.i += 1;
                let w = Self::word(cur);
                w.dynamic = true;
                w.text.push_str("$(…)");
                self.nested(')');
            }
            Some('{') => {
                let w = Self::word(cur);
                w.dynamic = true;
                w.text.push('$');
                let mut level = 0usize;
                while let Some(c) = self.s.get(self.i).copied() {
                    self.i += 1;
                    w.text.push(c);
                    match c {
                        '{' => level += 1,
                        '}' => {
                            level = level.saturating_sub(1);
                            if level == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            Some('\'') if !in_quotes => {
                self.i += 1;
                self.ansi_c(cur);
            }
            Some('"') if !in_quotes => {
                self.i += 1;
                self.double_quoted(cur);
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let w = Self::word(cur);
                w.dynamic = true;
                w.text.push('$');
                while let Some(c) = self.s.get(self.i).copied() {
                    if c == '_' || c.is_ascii_alphanumeric() {
                        w.text.push(c);
                        self.i += 1;
                    } else {
                        break;
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                let w = Self::word(cur);
                w.dynamic = true;
                w.text.push('$');
                w.text.push(c);
                self.i += 1;
            }
            _ => Self::word(cur).text.push('$'),
        }
    }

    /// `$'…'` (after the quote): bash's ANSI-C quoting.
    fn ansi_c(&mut self, cur: &mut Current) {
        let w = cur.word.get_or_insert_with(Word::default);
        w.quoted();
        let s = self.s;
        let mut i = self.i;
        let digits = |i: &mut usize, radix: u32, max: usize| -> Option<char> {
            let start = *i;
            while *i < s.len() && *i - start < max && s[*i].is_digit(radix) {
                *i += 1;
            }
            let text: String = s[start..*i].iter().collect();
            u32::from_str_radix(&text, radix)
                .ok()
                .and_then(char::from_u32)
        };
        while let Some(&c) = s.get(i) {
            i += 1;
            match c {
                '\'' => break,
                '\\' => {
                    let Some(&e) = s.get(i) else { break };
                    i += 1;
                    let decoded = match e {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'e' | 'E' => Some('\u{1b}'),
                        'a' => Some('\u{7}'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        'v' => Some('\u{b}'),
                        'x' => digits(&mut i, 16, 2),
                        'u' => digits(&mut i, 16, 4),
                        'U' => digits(&mut i, 16, 8),
                        '0'..='7' => {
                            i -= 1;
                            digits(&mut i, 8, 3)
                        }
                        'c' => {
                            let ctl = s.get(i).map(|c| char::from((*c as u8) & 0x1f));
                            i += 1;
                            ctl
                        }
                        other => Some(other),
                    };
                    if let Some(d) = decoded {
                        w.text.push(d);
                    }
                }
                c => w.text.push(c),
            }
        }
        self.i = i;
    }
}

/// Words that may precede a command without being it.
fn is_reserved(w: &Word) -> bool {
    w.quoted_at.is_none()
        && matches!(
            w.text.as_str(),
            "!" | "{"
                | "}"
                | "if"
                | "then"
                | "else"
                | "elif"
                | "fi"
                | "do"
                | "done"
                | "while"
                | "until"
                | "esac"
                | "[["
                | "]]"
                | "function"
        )
}

fn basename(s: &str) -> &str {
    match s.trim_end_matches('/').rsplit_once('/') {
        Some((_, b)) if !b.is_empty() => b,
        _ => s,
    }
}

fn push(out: &mut Analysis, words: &[Word]) {
    let mut text = basename(&words[0].text).to_string();
    for w in &words[1..] {
        text.push(' ');
        text.push_str(&w.text);
    }
    if !out.commands.contains(&text) {
        out.commands.push(text);
    }
}

/// Skips options of a wrapper; `with_arg` lists options that take the
/// next word as their argument. Returns the index of the first word after
/// the options.
fn skip_options(words: &[Word], mut i: usize, with_arg: &[&str]) -> usize {
    while let Some(w) = words.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            return i + 1;
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        i += 1;
        if with_arg.contains(&t) && !t.contains('=') {
            i += 1;
        }
    }
    i
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "posh", "yash",
];

/// Options of `sudo` and `doas` that take the next word as their argument.
const SUDO_OPTIONS_WITH_ARG: &[&str] = &[
    "-u",
    "-g",
    "-C",
    "-D",
    "-h",
    "-p",
    "-r",
    "-t",
    "-T",
    "-U",
    "-R",
    "--user",
    "--group",
    "--chdir",
    "--host",
    "--prompt",
    "--role",
    "--type",
    "--other-user",
    "--chroot",
    "--close-from",
];

/// Options of `xargs` that take the next word as their argument.
const XARGS_OPTIONS_WITH_ARG: &[&str] = &[
    "-I",
    "-L",
    "-n",
    "-P",
    "-d",
    "-E",
    "-s",
    "-a",
    "--arg-file",
    "--delimiter",
    "--max-args",
    "--max-procs",
    "--max-lines",
    "--max-chars",
    "--eof",
    "--process-slot-var",
];

/// Adds the simple command `cmd` to `out`, normalised, and each command
/// it runs through wrappers (`sudo id` → `sudo id`, `id`).
fn normalise(cmd: RawCommand, depth: usize, out: &mut Analysis) {
    let piped = cmd.piped || cmd.stdin_redirected;
    let mut words = cmd.words;
    loop {
        drop_reserved_and_assignments(&mut words);
        let Some(first) = words.first() else { return };
        if name_is_computed(first) {
            out.opaque.get_or_insert(OPAQUE_NAME);
            return;
        }
        if first.text.is_empty() {
            return;
        }
        push(out, &words);
        let Some(rest) = wrapped_command(&words, piped, depth, out) else {
            return;
        };
        if rest >= words.len() {
            return;
        }
        words.drain(..rest);
    }
}

/// Drops the reserved words and assignments before the command.
fn drop_reserved_and_assignments(words: &mut Vec<Word>) {
    let skip = words
        .iter()
        .take_while(|w| is_reserved(w) || w.is_assignment())
        .count();
    words.drain(..skip);
}

/// Is the command name `first` known only when the line runs (an
/// expansion, a glob or a brace)? `[`, `[[`, `{` and `}` are names.
fn name_is_computed(first: &Word) -> bool {
    let exempt = matches!(first.text.as_str(), "[" | "[[" | "{" | "}");
    first.dynamic || (first.pattern && !exempt)
}

/// Where in `words` the command run by the wrapper `words[0]` starts
/// (`sudo -u bob id` → 3). `None` when there is no such command to go on
/// with: `words[0]` is no wrapper, wraps nothing (`xargs` alone), or runs
/// a string (`sh -c`, `eval`, `su -c`, `env -S`, `alias`), which is
/// analysed into `out` here.
fn wrapped_command(words: &[Word], piped: bool, depth: usize, out: &mut Analysis) -> Option<usize> {
    let name = basename(&words[0].text);
    match name {
        "exec" => Some(skip_options(words, 1, &["-a"])),
        "command" | "builtin" | "nohup" | "setsid" | "busybox" => Some(skip_options(words, 1, &[])),
        "env" => env_command(words, depth, out),
        // `sudo -s` / `sudo -i` with no command start an interactive
        // shell, whose lines are judged as they are typed.
        "sudo" | "doas" => Some(skip_options(words, 1, SUDO_OPTIONS_WITH_ARG)),
        // `nice -10 cmd` (old syntax) is an option like any other.
        "nice" => Some(skip_options(words, 1, &["-n", "--adjustment"])),
        "ionice" => Some(skip_options(
            words,
            1,
            &["-c", "-n", "-p", "-P", "-u", "--class", "--classdata"],
        )),
        "time" => Some(skip_options(
            words,
            1,
            &["-f", "-o", "--format", "--output"],
        )),
        "stdbuf" => Some(skip_options(
            words,
            1,
            &["-i", "-o", "-e", "--input", "--output", "--error"],
        )),
        "timeout" => {
            let i = skip_options(words, 1, &["-s", "-k", "--signal", "--kill-after"]);
            Some(i + 1)
        }
        "xargs" => {
            let i = skip_options(words, 1, XARGS_OPTIONS_WITH_ARG);
            if i >= words.len() {
                // xargs with no command runs echo.
                return None;
            }
            Some(i)
        }
        "eval" => {
            eval(words, depth, out);
            None
        }
        "alias" => {
            alias(words, depth, out);
            None
        }
        "su" => {
            su(words, depth, out);
            None
        }
        n if SHELLS.contains(&n) => {
            shell(words, piped, depth, out);
            None
        }
        _ => None,
    }
}

/// `env`: the index of the command after its options and assignments;
/// `-S STRING` (`--split-string`) is analysed instead.
fn env_command(words: &[Word], depth: usize, out: &mut Analysis) -> Option<usize> {
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            i += 1;
            break;
        }
        if t == "-S" || t == "--split-string" {
            if let Some(s) = words.get(i + 1) {
                analyse_into(&s.text, depth + 1, out);
            }
            return None;
        }
        if let Some(s) = t.strip_prefix("--split-string=") {
            analyse_into(s, depth + 1, out);
            return None;
        }
        if is_assignment_text(t) || t.starts_with('-') {
            i += 1;
            if matches!(t, "-u" | "-C" | "--unset" | "--chdir") {
                i += 1;
            }
            continue;
        }
        break;
    }
    Some(i)
}

/// `eval`: its arguments, joined, are analysed; any expansion in them
/// makes the line opaque.
fn eval(words: &[Word], depth: usize, out: &mut Analysis) {
    let args = &words[1..];
    if args.iter().any(|w| w.dynamic) {
        out.opaque.get_or_insert(OPAQUE_NAME);
        return;
    }
    let text: Vec<&str> = args.iter().map(|w| w.text.as_str()).collect();
    analyse_into(&text.join(" "), depth + 1, out);
}

/// `alias NAME=VALUE …`: each value is analysed.
fn alias(words: &[Word], depth: usize, out: &mut Analysis) {
    for w in &words[1..] {
        if let Some((_, value)) = w.text.split_once('=') {
            analyse_into(value, depth + 1, out);
        }
    }
}

/// `su`: the string of `-c` (`--command`) is analysed.
fn su(words: &[Word], depth: usize, out: &mut Analysis) {
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let t = w.text.as_str();
        if t == "-c" || t == "--command" {
            match words.get(i + 1) {
                Some(s) if s.dynamic => {
                    out.opaque.get_or_insert(OPAQUE_NAME);
                }
                Some(s) => analyse_into(&s.text, depth + 1, out),
                None => {}
            }
            return;
        }
        if let Some(s) = t.strip_prefix("--command=") {
            analyse_into(s, depth + 1, out);
            return;
        }
        i += 1;
    }
}

/// `sh`/`bash`/…: `-c STRING` is analysed; a shell reading its commands
/// from a pipe or a redirect is opaque; a script file is the shell's own
/// business (as any program is).
fn shell(words: &[Word], stdin_fed: bool, depth: usize, out: &mut Analysis) {
    let mut c_flag = false;
    let mut s_flag = false;
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let t = w.text.as_str();
        if t == "--" || t == "-" {
            i += 1;
            break;
        }
        if matches!(t, "-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file") {
            i += 2;
            continue;
        }
        if t.starts_with("--") {
            i += 1;
            continue;
        }
        if let Some(flags) = t.strip_prefix('-').or_else(|| t.strip_prefix('+')) {
            if flags.is_empty() {
                break;
            }
            c_flag |= flags.contains('c');
            s_flag |= flags.contains('s');
            i += 1;
            continue;
        }
        break;
    }
    if c_flag {
        match words.get(i) {
            Some(s) if s.dynamic => {
                out.opaque.get_or_insert(OPAQUE_NAME);
            }
            Some(s) => analyse_into(&s.text, depth + 1, out),
            // `xargs sh -c`, `sh -c` with the string still to come.
            None => {
                out.opaque.get_or_insert(OPAQUE_PIPE);
            }
        }
        return;
    }
    if s_flag || (i >= words.len() && stdin_fed) {
        out.opaque.get_or_insert(OPAQUE_PIPE);
    }
}
