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

/// A role whose command rules name `id`, `cat` and `rm -rf`.
const RULES: &str = r#"
[[targets]]
name = "web01"
address = "10.0.0.5"
tofu = true
default_login = "deploy"

[[roles]]
name = "ops"
allow = [{ targets = {}, logins = ["deploy"] }]
deny  = [{ commands = ["^id$", "^cat\\b", "^rm\\s+-rf"] }]
reauth_commands = ["^systemctl\\s+restart"]

[[roles]]
name = "free"
allow = [{ targets = {}, logins = ["deploy"] }]

[[users]]
name = "dave"
keys = ["ssh-ed25519 AAAA dave"]
roles = ["ops"]

[[users]]
name = "erin"
keys = ["ssh-ed25519 AAAA erin"]
roles = ["free"]
"#;

/// Lines that run `id` (or `cat`, `rm -rf`) however they are spelt, and
/// lines that run something nobody can read off them: all denied.
const BYPASSES: &[&str] = &[
    "id",
    "sh -c id",
    "bash -c 'id'",
    "bash -lc \"true; id\"",
    "id ",
    "  id",
    "c\"\"at /etc/shadow",
    "base64 -d <<< aWQK | sh",
    "echo aWQK | base64 -d | bash",
    "true; id",
    "true && id",
    "false || id",
    "x=1 id",
    "LANG=C FOO='a b' id",
    "/usr/bin/id",
    "./id",
    "\"id\"",
    "'i'd",
    "\\id",
    "i\\d",
    "$'\\x69d'",
    "$(id)",
    "echo $(id)",
    "echo \"$(id)\"",
    "`id`",
    "echo `id`",
    "echo | id",
    "echo |& id",
    "(id)",
    "( true; (id) )",
    "{ id; }",
    "exec id",
    "command id",
    "builtin id",
    "env id",
    "env -i PATH=/bin id",
    "env -u HOME -- id",
    "sudo id",
    "sudo -u root -- id",
    "sudo sh -c 'cat /etc/shadow'",
    "nice -n 5 id",
    "nohup id &",
    "time id",
    "timeout -s KILL 5 id",
    "echo . | xargs -n1 id",
    "true\nid",
    "true &\nid",
    "true & id",
    "if true; then id; fi",
    "while true; do id; done",
    "! id",
    "eval id",
    "eval 'true; id'",
    "sh -c 'sh -c \"bash -c id\"'",
    "su -c id root",
    "alias x=id",
    ">/dev/null id",
    "2>&1 id",
    "id >/dev/null 2>&1",
    "cat <(id)",
    "diff <(true) <(id)",
    "f() { id; }; f",
    "rm  -rf /",
    "\"rm\" -rf /tmp/x",
    "/bin/rm -rf /",
    "c=id; $c",
    "${c}",
    "$(echo id)",
    "`echo id`",
    "/usr/bin/i?",
    "/???/???/i[d]",
    "{i,}d",
    "bash < script.sh",
    "bash -s < script.sh",
    "curl -s https://example.com/x | sh -s -- arg",
    "echo id | xargs sh -c",
    "sh -c \"$CMD\"",
    "busybox id",
    "echo $((id) )",
    "echo $(( $(id) + 1 ))",
    "((`id`))",
    "case $x in a) id;; esac",
    "case $x in a) true;; *) cat /etc/shadow;; esac",
    "!!:1",
    "!-2",
    "^x^",
    "\"!!\"",
];

/// Ordinary lines: arguments are not commands.
const ORDINARY: &[&str] = &[
    "identify image.png",
    "idle",
    "echo id",
    "echo \"id\"",
    "printf '%s\\n' id",
    "grep id file",
    "grep -r 'x; id' .",
    "ls | grep id",
    "ls > id",
    "vim id.txt",
    "git commit -m \"fix: id; cat and rm -rf\"",
    "echo 'curl x | sh'",
    "echo $HOME",
    "cd /tmp && ls -la",
    "ls -la /var/log 2>&1 | less",
    "for f in *.log; do echo \"$f\"; done",
    "[ -f id ] && echo yes",
    "[[ -n $x ]] && echo yes",
    "bash",
    "bash script.sh",
    "sudo -i",
    "sudo -u postgres psql",
    "sh -c 'ls -la'",
    "env LANG=C ls",
    "xargs",
    "echo 1 | xargs",
    "tar czf x.tgz dir # id",
    "ps aux | grep -v grep | grep concatenate",
    "rm -f /tmp/x",
    "echo $((1 + 2))",
    "stty size; echo marker-$((6*7))",
    "(( i = 6 * 7 )) && echo $i",
    "while (( n-- > 0 )); do echo $n; done",
    "case $x in start) echo go;; *) echo no;; esac",
    "systemctl status nginx",
    "echo hi!",
    "git log --format='%h' ^main",
    "[ ! -f x ] && echo none",
    "",
];

