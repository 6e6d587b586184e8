//! `gatehouse audit verify`: the hash chain, the signed checkpoints in the
//! store, the checkpoints anchored outside it (`--anchor FILE`, else the
//! configured anchor file when it exists) and, with `--recordings`, every
//! finished recording against the digest its `session.end` event holds.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use gatehouse_model::{Config, EventType};
use gatehouse_store::recordings::{self, Integrity};
use gatehouse_store::{Signer, Store};

use crate::cli::Format;

/// Events read per batch while looking for `session.end`.
const BATCH: i64 = 5000;

/// One recording that does not match its session.end.
struct RecordingProblem {
    session: String,
    recording: String,
    problem: String,
}

pub async fn run(
    config: &Config,
    store: &Store,
    format: Format,
    check_recordings: bool,
    anchor: Option<&Path>,
) -> Result<ExitCode> {
    let chain = store.verify_chain().await?;
    let public_key = if config.audit.signing_key.exists() {
        Some(Signer::load_or_create(&config.audit.signing_key)?.public_key_hex())
    } else {
        None
    };
    let checkpoints = match &public_key {
        Some(key) => Some(store.verify_checkpoints(key).await?),
        None => None,
    };
    // An explicit --anchor must be readable; the configured anchor file is
    // checked whenever it exists.
    let configured = config.audit.anchor_path();
    let anchor_file = match anchor {
        Some(p) => Some(p.to_path_buf()),
        None if configured.exists() => Some(configured),
        None => None,
    };
    let anchored = match &anchor_file {
        Some(p) => Some(store.verify_anchor(p, public_key.as_deref()).await?),
        None => None,
    };
    let (recordings_checked, recording_problems) = if check_recordings {
        let (n, p) = verify_recordings(config, store).await?;
        (Some(n), p)
    } else {
        (None, Vec::new())
    };

    let mut problems: Vec<String> = Vec::new();
    if let Some(bad) = &chain.first_bad {
        problems.push(format!(
            "FAILED at event {} (seq {}): {}",
            bad.id, bad.seq, bad.problem
        ));
    } else if let Some(p) = checkpoints.as_ref().and_then(|c| c.problem.clone()) {
        problems.push(format!("FAILED: {p}"));
    }
    if let Some(p) = anchored.as_ref().and_then(|a| a.problem.clone()) {
        problems.push(format!("FAILED: {p}"));
    }
    for r in &recording_problems {
        problems.push(format!(
            "FAILED: recording {} of session {}: {}",
            r.recording, r.session, r.problem
        ));
    }
    let ok = problems.is_empty();

    if format == Format::Json {
        let mut out = serde_json::json!({
            "ok": ok,
            "events_checked": chain.events_checked,
            "checkpoints_checked": checkpoints.as_ref().map(|c| c.checked),
            "problems": problems,
        });
        if let Some(bad) = &chain.first_bad {
            out["seq"] = bad.seq.into();
            out["id"] = bad.id.clone().into();
            out["problem"] = bad.problem.clone().into();
        } else if let Some(p) = problems.first() {
            out["problem"] = p.trim_start_matches("FAILED: ").into();
        }
        if let (Some(file), Some(a)) = (&anchor_file, &anchored) {
            out["anchor"] = serde_json::json!({
                "file": file.display().to_string(),
                "checkpoints": a.anchored,
                "latest_seq": a.latest.as_ref().map(|c| c.seq),
                "ok": a.problem.is_none(),
            });
        }
        if let Some(n) = recordings_checked {
            out["recordings"] = serde_json::json!({
                "checked": n,
                "problems": recording_problems.iter().map(|r| serde_json::json!({
                    "session_id": r.session, "recording_id": r.recording, "problem": r.problem,
                })).collect::<Vec<_>>(),
            });
        }
        println!("{out}");
    } else if ok {
        let signed = checkpoints
            .as_ref()
            .map(|c| format!(", {} signed checkpoints valid", c.checked))
            .unwrap_or_else(|| ", no signing key found: checkpoints not checked".into());
        let anchor_text = match (&anchor_file, &anchored) {
            (Some(file), Some(a)) => format!(
                ", chain reaches the checkpoint at seq {} anchored in {}",
                a.latest.as_ref().map(|c| c.seq).unwrap_or(0),
                file.display()
            ),
            _ => String::new(),
        };
        let recordings_text = recordings_checked
            .map(|n| format!(", {n} recordings match their session.end"))
            .unwrap_or_default();
        println!(
            "OK: {} events, hash chain intact{signed}{anchor_text}{recordings_text}",
            chain.events_checked
        );
    } else {
        for p in &problems {
            println!("{p}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every recording listed by a `session.end` event, compared with its
/// file. Returns how many were checked and what does not match.
async fn verify_recordings(config: &Config, store: &Store) -> Result<(u64, Vec<RecordingProblem>)> {
    let storage = recordings::from_config(&config.recording)?;
    let mut checked = 0u64;
    let mut problems = Vec::new();
    let mut after = 0i64;
    loop {
        let batch = store.events_after(after, BATCH).await?;
        let Some((last, _)) = batch.last() else { break };
        after = *last;
        for (_, ev) in batch {
            if ev.event.kind != EventType::SESSION_END {
                continue;
            }
            let session = ev.event.session_id.clone().unwrap_or_default();
            for expected in recordings::listed(&ev.event.details) {
                checked += 1;
                let problem = match recordings::check(storage.as_ref(), &expected) {
                    Integrity::Intact => continue,
                    Integrity::Modified { sha256, bytes } => format!(
                        "{} was modified: sha256 {sha256} ({bytes} bytes), session.end holds {}{}; restore it from a backup",
                        storage.locate(&expected.id),
                        expected.sha256,
                        expected
                            .bytes
                            .map(|b| format!(" ({b} bytes)"))
                            .unwrap_or_default()
                    ),
                    Integrity::Missing => format!(
                        "{} is missing; restore it from a backup",
                        storage.locate(&expected.id)
                    ),
                    Integrity::Unreadable(e) => format!(
                        "cannot read {}: {e}; check the file's permissions",
                        storage.locate(&expected.id)
                    ),
                };
                problems.push(RecordingProblem {
                    session: session.clone(),
                    recording: expected.id.clone(),
                    problem,
                });
            }
        }
    }
    Ok((checked, problems))
}
