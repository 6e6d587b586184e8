//! Alert rules evaluated on each event as it is written: a pattern
//! (`when = "type = 'command' and command ~ '^(sudo|su)\\b'"`) or a
//! threshold (`count` events of a `type` with the same `by` field within
//! `within`). Pure: the caller feeds events and a clock, and gets back the
//! rules that fire.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use gatehouse_model::{AlertRule, NewEvent};

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Clause {
    field: String,
    op: Op,
}

/// A rule ready to match.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub rule: AlertRule,
    clauses: Vec<Clause>,
    within: Duration,
}

/// The value of `field` in `ev`: a schema field, or a key of `details`
/// (`command`, `details.path`).
pub fn field(ev: &NewEvent, field: &str) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    match field {
        "type" => ev.kind.clone(),
        "severity" => ev.severity.as_str().into(),
        "user" => opt(&ev.user),
        "source_ip" => opt(&ev.source_ip),
        "node" => ev.node.clone(),
        "session_id" => opt(&ev.session_id),
        "target" => opt(&ev.target),
        "login" => opt(&ev.login),
        "mfa" => ev.mfa.to_string(),
        "result" => ev.result.as_str().into(),
        "reason" => opt(&ev.reason),
        other => {
            let key = other.strip_prefix("details.").unwrap_or(other);
            match ev.details.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            }
        }
    }
}

fn parse_when(expr: &str) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    // Split on ` and ` (any case) outside quotes. Byte-wise and ASCII
    // only: the split points are ASCII, so slicing there never cuts a
    // character (lowercasing the whole text could move them).
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0usize, false);
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted
            && bytes
                .get(i..i + 5)
                .is_some_and(|w| w.eq_ignore_ascii_case(b" and "))
        {
            parts.push(&expr[start..i]);
            i += 5;
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&expr[start..]);
    for part in parts {
        let part = part.trim();
        let (field, op, value) = ["!=", "=", "~"]
            .iter()
            .find_map(|op| part.split_once(op).map(|(f, v)| (f.trim(), *op, v.trim())))
            .ok_or_else(|| format!("cannot read {part:?}: write FIELD = 'value', FIELD != 'value' or FIELD ~ 'regex'"))?;
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| format!("the value in {part:?} must be in single quotes"))?;
        if field.is_empty()
            || !field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(format!("bad field name {field:?}"));
        }
        let op = match op {
            "=" => Op::Eq(value.to_string()),
            "!=" => Op::Ne(value.to_string()),
            _ => {
                // `'\b'` written inside a TOML basic string arrives as a
                // backspace character (an easy mistake in a config file);
                // nobody means a literal backspace in a regex.
                let value = value.replace('\u{8}', "\\b");
                let re = regex::Regex::new(&value).map_err(|e| {
                    let why = e.to_string();
                    format!(
                        "bad regex {value:?}: {}",
                        why.lines().last().unwrap_or("").trim()
                    )
                })?;
                Op::Matches(re)
            }
        };
        clauses.push(Clause {
            field: field.to_string(),
            op,
        });
    }
    Ok(clauses)
}

impl Compiled {
    pub fn new(rule: &AlertRule) -> Result<Compiled, String> {
        let clauses = match (&rule.when, &rule.threshold) {
            (Some(w), None) => parse_when(w)?,
            (None, Some(t)) => vec![Clause {
                field: "type".into(),
                op: Op::Eq(t.kind.clone()),
            }],
            _ => return Err("give exactly one of `when` or `threshold`".into()),
        };
        let within = match &rule.threshold {
            Some(t) => t.within.get(),
            None => Duration::ZERO,
        };
        Ok(Compiled {
            rule: rule.clone(),
            clauses,
            within,
        })
    }

    pub fn matches(&self, ev: &NewEvent) -> bool {
        self.clauses.iter().all(|c| {
            let v = field(ev, &c.field);
            match &c.op {
                Op::Eq(want) => &v == want,
                Op::Ne(want) => &v != want,
                Op::Matches(re) => re.is_match(&v),
            }
        })
    }
}

/// All rules with the sliding windows of the threshold ones.
pub struct Alerts {
    rules: Vec<Compiled>,
    windows: HashMap<(usize, String), VecDeque<Instant>>,
}

/// A rule that fired, and on which value of its `by` field.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: AlertRule,
    pub by_value: Option<String>,
}

/// Bounds memory: the most distinct `by` values tracked per rule.
const MAX_KEYS: usize = 10_000;