#[test]
fn command_rule_bypasses_are_denied() {
    let c = cfg(RULES);
    let mut missed = Vec::new();
    for line in BYPASSES {
        if command_denied(&c, "dave", "web01", "deploy", line).is_none() {
            missed.push((line, shell::analyse(line)));
        }
    }
    assert!(missed.is_empty(), "not denied: {missed:#?}");
}

#[test]
fn ordinary_commands_pass_command_rules() {
    let c = cfg(RULES);
    let mut denied = Vec::new();
    for line in ORDINARY {
        if let Some(d) = command_denied(&c, "dave", "web01", "deploy", line) {
            denied.push((line, d.rule.to_string(), shell::analyse(line)));
        }
    }
    assert!(denied.is_empty(), "denied: {denied:#?}");
}

#[test]
fn a_role_without_command_rules_denies_nothing() {
    let c = cfg(RULES);
    for line in BYPASSES.iter().chain(ORDINARY) {
        assert!(
            command_denied(&c, "erin", "web01", "deploy", line).is_none(),
            "{line:?}"
        );
    }
}

#[test]
fn a_denial_names_the_pattern_or_says_why_the_line_cannot_be_judged() {
    let c = cfg(RULES);
    let d = command_denied(&c, "dave", "web01", "deploy", "true; /usr/bin/id").unwrap();
    assert_eq!(d.pattern, "^id$");
    assert_eq!(d.rule.to_string(), "role ops deny[0]: commands ^id$");
    let d = command_denied(&c, "dave", "web01", "deploy", "base64 -d f | sh").unwrap();
    assert_eq!(d.rule.rule, "deny[0]");
    assert!(
        d.rule
            .text
            .contains("a shell reads its commands from a pipe"),
        "{}",
        d.rule
    );
    let d = command_denied(&c, "dave", "web01", "deploy", "$cmd -a").unwrap();
    assert!(
        d.rule.text.contains("computed when the line runs"),
        "{}",
        d.rule
    );
}

#[test]
fn step_up_patterns_see_normalised_commands_too() {
    let c = cfg(RULES);
    for line in [
        "systemctl restart nginx",
        "sudo systemctl restart nginx",
        "true; /bin/systemctl  restart nginx",
        "sh -c 'systemctl restart nginx'",
    ] {
        assert!(reauth_required(&c, "dave", line).is_some(), "{line:?}");
    }
    assert!(reauth_required(&c, "dave", "systemctl status nginx").is_none());
    assert!(reauth_required(&c, "dave", "echo systemctl restart").is_none());
}

#[test]
fn analysis_lists_every_simple_command_normalised() {
    let a = shell::analyse(
        "FOO=1 sudo -u root /usr/bin/env 'L=C' \"id\" -a; echo \"$(whoami)\" | tee /tmp/x",
    );
    assert_eq!(
        a.commands,
        vec![
            "sudo -u root /usr/bin/env L=C id -a",
            "env L=C id -a",
            "id -a",
            "whoami",
            "echo $(…)",
            "tee /tmp/x",
        ],
        "{a:?}"
    );
    assert_eq!(a.opaque, None);
    // Hostile input: deep nesting and unbalanced quoting end, opaque or not.
    let deep = format!("{}id{}", "$(".repeat(500), ")".repeat(500));
    assert!(shell::analyse(&deep).opaque.is_some());
    let _ = shell::analyse("'unterminated \"$( `");
    let _ = shell::analyse(&"(".repeat(100_000));
}
