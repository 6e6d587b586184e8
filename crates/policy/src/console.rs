//! What a user may see and do in the web console and its API: the union
//! of their roles' `console` permissions, deny by default.
//!
//! Viewing is scoped: `own_sessions` shows the user's own sessions,
//! `console_targets` adds the sessions on the targets it selects, and
//! `all_sessions` shows every session. Watching and killing apply to
//! the sessions the user may view.

use std::collections::BTreeMap;
use std::fmt;

use gatehouse_model::{Config, ConsolePermission};

use crate::{selector_matches, selector_text, user_roles};

/// A user's console rights, with the role that gave each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleAccess {
    pub user: String,
    /// Each permission the user holds and the roles that grant it.
    pub granted: BTreeMap<ConsolePermission, Vec<String>>,
    /// Targets whose sessions the user may view through
    /// `console_targets` (by name), with the role and selector text.
    pub targets: BTreeMap<String, String>,
    /// A role of the user's requires MFA.
    pub role_requires_mfa: bool,
}

impl ConsoleAccess {
    pub fn can(&self, p: ConsolePermission) -> bool {
        self.granted.contains_key(&p)
    }

    /// May the user sign in at all (any permission, or a target scope)?
    pub fn any(&self) -> bool {
        !self.granted.is_empty() || !self.targets.is_empty()
    }

    /// Does signing in need a TOTP code? Whenever a role requires MFA,
    /// and for every user who may do more than see their own sessions.
    pub fn mfa_required(&self) -> bool {
        self.role_requires_mfa
            || !self.targets.is_empty()
            || self
                .granted
                .keys()
                .any(|p| *p != ConsolePermission::OwnSessions)
    }

    /// Sees every session.
    pub fn sees_all(&self) -> bool {
        self.can(ConsolePermission::AllSessions)
    }

    /// May the user view a session of `owner` on `target`? Their own
    /// always (signing in to the console still needs a permission).
    pub fn may_view(&self, owner: &str, target: Option<&str>) -> bool {
        self.sees_all()
            || owner == self.user
            || target.is_some_and(|t| self.targets.contains_key(t))
    }

    /// The target names in scope (for store queries).
    pub fn target_names(&self) -> Vec<String> {
        self.targets.keys().cloned().collect()
    }
}

impl fmt::Display for ConsoleAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.any() {
            return writeln!(
                f,
                "  console: none (no role of {} grants a console permission)",
                self.user
            );
        }
        writeln!(
            f,
            "  console: sign-in with password{}",
            if self.mfa_required() {
                " and TOTP code"
            } else {
                ""
            }
        )?;
        for (p, roles) in &self.granted {
            writeln!(f, "    {:<15} by role {}", p.as_str(), roles.join(", "))?;
        }
        for (t, why) in &self.targets {
            writeln!(f, "    view target {t:<10} by {why}")?;
        }
        Ok(())
    }
}

/// `user`'s console rights under `cfg` (none for an unknown user).
pub fn console_access(cfg: &Config, user: &str) -> ConsoleAccess {
    let mut access = ConsoleAccess {
        user: user.to_string(),
        ..ConsoleAccess::default()
    };
    for role in user_roles(cfg, user) {
        access.role_requires_mfa |= role.require_mfa;
        for p in &role.console {
            let roles = access.granted.entry(*p).or_default();
            if !roles.contains(&role.name) {
                roles.push(role.name.clone());
            }
        }
        if let Some(sel) = &role.console_targets {
            for t in cfg.targets.iter().filter(|t| selector_matches(sel, t)) {
                access.targets.entry(t.name.clone()).or_insert_with(|| {
                    format!("role {} console_targets: {}", role.name, selector_text(sel))
                });
            }
        }
    }
    access
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            [[targets]]
            name = "web01"
            address = "10.0.0.1"
            labels = { env = "prod" }
            [[targets]]
            name = "dev01"
            address = "10.0.0.2"
            labels = { env = "dev" }
            [[roles]]
            name = "dev"
            console = ["own_sessions"]
            [[roles]]
            name = "prod-review"
            console = ["watch", "kill"]
            console_targets = { env = "prod" }
            [[roles]]
            name = "auditor"
            console = ["all_sessions", "audit"]
            [[users]]
            name = "dana"
            roles = ["dev"]
            [[users]]
            name = "pat"
            roles = ["dev", "prod-review"]
            [[users]]
            name = "ann"
            roles = ["auditor"]
            [[users]]
            name = "nobody"
            roles = []
            "#,
            std::path::Path::new("t.toml"),
        )
        .expect("config")
    }

    #[test]
    fn deny_by_default_and_union_of_roles() {
        let cfg = config();
        let nobody = console_access(&cfg, "nobody");
        assert!(!nobody.any());
        assert!(!nobody.may_view("dana", Some("web01")));
        assert!(!console_access(&cfg, "ghost").any());

        let dana = console_access(&cfg, "dana");
        assert!(dana.any() && !dana.mfa_required());
        assert!(dana.may_view("dana", Some("web01")));
        assert!(!dana.may_view("pat", Some("dev01")));
        assert!(!dana.can(ConsolePermission::Kill));

        let pat = console_access(&cfg, "pat");
        assert!(pat.mfa_required());
        assert!(pat.may_view("dana", Some("web01")));
        assert!(!pat.may_view("dana", Some("dev01")));
        assert!(pat.can(ConsolePermission::Kill));
        assert_eq!(pat.target_names(), vec!["web01".to_string()]);

        let ann = console_access(&cfg, "ann");
        assert!(ann.sees_all() && ann.may_view("pat", None));
        let text = ann.to_string();
        assert!(
            text.contains("all_sessions") && text.contains("role auditor"),
            "{text}"
        );
    }
}
