//! Allow/deny decisions for Gatehouse (roles in `docs/configuration.md`).
//!
//! Pure functions of the configuration: no I/O, no clock. The same
//! [`decide`] runs for a live connection and for `gatehouse policy
//! explain`, so what the explanation says is what the gateway does.
//!
//! Rules, in order:
//! 1. Unknown user or target: deny.
//! 2. An access deny rule (one with `targets` and/or `logins` and no
//!    `commands`) of any of the user's roles that matches: deny. Deny wins.
//! 3. An allow rule of any of the user's roles whose target selector
//!    matches and whose logins include the login: allow.
//! 4. Otherwise: deny (deny by default).

use std::fmt;
use std::time::Duration;

use gatehouse_model::config::{AllowRule, LabelSelector, OneOrMany};
use gatehouse_model::{Config, Dur, Role, Target};

pub mod console;
pub mod shell;

/// Which rule made a decision, for the audit trail and for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub role: String,
    /// `allow[0]`, `deny[2]`.
    pub rule: String,
    /// The rule as written, for humans.
    pub text: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role {} {}: {}", self.role, self.rule, self.text)
    }
}

/// What a grant needs before it is usable: a second person's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    pub approvers: Vec<String>,
    pub ttl: Option<Duration>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub user: String,
    pub target: String,
    /// The login on the target: the one asked for, or the resolved default.
    pub login: Option<String>,
    /// One sentence saying why, suitable for the user and the audit trail.
    pub reason: String,
    pub rule: Option<RuleRef>,
    pub require_mfa: bool,
    pub max_session: Option<Duration>,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
    pub approval: Option<ApprovalNeed>,
}

impl Decision {
    fn deny(user: &str, target: &str, login: Option<&str>, reason: String) -> Decision {
        Decision {
            allowed: false,
            user: user.into(),
            target: target.into(),
            login: login.map(Into::into),
            reason,
            rule: None,
            require_mfa: false,
            max_session: None,
            port_forwarding: false,
            agent_forwarding: false,
            approval: None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "ALLOW" } else { "DENY" };
        let login = self.login.as_deref().unwrap_or("?");
        writeln!(f, "{verdict} {} -> {} as {login}", self.user, self.target)?;
        writeln!(f, "  reason: {}", self.reason)?;
        if let Some(rule) = &self.rule {
            writeln!(f, "  rule:   {rule}")?;
        }
        if self.allowed {
            writeln!(f, "  mfa required:    {}", yes_no(self.require_mfa))?;
            let max = self
                .max_session
                .map(|d| format!("{}s", d.as_secs()))
                .unwrap_or_else(|| "unlimited".into());
            writeln!(f, "  max session:     {max}")?;
            writeln!(f, "  port forwarding: {}", yes_no(self.port_forwarding))?;
            writeln!(f, "  agent forwarding: {}", yes_no(self.agent_forwarding))?;
            if let Some(a) = &self.approval {
                writeln!(f, "  approval needed from: {}", a.approvers.join(", "))?;
            }
        }
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn user_roles<'c>(cfg: &'c Config, user: &str) -> Vec<&'c Role> {
    cfg.user(user)
        .map(|u| u.roles.iter().filter_map(|r| cfg.role(r)).collect())
        .unwrap_or_default()
}

/// Does `selector` match `target`? An empty selector matches every target.
pub fn selector_matches(selector: &LabelSelector, target: &Target) -> bool {
    selector.iter().all(|(label, want)| {
        let have = if label == "name" {
            Some(target.name.as_str())
        } else {
            target.labels.get(label).map(String::as_str)
        };
        match have {
            None => false,
            Some(v) => want.values().iter().any(|w| *w == "*" || *w == v),
        }
    })
}

fn login_listed(logins: &[String], login: &str) -> bool {
    logins.iter().any(|l| l == "*" || l == login)
}

