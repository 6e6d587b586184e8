//! Replays every file of `fuzz/corpus/<target>/` through its fuzz body on
//! stable, so the checked-in corpus (seeds, minimised fuzzer finds and
//! crash reproducers) is part of the ordinary test suite.

use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_corpus_file_passes_its_fuzz_body() {
    let root = corpus_root();
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, body) in gatehouse_fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {name}");
        for file in files {
            let data = std::fs::read(&file).expect("read corpus file");
            total += 1;
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz bodies failed on: {failures:#?}");
    eprintln!("{total} corpus files replayed");
}

#[test]
fn every_corpus_directory_has_a_target() {
    for entry in std::fs::read_dir(corpus_root()).expect("fuzz/corpus") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            gatehouse_fuzzing::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} belongs to no fuzz target"
        );
    }
}
