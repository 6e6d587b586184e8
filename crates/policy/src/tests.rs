use std::path::Path;

use super::*;

fn cfg(text: &str) -> Config {
    let c = Config::parse(text, Path::new("t.toml")).expect("parse");
    let errors = c.validate(Path::new("t.toml"));
    assert!(errors.is_empty(), "{errors:?}");
    c
}

const BASE: &str = r#"
[[targets]]
name = "web01"
address = "10.0.0.5"
labels = { env = "prod", team = "web" }
tofu = true
default_login = "deploy"

[[targets]]
name = "stg01"
address = "10.0.1.5"
labels = { env = "staging", team = "web" }
tofu = true
default_login = "deploy"

[[targets]]
name = "db01"
address = "10.0.2.5"
labels = { env = "prod", team = "db" }
tofu = true

[[roles]]
name = "web-dev"
allow = [{ targets = { env = "staging" }, logins = ["deploy"] }]
deny  = [{ commands = ["^rm -rf /", "^shutdown"] }]
max_session = "8h"

[[roles]]
name = "web-oncall"
allow = [{ targets = { env = "prod", team = "web" }, logins = ["deploy", "root"],
           require_approval = { logins = ["root"], approvers = ["sre-leads"], ttl = "1h" } }]
port_forwarding = true
require_mfa = true
max_session = "2h"

[[roles]]
name = "no-root"
deny = [{ logins = ["root"] }]

[[roles]]
name = "dba"
allow = [{ targets = { team = "db" }, logins = ["postgres", "admin"] }]

[[users]]
name = "alice"
keys = ["ssh-ed25519 AAAA alice"]
roles = ["web-dev", "web-oncall"]

[[users]]
name = "bob"
keys = ["ssh-ed25519 AAAA bob"]
roles = ["web-dev"]

[[users]]
name = "carol"
keys = ["ssh-ed25519 AAAA carol"]
roles = ["web-oncall", "no-root", "dba"]

[[users]]
name = "nobody"
keys = ["ssh-ed25519 AAAA nobody"]
"#;

#[test]
fn deny_by_default_for_a_user_without_roles() {
    let d = decide(&cfg(BASE), "nobody", "web01", None);
    assert!(!d.allowed);
    assert!(d.reason.contains("no role"), "{}", d.reason);
}

#[test]
fn unknown_user_and_target_are_denied() {
    let c = cfg(BASE);
    assert!(decide(&c, "mallory", "web01", None)
        .reason
        .contains("unknown user"));
    assert!(decide(&c, "alice", "nope", None)
        .reason
        .contains("unknown target"));
}

#[test]
fn label_selector_allows_matching_targets_only() {
    let c = cfg(BASE);
    let d = decide(&c, "bob", "stg01", None);
    assert!(d.allowed, "{d}");
    assert_eq!(d.login.as_deref(), Some("deploy"));
    assert_eq!(d.rule.as_ref().unwrap().role, "web-dev");
    assert!(!decide(&c, "bob", "web01", None).allowed);
    assert!(!decide(&c, "bob", "stg01", Some("root")).allowed);
}

#[test]
fn default_login_and_explicit_login() {
    let c = cfg(BASE);
    let d = decide(&c, "alice", "web01", None);
    assert!(d.allowed);
    assert_eq!(d.login.as_deref(), Some("deploy"));
    let d = decide(&c, "alice", "web01", Some("root"));
    assert!(d.allowed);
    assert!(d.approval.is_some(), "root needs approval");
    assert!(decide(&c, "alice", "web01", Some("deploy"))
        .approval
        .is_none());
}

#[test]
fn deny_wins_over_allow() {
    let c = cfg(BASE);
    let d = decide(&c, "carol", "web01", Some("root"));
    assert!(!d.allowed);
    assert_eq!(d.rule.as_ref().unwrap().role, "no-root");
    assert!(decide(&c, "carol", "web01", Some("deploy")).allowed);
}

#[test]
fn a_target_without_default_login_needs_an_explicit_one_when_ambiguous() {
    let c = cfg(BASE);
    let d = decide(&c, "carol", "db01", None);
    assert!(!d.allowed);
    assert!(d.reason.contains("carol:LOGIN@db01"), "{}", d.reason);
    assert!(d.reason.contains("postgres, admin"), "{}", d.reason);
    assert!(decide(&c, "carol", "db01", Some("postgres")).allowed);
}

#[test]
fn attributes_combine_across_roles() {
    let c = cfg(BASE);
    let d = decide(&c, "alice", "web01", None);
    assert!(d.require_mfa);
    assert!(d.port_forwarding);
    assert_eq!(d.max_session, Some(Duration::from_secs(7200)));
    let d = decide(&c, "bob", "stg01", None);
    assert!(!d.require_mfa);
    assert!(!d.port_forwarding);
    assert!(!d.agent_forwarding);
    assert_eq!(d.max_session, Some(Duration::from_secs(8 * 3600)));
}

#[test]
fn menu_lists_reachable_targets_with_their_login() {
    let c = cfg(BASE);
    let r = reachable(&c, "alice");
    let names: Vec<_> = r.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(names, vec!["web01", "stg01"]);
    assert!(reachable(&c, "nobody").is_empty());
}

#[test]
fn command_rules_match_the_command_line() {
    let c = cfg(BASE);
    let d = command_denied(&c, "bob", "stg01", "deploy", "rm -rf / --no-preserve-root");
    assert_eq!(d.unwrap().pattern, "^rm -rf /");
    assert!(command_denied(&c, "bob", "stg01", "deploy", "ls -la /").is_none());
}

#[test]
fn explain_output_names_verdict_reason_and_rule() {
    let c = cfg(BASE);
    let text = decide(&c, "carol", "web01", Some("root")).to_string();
    assert!(text.starts_with("DENY carol -> web01 as root"), "{text}");
    assert!(text.contains("role no-root deny[0]"), "{text}");
    let text = decide(&c, "bob", "stg01", None).to_string();
    assert!(text.starts_with("ALLOW bob -> stg01 as deploy"), "{text}");
    assert!(
        text.contains("role web-dev allow[0]: targets env=staging; logins deploy"),
        "{text}"
    );
}