fn selector_text(sel: &LabelSelector) -> String {
    if sel.is_empty() {
        return "all targets".into();
    }
    sel.iter()
        .map(|(k, v)| match v {
            OneOrMany::One(s) => format!("{k}={s}"),
            OneOrMany::Many(list) => format!("{k} in [{}]", list.join(", ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The logins `user` may use on `target` (without `*`), in config order.
pub fn allowed_logins(cfg: &Config, user: &str, target: &Target) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut any = false;
    for role in user_roles(cfg, user) {
        for rule in &role.allow {
            if !selector_matches(&rule.targets, target) {
                continue;
            }
            for l in &rule.logins {
                if l == "*" {
                    any = true;
                } else if !out.contains(l) && access_denied_by(cfg, user, target, l).is_none() {
                    out.push(l.clone());
                }
            }
        }
    }
    if any {
        if let Some(d) = &target.default_login {
            if !out.contains(d) && access_denied_by(cfg, user, target, d).is_none() {
                out.insert(0, d.clone());
            }
        }
    }
    out
}

fn access_denied_by(cfg: &Config, user: &str, target: &Target, login: &str) -> Option<RuleRef> {
    for role in user_roles(cfg, user) {
        for (i, rule) in role.deny.iter().enumerate() {
            if !rule.commands.is_empty() {
                continue;
            }
            let t_ok = rule
                .targets
                .as_ref()
                .map(|s| selector_matches(s, target))
                .unwrap_or(true);
            let l_ok = rule
                .logins
                .as_ref()
                .map(|ls| login_listed(ls, login))
                .unwrap_or(true);
            if t_ok && l_ok {
                let mut text = String::new();
                if let Some(s) = &rule.targets {
                    text.push_str(&format!("targets {}", selector_text(s)));
                }
                if let Some(ls) = &rule.logins {
                    if !text.is_empty() {
                        text.push_str("; ");
                    }
                    text.push_str(&format!("logins {}", ls.join(", ")));
                }
                return Some(RuleRef {
                    role: role.name.clone(),
                    rule: format!("deny[{i}]"),
                    text,
                });
            }
        }
    }
    None
}

/// Decides whether `user` may open a session on `target` as `login` (or
/// the default login when `None`).
pub fn decide(cfg: &Config, user: &str, target: &str, login: Option<&str>) -> Decision {
    let Some(u) = cfg.user(user) else {
        return Decision::deny(user, target, login, format!("unknown user {user:?}"));
    };
    let Some(t) = cfg.target(target) else {
        return Decision::deny(user, target, login, format!("unknown target {target:?}"));
    };
    let login = match login {
        Some(l) => l.to_string(),
        None => match default_login(cfg, user, target, t) {
            Ok(l) => l,
            Err(reason) => return Decision::deny(user, target, None, reason),
        },
    };

    if let Some(rule) = access_denied_by(cfg, user, t, &login) {
        let mut d = Decision::deny(
            user,
            target,
            Some(&login),
            format!("explicitly denied by role {} {}", rule.role, rule.rule),
        );
        d.rule = Some(rule);
        return d;
    }

    let roles = user_roles(cfg, user);
    let grants = find_grants(&roles, t, &login);

    let Some((rule, approval)) = grants.best else {
        return Decision::deny(
            user,
            target,
            Some(&login),
            format!(
                "no role of user {user:?} allows login {login:?} on target {target:?} (roles: {})",
                if u.roles.is_empty() {
                    "none".to_string()
                } else {
                    u.roles.join(", ")
                }
            ),
        );
    };

    let granting = grants.roles;
    let max_session = granting
        .iter()
        .filter_map(|r| r.max_session.as_ref().map(Dur::get))
        .min();
    Decision {
        allowed: true,
        user: user.into(),
        target: target.into(),
        login: Some(login.clone()),
        reason: format!("allowed by role {} {}", rule.role, rule.rule),
        rule: Some(rule),
        require_mfa: roles.iter().any(|r| r.require_mfa),
        max_session,
        port_forwarding: granting.iter().any(|r| r.port_forwarding),
        agent_forwarding: granting.iter().any(|r| r.agent_forwarding),
        approval,
    }
}

/// The login [`decide`] uses on `t` when none is asked for: the target's
/// default login if the user may use it, else the only login the user may
/// use there. `Err` holds the reason for denying when there is no such
/// login.
fn default_login(cfg: &Config, user: &str, target: &str, t: &Target) -> Result<String, String> {
    let allowed = allowed_logins(cfg, user, t);
    match &t.default_login {
        Some(d) if allowed.contains(d) => Ok(d.clone()),
        _ if allowed.len() == 1 => Ok(allowed[0].clone()),
        _ if allowed.is_empty() => Err(format!(
            "no role of user {user:?} allows any login on target {target:?}"
        )),
        _ => Err(format!(
            "target {target:?} has no default login for {user:?}; connect as {user}:LOGIN@{target} with LOGIN one of: {}",
            allowed.join(", ")
        )),
    }
}

/// The allow rules of the user's roles that grant `login` on a target.
struct Grants<'c> {
    /// The first rule that grants it without approval, else the first
    /// that grants it, with the approval it needs; `None` when none does.
    best: Option<(RuleRef, Option<ApprovalNeed>)>,
    /// Every role with a granting rule, each once, in role order: their
    /// attributes (session length, forwarding) apply to the session.
    roles: Vec<&'c Role>,
}

/// Collects the [`Grants`] of `roles` for `login` on `t`.
fn find_grants<'c>(roles: &[&'c Role], t: &Target, login: &str) -> Grants<'c> {
    let mut grant: Option<(RuleRef, Option<ApprovalNeed>)> = None;
    let mut granting: Vec<&'c Role> = Vec::new();
    for &role in roles {
        for (i, rule) in role.allow.iter().enumerate() {
            if !selector_matches(&rule.targets, t) || !login_listed(&rule.logins, login) {
                continue;
            }
            let approval = approval_needed(rule, login);
            if !granting.iter().any(|r| r.name == role.name) {
                granting.push(role);
            }
            let r = allow_rule_ref(role, i, rule);
            // A grant without approval beats one that needs approval.
            let better = match &grant {
                None => true,
                Some((_, Some(_))) => approval.is_none(),
                Some((_, None)) => false,
            };
            if better {
                grant = Some((r, approval));
            }
        }
    }
    Grants {
        best: grant,
        roles: granting,
    }
}

