//! Runbook files (TOML) and the built-in runbooks.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct RunbookError {
    pub file: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any text matching `pattern` (if given), as a SQL string literal.
    String,
    /// An integer, as a SQL number.
    Int,
    /// A duration like `24h`, rendered as the RFC 3339 time that long ago
    /// (so `time >= {since}` reads naturally).
    Since,
    /// A duration like `8h`, rendered as milliseconds.
    DurationMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    LockUser,
    KillSession,
    BlockSource,
    Notify,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub kind: ActionKind,
    /// The result column naming what the action applies to (user,
    /// session_id, source_ip). Not used by `notify`.
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// `block_source`: for how long (e.g. "15m").
    #[serde(default)]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: String,
    pub description: String,
    pub query: String,
    #[serde(default)]
    pub params: BTreeMap<String, Param>,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Where it came from ("built-in" or a file path).
    #[serde(skip)]
    pub source: String,
}

fn err(file: &str, field: &str, message: impl Into<String>) -> RunbookError {
    RunbookError {
        file: file.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

impl Runbook {
    pub fn parse(text: &str, source: &str) -> Result<Runbook, RunbookError> {
        let mut rb: Runbook =
            toml::from_str(text).map_err(|e| err(source, "", e.message().trim().to_string()))?;
        rb.source = source.to_string();
        rb.validate()?;
        Ok(rb)
    }

    /// Checks names, parameters, placeholders and actions.
    pub fn validate(&self) -> Result<(), RunbookError> {
        let f = self.source.as_str();
        if !gatehouse_model::username::is_valid_name(&self.name) {
            return Err(err(
                f,
                "name",
                format!("invalid runbook name {:?}", self.name),
            ));
        }
        let first_word = self
            .query
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_lowercase();
        if first_word != "select" && first_word != "with" {
            return Err(err(
                f,
                "query",
                "a runbook query must be read-only: start it with SELECT or WITH",
            ));
        }
        for (name, p) in &self.params {
            if let Some(pat) = &p.pattern {
                regex::Regex::new(pat).map_err(|e| {
                    err(
                        f,
                        &format!("params.{name}.pattern"),
                        format!("bad regex: {e}"),
                    )
                })?;
            }
            if let Some(d) = &p.default {
                check_value(name, p, d)
                    .map_err(|m| err(f, &format!("params.{name}.default"), m))?;
            }
        }
        for placeholder in placeholders(&self.query) {
            if !self.params.contains_key(&placeholder) {
                return Err(err(
                    f,
                    "query",
                    format!("{{{placeholder}}} is used but not declared under [params]"),
                ));
            }
        }
        for (i, a) in self.actions.iter().enumerate() {
            let needs_column = a.kind != ActionKind::Notify;
            if needs_column && a.column.is_none() {
                return Err(err(
                    f,
                    &format!("actions[{i}].column"),
                    "name the result column the action applies to",
                ));
            }
            if a.kind == ActionKind::BlockSource {
                let d = a.duration.as_deref().unwrap_or("");
                gatehouse_model::parse_duration(d)
                    .map_err(|e| err(f, &format!("actions[{i}].duration"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The query with `{param}` replaced by SQL literals. `given` holds
    /// the values from the command line; missing ones take their default.
    pub fn render(
        &self,
        given: &BTreeMap<String, String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, String> {
        for k in given.keys() {
            if !self.params.contains_key(k) {
                return Err(format!(
                    "runbook {} has no parameter {k:?}; it takes: {}",
                    self.name,
                    self.params.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let mut values = BTreeMap::new();
        for (name, p) in &self.params {
            let raw = given.get(name).or(p.default.as_ref()).ok_or_else(|| {
                format!("parameter {name} is required: pass --param {name}=VALUE")
            })?;
            let literal = check_value(name, p, raw)?;
            let literal = match p.kind {
                ParamType::Since => {
                    let d = gatehouse_model::parse_duration(raw).map_err(|e| e.to_string())?;
                    let t = chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| now.checked_sub_signed(d))
                        .ok_or_else(|| format!("parameter {name}: {raw:?} reaches too far back"))?;
                    format!("'{}'", gatehouse_model::event::format_time(t))
                }
                _ => literal,
            };
            values.insert(name.clone(), literal);
        }
        let mut out = String::new();
        let mut rest = self.query.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let key = &rest[open + 1..open + close];
            out.push_str(&rest[..open]);
            match values.get(key) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[open..open + close + 1]),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Validates one parameter value and renders it as a SQL literal.
fn check_value(name: &str, p: &Param, raw: &str) -> Result<String, String> {
    if let Some(pat) = &p.pattern {
        let re = regex::Regex::new(pat).map_err(|e| e.to_string())?;
        if !re.is_match(raw) {
            return Err(format!("{name}={raw:?} does not match {pat}"));
        }
    }
    match p.kind {
        ParamType::String => Ok(format!("'{}'", raw.replace('\'', "''"))),
        ParamType::Int => raw
            .trim()
            .parse::<i64>()
            .map(|n| n.to_string())
            .map_err(|_| format!("{name}={raw:?} is not an integer")),
        ParamType::Since => gatehouse_model::parse_duration(raw)
            .map(|_| String::new())
            .map_err(|e| format!("{name}: {e}")),
        ParamType::DurationMs => gatehouse_model::parse_duration(raw)
            .map(|d| d.as_millis().to_string())
            .map_err(|e| format!("{name}: {e}")),
    }
}

fn placeholders(query: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("static regex");
    re.captures_iter(query).map(|c| c[1].to_string()).collect()
}

const BUILT_INS: &[(&str, &str)] = &[
    (
        "sessions-by-user",
        include_str!("builtin/sessions-by-user.toml"),
    ),
    ("access-denied", include_str!("builtin/access-denied.toml")),
    ("denied-surge", include_str!("builtin/denied-surge.toml")),
    (
        "sessions-without-mfa",
        include_str!("builtin/sessions-without-mfa.toml"),
    ),
    ("root-logins", include_str!("builtin/root-logins.toml")),
    (
        "commands-matching",
        include_str!("builtin/commands-matching.toml"),
    ),
    (
        "file-transfers-by-user",
        include_str!("builtin/file-transfers-by-user.toml"),
    ),
    ("long-sessions", include_str!("builtin/long-sessions.toml")),
    (
        "cloudtrail-denied-surge",
        include_str!("builtin/cloudtrail-denied-surge.toml"),
    ),
    (
        "cloudtrail-sessions-without-mfa",
        include_str!("builtin/cloudtrail-sessions-without-mfa.toml"),
    ),
];

/// The built-in runbooks plus the `*.toml` files in `dir` (a file with the
/// name of a built-in replaces it).
pub fn load_all(dir: Option<&Path>) -> Result<Vec<Runbook>, Vec<RunbookError>> {
    let mut books: Vec<Runbook> = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in BUILT_INS {
        match Runbook::parse(text, &format!("built-in:{name}")) {
            Ok(r) => books.push(r),
            Err(e) => errors.push(e),
        }
    }
    if let Some(dir) = dir {
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                errors.push(err(
                    &dir.display().to_string(),
                    "",
                    format!("cannot read the runbooks directory: {e}"),
                ));
                Vec::new()
            }
        };
        files.sort();
        for path in files
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        {
            let source = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(err(&source, "", e.to_string()));
                    continue;
                }
            };
            match Runbook::parse(&text, &source) {
                Ok(r) => {
                    books.retain(|b| b.name != r.name);
                    books.push(r);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(books)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .into()
    }

    #[test]
    fn a_since_beyond_the_calendar_is_an_error_not_a_panic() {
        let books = load_all(None).unwrap();
        let b = books
            .iter()
            .find(|b| b.params.values().any(|p| p.kind == ParamType::Since))
            .expect("a built-in with a since parameter");
        let (name, _) = b
            .params
            .iter()
            .find(|(_, p)| p.kind == ParamType::Since)
            .expect("since");
        let mut given = BTreeMap::new();
        for (n, p) in &b.params {
            if p.default.is_none() && n != name {
                given.insert(n.clone(), "3".to_string());
            }
        }
        given.insert(name.clone(), "100000000d".to_string());
        let r = b.render(&given, now());
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn every_built_in_parses_and_renders_with_its_defaults() {
        let books = load_all(None).unwrap();
        assert_eq!(books.len(), 10);
        for b in &books {
            let mut given = BTreeMap::new();
            for (name, p) in &b.params {
                if p.default.is_none() {
                    given.insert(
                        name.clone(),
                        if p.kind == ParamType::Int {
                            "3".into()
                        } else {
                            "alice".into()
                        },
                    );
                }
            }
            let sql = b
                .render(&given, now())
                .unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert!(!sql.contains('{'), "{}: {sql}", b.name);
        }
    }

    #[test]
    fn parameters_become_literals_and_are_validated() {
        let rb = Runbook::parse(
            r#"
name = "t"
description = "d"
query = "SELECT * FROM sessions WHERE user = {user} AND start_time >= {since} AND duration_ms > {long}"
[params.user]
type = "string"
pattern = "^[a-z]+$"
[params.since]
type = "since"
default = "24h"
[params.long]
type = "duration_ms"
default = "8h"
"#,
            "t.toml",
        )
        .unwrap();
        let mut given = BTreeMap::new();
        given.insert("user".to_string(), "alice".to_string());
        let sql = rb.render(&given, now()).unwrap();
        assert_eq!(
            sql,
            "SELECT * FROM sessions WHERE user = 'alice' AND start_time >= '2026-11-23T12:00:00.000Z' AND duration_ms > 28800000"
        );
        given.insert("user".to_string(), "x' OR '1'='1".to_string());
        assert!(rb
            .render(&given, now())
            .unwrap_err()
            .contains("does not match"));
        given.insert("nope".to_string(), "1".to_string());
        assert!(rb
            .render(&given, now())
            .unwrap_err()
            .contains("no parameter"));
        assert!(rb
            .render(&BTreeMap::new(), now())
            .unwrap_err()
            .contains("required"));
    }

    #[test]
    fn malformed_runbooks_name_the_file_and_field() {
        let e = Runbook::parse(
            "name = \"x\"\ndescription = \"d\"\nquery = \"DELETE FROM events\"\n",
            "bad.toml",
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.field.as_str()), ("bad.toml", "query"));
        let e = Runbook::parse(
            "name = \"x\"\ndescription = \"d\"\nquery = \"SELECT {u}\"\n",
            "bad.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("{u}"));
        let e = Runbook::parse(
            "name = \"x\"\ndescription = \"d\"\nquery = \"SELECT 1\"\n[[actions]]\nkind = \"lock_user\"\n",
            "bad.toml",
        )
        .unwrap_err();
        assert_eq!(e.field, "actions[0].column");
        let e = Runbook::parse("name = \"x\"\nquery = \"SELECT 1\"\n", "bad.toml").unwrap_err();
        assert!(e.message.contains("description"), "{e}");
    }
}
