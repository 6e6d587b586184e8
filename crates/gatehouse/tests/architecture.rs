//! ARCHITECTURE.md's rules that a program can check: which crate may
//! depend on which, which crates may use russh and anyhow, how long a
//! function may be, and that the repository cites no file outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every workspace crate and the Gatehouse crates it may depend on
/// (normal dependencies; dev-dependencies are free). Keep in step with
/// the arrows in ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    ("gatehouse-model", &[]),
    ("gatehouse-policy", &["gatehouse-model"]),
    ("gatehouse-record", &[]),
    ("gatehouse-auth", &[]),
    ("gatehouse-metrics", &[]),
    ("gatehouse-oidc", &["gatehouse-model"]),
    ("gatehouse-store", &["gatehouse-model"]),
    ("gatehouse-audit", &["gatehouse-model"]),
    ("gatehouse-sinks", &["gatehouse-model", "gatehouse-store"]),
    (
        "gatehouse-control",
        &[
            "gatehouse-model",
            "gatehouse-policy",
            "gatehouse-store",
            "gatehouse-audit",
            "gatehouse-auth",
        ],
    ),
    (
        "gatehouse-console",
        &[
            "gatehouse-model",
            "gatehouse-policy",
            "gatehouse-auth",
            "gatehouse-store",
            "gatehouse-audit",
            "gatehouse-control",
            "gatehouse-record",
            "gatehouse-oidc",
        ],
    ),
    (
        "gatehouse-ssh",
        &[
            "gatehouse-model",
            "gatehouse-policy",
            "gatehouse-store",
            "gatehouse-record",
            "gatehouse-auth",
            "gatehouse-audit",
            "gatehouse-control",
            "gatehouse-metrics",
            "gatehouse-oidc",
        ],
    ),
    (
        "gatehouse",
        &[
            "gatehouse-model",
            "gatehouse-policy",
            "gatehouse-store",
            "gatehouse-record",
            "gatehouse-auth",
            "gatehouse-audit",
            "gatehouse-sinks",
            "gatehouse-control",
            "gatehouse-ssh",
            "gatehouse-metrics",
            "gatehouse-console",
        ],
    ),
    (
        "gatehouse-bench",
        &[
            "gatehouse-testkit",
            "gatehouse-model",
            "gatehouse-store",
            "gatehouse-sinks",
            "gatehouse-auth",
        ],
    ),
    ("gatehouse-testkit", &[]),
    (
        "gatehouse-fuzzing",
        &[
            "gatehouse-model",
            "gatehouse-policy",
            "gatehouse-record",
            "gatehouse-audit",
            "gatehouse-ssh",
        ],
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Crate name → its normal (non-dev) dependencies.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut map = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap_or_default().to_string())
            .collect();
        map.insert(p["name"].as_str().unwrap_or_default().to_string(), deps);
    }
    map
}

#[test]
fn crates_depend_only_on_what_architecture_md_allows() {
    let deps = dependencies();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (name, uses) in &deps {
        let Some(ok) = allowed.get(name.as_str()) else {
            wrong.push(format!(
                "{name} is not in ARCHITECTURE.md's map (add it to ALLOWED)"
            ));
            continue;
        };
        for d in uses.iter().filter(|d| d.starts_with("gatehouse")) {
            if !ok.contains(&d.as_str()) {
                wrong.push(format!("{name} must not depend on {d}"));
            }
        }
    }
    for name in allowed.keys() {
        assert!(
            deps.contains_key(*name),
            "{name} is listed but not in the workspace"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn only_the_ssh_crate_knows_russh_and_only_the_binary_uses_anyhow() {
    for (name, uses) in dependencies() {
        if uses.contains("russh") {
            assert_eq!(name, "gatehouse-ssh", "{name} depends on russh");
        }
        if uses.contains("anyhow") {
            assert!(
                ["gatehouse", "gatehouse-bench"].contains(&name.as_str()),
                "{name} uses anyhow; libraries use thiserror"
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The line with the brace that closes the function starting at
/// `start`, counting braces outside strings, chars and comments.
fn function_end(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0i64;
    let mut opened = false;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' if in_str => {
                    chars.next();
                }
                '"' => in_str = !in_str,
                '/' if !in_str && chars.peek() == Some(&'/') => break,
                '\'' if !in_str => {
                    // A char literal such as '{' (not a lifetime).
                    let rest: String = chars.clone().take(3).collect();
                    if rest.chars().nth(1) == Some('\'') {
                        chars.next();
                        chars.next();
                    } else if rest.starts_with('\\') {
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    }
                }
                '{' if !in_str => {
                    depth += 1;
                    opened = true;
                }
                '}' if !in_str => depth -= 1,
                _ => {}
            }
        }
        if opened && depth <= 0 {
            return Some(i);
        }
        if !opened && line.trim_end().ends_with(';') {
            return None;
        }
    }
    None
}

fn is_fn_start(line: &str) -> bool {
    let t = line.trim_start();
    let t = t
        .strip_prefix("pub(crate) ")
        .or_else(|| t.strip_prefix("pub "))
        .unwrap_or(t);
    let t = t.strip_prefix("async ").unwrap_or(t);
    t.starts_with("fn ")
}

/// Functions outside tests, the benchmark and the fuzz bodies stay under
/// 120 lines, unless a comment right above says `one piece:` and why.
#[test]
fn no_function_is_longer_than_120_lines() {
    const LIMIT: usize = 120;
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let mut long = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root()).unwrap_or(&path).to_path_buf();
        let text = rel.to_string_lossy().to_string();
        if !text.contains("/src/")
            || text.starts_with("crates/bench/")
            || text.starts_with("crates/fuzzing/")
            || text.ends_with("tests.rs")
        {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        let lines: Vec<&str> = source.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].starts_with("#[cfg(test)]") {
                break;
            }
            if !is_fn_start(lines[i]) {
                i += 1;
                continue;
            }
            let Some(end) = function_end(&lines, i) else {
                i += 1;
                continue;
            };
            let excused = lines[i.saturating_sub(4)..i]
                .iter()
                .any(|l| l.contains("one piece:"));
            if end - i + 1 > LIMIT && !excused {
                long.push(format!("{}:{}: {} lines", text, i + 1, end - i + 1));
            }
            i = end + 1;
        }
    }
    assert!(
        long.is_empty(),
        "functions over {LIMIT} lines (split them, or say above why one must be one piece with `one piece:`):\n{}",
        long.join("\n")
    );
}

/// The repository documents itself: nothing in it points the reader to a
/// specification kept elsewhere.
#[test]
fn nothing_cites_a_file_outside_the_repository() {
    let out = Command::new("git")
        .args(["ls-files"])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    let files = String::from_utf8_lossy(&out.stdout);
    let outside = ["PRODUCT", ".md"].concat();
    let shared = ["../", "shared/"].concat();
    let mut cites = Vec::new();
    for f in files.lines() {
        if f.starts_with("vendor/") || f.starts_with("fuzz/corpus/") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root().join(f)) else {
            continue;
        };
        if text.contains(&outside) || text.contains(&shared) {
            cites.push(f.to_string());
        }
    }
    assert!(
        cites.is_empty(),
        "files citing outside documents: {cites:?}"
    );
}