/// The approval an allow rule asks for before it grants `login`, if any.
fn approval_needed(rule: &AllowRule, login: &str) -> Option<ApprovalNeed> {
    rule.require_approval.as_ref().and_then(|a| {
        let applies = a.logins.is_empty() || login_listed(&a.logins, login);
        applies.then(|| ApprovalNeed {
            approvers: a.approvers.clone(),
            ttl: a.ttl.as_ref().map(Dur::get),
        })
    })
}

/// Names allow rule `i` of `role`, as written.
fn allow_rule_ref(role: &Role, i: usize, rule: &AllowRule) -> RuleRef {
    RuleRef {
        role: role.name.clone(),
        rule: format!("allow[{i}]"),
        text: format!(
            "targets {}; logins {}",
            selector_text(&rule.targets),
            rule.logins.join(", ")
        ),
    }
}

/// A target the user may reach, with the logins allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    pub target: String,
    pub login: String,
    pub labels: String,
}

/// The targets `user` may open a session on with their default login,
/// in config order: the menu shown when no target is named.
pub fn reachable(cfg: &Config, user: &str) -> Vec<Reachable> {
    cfg.targets
        .iter()
        .filter_map(|t| {
            let d = decide(cfg, user, &t.name, None);
            let login = d.login.clone()?;
            d.allowed.then(|| Reachable {
                target: t.name.clone(),
                login,
                labels: t
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            })
        })
        .collect()
}

/// May `approver` decide a request whose rule names `approver_roles`?
/// (Never their own request: the caller checks that.)
pub fn can_approve(cfg: &Config, approver: &str, approver_roles: &[String]) -> bool {
    cfg.user(approver)
        .map(|u| u.roles.iter().any(|r| approver_roles.contains(r)))
        .unwrap_or(false)
}

/// A command refused by a role's `deny = [{ commands = [...] }]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandDenial {
    pub rule: RuleRef,
    pub pattern: String,
}

/// Does `pattern` match the command line? It is tried against the line as
/// typed (as it always was) and against every simple command the line
/// runs, normalised by [`shell::analyse`]: `true; "/usr/bin/id"` is tried
/// as `true; "/usr/bin/id"`, `true` and `id`.
fn pattern_hits(pattern: &str, line: &str, analysis: &shell::Analysis) -> bool {
    match compiled(pattern) {
        Some(re) => {
            re.is_match(line.trim_start()) || analysis.commands.iter().any(|c| re.is_match(c))
        }
        // Patterns were validated at load; an invalid one matches rather
        // than silently letting the command through.
        None => true,
    }
}

/// Most compiled patterns kept; past this (many reloads with different
/// rules) the cache starts afresh.
const PATTERN_CACHE: usize = 4096;

