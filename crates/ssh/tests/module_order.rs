//! The modules of `gatehouse-ssh` are layered in the direction data flows
//! (accept → connection → authentication → access decision → channel →
//! pump → taps → audit trail): each module may use only the modules that
//! come before it in [`ORDER`] (bottom first). That rules out import
//! circles; a new module must be placed in the list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom first: a module may import only modules listed above it.
const ORDER: &[&str] = &[
    "keys",
    "certs",
    "limits",
    "proxy",
    "audit",
    "nodes",
    "upstream",
    "session",
    "recorder",
    "transfers",
    "guard",
    "connect",
    "pump",
    "access",
    "menu",
    "channel",
    "sso",
    "auth",
    "handler",
    "accept",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source of a module without comments (doc links name modules too).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of each item in a `use` tree's braces.
fn brace_items(tree: &str, out: &mut BTreeSet<String>) {
    let mut depth = 0;
    let mut item = String::new();
    for c in tree.chars() {
        match c {
            '{' => {
                depth += 1;
                item.push(c);
            }
            '}' => {
                depth -= 1;
                item.push(c);
            }
            ',' if depth == 0 => {
                push_first(&item, out);
                item.clear();
            }
            _ => item.push(c),
        }
    }
    push_first(&item, out);
}

fn push_first(item: &str, out: &mut BTreeSet<String>) {
    let first: String = item
        .trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !first.is_empty() {
        out.insert(first);
    }
}

/// The sibling modules a module's code names: `crate::NAME`,
/// `use crate::{NAME, ..}` and `super::NAME`.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            if let Some(tree) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = tree
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .unwrap_or(tree.len());
                brace_items(&tree[..end], &mut out);
            } else {
                push_first(rest, &mut out);
            }
        }
    }
    out
}

fn modules() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src())
        .expect("read src")
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .filter(|n| n != "lib")
        .collect();
    names.sort();
    names
}

#[test]
fn every_module_has_a_place_in_the_order() {
    let unplaced: Vec<String> = modules()
        .into_iter()
        .filter(|m| !ORDER.contains(&m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from ORDER in tests/module_order.rs (place them where they belong in the data flow): {unplaced:?}"
    );
}

#[test]
fn modules_import_only_modules_below_them() {
    let mut wrong = Vec::new();
    for module in modules() {
        let Some(at) = ORDER.iter().position(|m| *m == module) else {
            continue;
        };
        let text = std::fs::read_to_string(src().join(format!("{module}.rs"))).expect("read");
        for used in references(&code(&text)) {
            let Some(used_at) = ORDER.iter().position(|m| *m == used) else {
                continue;
            };
            if used_at > at {
                wrong.push(format!(
                    "{module} uses {used}, which comes later in the data flow"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering (a module may use only modules before it in ORDER):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn lib_declares_the_modules_and_documents_them_in_order() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let declared: Vec<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.to_string())
        })
        .collect();
    // rustfmt sorts the declarations; the list in the docs keeps the order.
    let mut declared = declared;
    declared.sort();
    let mut all: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(
        declared, all,
        "lib.rs declares exactly the modules in ORDER"
    );
    let documented: Vec<String> = lib
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("//! - ")?;
            let name = rest.trim_start_matches(['[', '`']);
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            Some(name)
        })
        .collect();
    assert_eq!(documented, ORDER, "lib.rs lists its modules in ORDER");
}

#[test]
fn the_reference_finder_sees_every_form() {
    let found = references(
        "use crate::session::{A, B};\nuse crate::{audit::Audit, keys, limits::{Slot, Startup}};\nlet x = crate::guard::needed();\nuse super::menu::run;",
    );
    let want: BTreeSet<String> = ["session", "audit", "keys", "limits", "guard", "menu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
}