impl Alerts {
    pub fn new(rules: &[AlertRule]) -> Result<Alerts, String> {
        let rules = rules
            .iter()
            .map(|r| Compiled::new(r).map_err(|e| format!("alert {}: {e}", r.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Alerts {
            rules,
            windows: HashMap::new(),
        })
    }

    /// The rules `ev` fires at time `now`. Alert events never fire rules
    /// (no feedback loops).
    pub fn observe(&mut self, ev: &NewEvent, now: Instant) -> Vec<Firing> {
        if ev.kind == "alert" {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, c) in self.rules.iter().enumerate() {
            if !c.matches(ev) {
                continue;
            }
            let Some(t) = &c.rule.threshold else {
                out.push(Firing {
                    rule: c.rule.clone(),
                    by_value: None,
                });
                continue;
            };
            let key = field(ev, &t.by);
            if !self.windows.contains_key(&(i, key.clone())) && self.windows.len() >= MAX_KEYS {
                self.windows.retain(|_, w| {
                    w.back()
                        .is_some_and(|last| now.duration_since(*last) < c.within)
                });
            }
            let window = self.windows.entry((i, key.clone())).or_default();
            window.push_back(now);
            while window
                .front()
                .is_some_and(|first| now.duration_since(*first) > c.within)
            {
                window.pop_front();
            }
            if window.len() >= t.count as usize {
                window.clear();
                out.push(Firing {
                    rule: c.rule.clone(),
                    by_value: Some(key),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_model::{AlertThreshold, Outcome, Severity};

    fn rule(when: Option<&str>, threshold: Option<AlertThreshold>) -> AlertRule {
        AlertRule {
            name: "r".into(),
            when: when.map(Into::into),
            threshold,
            severity: Severity::High,
            sinks: vec![],
            action: None,
        }
    }

    #[test]
    fn non_ascii_outside_quotes_is_an_error_not_a_panic() {
        for when in ["é = 'x'", "İİİİİ and type = 'x'", "type = 'x' AND é"] {
            let _ = Compiled::new(&rule(Some(when), None));
        }
        assert!(Compiled::new(&rule(Some("type = 'a' AND user = 'b'"), None)).is_ok());
    }

    fn cmd(command: &str) -> NewEvent {
        NewEvent::new("command", Severity::Info, Outcome::Success, "n")
            .user("alice")
            .details(serde_json::json!({"command": command}))
    }

    #[test]
    fn pattern_rules_compare_fields_and_details() {
        let c = Compiled::new(&rule(
            Some(r"type = 'command' and command ~ '^(sudo|su)\b'"),
            None,
        ))
        .unwrap();
        assert!(c.matches(&cmd("sudo -i")));
        // The same rule as written in a TOML basic string ("\b" = backspace).
        let toml_style = Compiled::new(&rule(Some("command ~ '^(sudo|su)\u{8}'"), None)).unwrap();
        assert!(toml_style.matches(&cmd("sudo -i")));
        assert!(!toml_style.matches(&cmd("sum file")));
        assert!(c.matches(&cmd("su - root")));
        assert!(!c.matches(&cmd("sum file")));
        assert!(!c.matches(&cmd("ls")));
        let c = Compiled::new(&rule(Some("user != 'alice' AND type = 'command'"), None)).unwrap();
        assert!(!c.matches(&cmd("ls")));
        let c = Compiled::new(&rule(Some("reason = 'a and b'"), None)).unwrap();
        assert!(c.matches(&cmd("x").reason("a and b")));
    }

    #[test]
    fn malformed_expressions_say_why() {
        assert!(Compiled::new(&rule(Some("type == command"), None))
            .unwrap_err()
            .contains("single quotes"));
        assert!(Compiled::new(&rule(Some("command ~ '('"), None))
            .unwrap_err()
            .contains("bad regex"));
        assert!(Compiled::new(&rule(Some("nonsense"), None))
            .unwrap_err()
            .contains("cannot read"));
        assert!(Compiled::new(&rule(None, None)).is_err());
    }

    #[test]
    fn thresholds_count_per_key_within_the_window() {
        let t = AlertThreshold {
            count: 3,
            kind: "auth.failure".into(),
            by: "source_ip".into(),
            within: gatehouse_model::Dur::minutes(1),
        };
        let mut a = Alerts::new(&[rule(None, Some(t))]).unwrap();
        let fail = |ip: &str| {
            NewEvent::new("auth.failure", Severity::Warn, Outcome::Failure, "n").source_ip(ip)
        };
        let t0 = Instant::now();
        assert!(a.observe(&fail("10.0.0.1"), t0).is_empty());
        assert!(a.observe(&fail("10.0.0.2"), t0).is_empty());
        assert!(a
            .observe(&fail("10.0.0.1"), t0 + Duration::from_secs(10))
            .is_empty());
        // Outside the window: the first one no longer counts.
        assert!(a
            .observe(&fail("10.0.0.1"), t0 + Duration::from_secs(65))
            .is_empty());
        let fired = a.observe(&fail("10.0.0.1"), t0 + Duration::from_secs(66));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].by_value.as_deref(), Some("10.0.0.1"));
        // Alert events never feed rules.
        let alert = NewEvent::new("alert", Severity::High, Outcome::Success, "n");
        assert!(a.observe(&alert, t0).is_empty());
    }
}