/// `pattern` compiled once per process (None when it does not compile):
/// the guard judges every line a user submits, and compiling the same
/// rules for each line cost more than matching them.
fn compiled(pattern: &str) -> Option<regex::Regex> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(map) = cache.lock() {
        if let Some(hit) = map.get(pattern) {
            return hit.clone();
        }
    }
    let re = regex::Regex::new(pattern).ok();
    if let Ok(mut map) = cache.lock() {
        if map.len() >= PATTERN_CACHE {
            map.clear();
        }
        map.insert(pattern.to_string(), re.clone());
    }
    re
}

/// Checks a command line against the command deny rules of the user's
/// roles that apply to `target` and `login`.
///
/// Every pattern is tried against each simple command of the line (see
/// [`shell`]). A line that runs commands nobody can read off it (a shell
/// fed by a pipe, `… | sh`; a command name computed at run time, `$cmd`)
/// is denied by the first applicable rule with command patterns, whatever
/// the patterns: the gateway cannot tell whether they would match.
///
/// Command rules stop mistakes and record intent; they do not stop a
/// determined user, who can always write a script or start an interpreter.
pub fn command_denied(
    cfg: &Config,
    user: &str,
    target: &str,
    login: &str,
    command: &str,
) -> Option<CommandDenial> {
    let t = cfg.target(target)?;
    let analysis = shell::analyse(command);
    // A pattern that matches names its rule; failing that, an opaque line
    // is denied by the first rule that has command patterns.
    let mut opaque: Option<CommandDenial> = None;
    for role in user_roles(cfg, user) {
        for (i, rule) in role.deny.iter().enumerate() {
            let t_ok = rule
                .targets
                .as_ref()
                .map(|s| selector_matches(s, t))
                .unwrap_or(true);
            let l_ok = rule
                .logins
                .as_ref()
                .map(|ls| login_listed(ls, login))
                .unwrap_or(true);
            if !t_ok || !l_ok {
                continue;
            }
            for pattern in &rule.commands {
                if pattern_hits(pattern, command, &analysis) {
                    return Some(CommandDenial {
                        rule: RuleRef {
                            role: role.name.clone(),
                            rule: format!("deny[{i}]"),
                            text: format!("commands {pattern}"),
                        },
                        pattern: pattern.clone(),
                    });
                }
            }
            if let (Some(why), Some(first)) = (analysis.opaque, rule.commands.first()) {
                opaque.get_or_insert(CommandDenial {
                    rule: RuleRef {
                        role: role.name.clone(),
                        rule: format!("deny[{i}]"),
                        text: format!("commands {}: {why}", rule.commands.join(", ")),
                    },
                    pattern: first.clone(),
                });
            }
        }
    }
    opaque
}

/// The `reauth_commands` pattern of the user's roles that `command`
/// matches: the user must give a fresh TOTP code before it runs.
///
/// Patterns are matched as for [`command_denied`] (each simple command of
/// the line); an opaque line does not ask for a code by itself.
pub fn reauth_required(cfg: &Config, user: &str, command: &str) -> Option<CommandDenial> {
    let roles = user_roles(cfg, user);
    if roles.iter().all(|r| r.reauth_commands.is_empty()) {
        return None;
    }
    let analysis = shell::analyse(command);
    for role in roles {
        for (i, pattern) in role.reauth_commands.iter().enumerate() {
            // As for denies: an invalid pattern errs on the safe side.
            if pattern_hits(pattern, command, &analysis) {
                return Some(CommandDenial {
                    rule: RuleRef {
                        role: role.name.clone(),
                        rule: format!("reauth_commands[{i}]"),
                        text: pattern.clone(),
                    },
                    pattern: pattern.clone(),
                });
            }
        }
    }
    None
}

/// Whether any command rule (deny or step-up) can apply to this user on
/// `target` as `login`: interactive lines are only held for checking then.
pub fn has_command_rules(cfg: &Config, user: &str, target: &str, login: &str) -> bool {
    let Some(t) = cfg.target(target) else {
        return false;
    };
    user_roles(cfg, user).iter().any(|role| {
        !role.reauth_commands.is_empty()
            || role.deny.iter().any(|rule| {
                !rule.commands.is_empty()
                    && rule
                        .targets
                        .as_ref()
                        .map(|s| selector_matches(s, t))
                        .unwrap_or(true)
                    && rule
                        .logins
                        .as_ref()
                        .map(|ls| login_listed(ls, login))
                        .unwrap_or(true)
            })
    })
}

#[cfg(test)]
mod tests;
