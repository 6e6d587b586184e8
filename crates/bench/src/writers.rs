//! `GH_BENCH_ONLY=writers`: audit ingest into one PostgreSQL database
//! from 1, 2 and 4 writers at once, each a store of its own (its own pool
//! and in-process group commit, as a gateway node has), all appending to
//! the one global chain the database serialises. Each writer runs
//! `GH_BENCH_WRITER_TASKS` (default 16) concurrent appenders, as a busy
//! node's sessions do, plus one run of batches of 1,000. After each run
//! the chain is verified.
//!
//! Reports events/s in total and per writer, and whether the chain
//! verified: the measure behind the design choice in docs/deploying.md
//! ("One chain for every node").

use std::time::{Duration, Instant};

use gatehouse_model::{NewEvent, Outcome, Severity};
use gatehouse_store::Store;
use serde_json::{Map, Value};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn psql(sql: &str) -> bool {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qtAc",
            sql,
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A fresh database for one run.
pub(crate) fn database(name: &str) -> String {
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    assert!(
        psql(&format!("CREATE DATABASE {name}")),
        "PostgreSQL on 127.0.0.1:5432 (user postgres) is needed"
    );
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

pub(crate) fn drop_database(name: &str) {
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

fn event(writer: u64, i: u64) -> NewEvent {
    NewEvent::new(
        "command",
        Severity::Info,
        Outcome::Success,
        &format!("node-{writer}"),
    )
    .user(format!("user{}", i % 100))
    .details(serde_json::json!({"command": "ls -la /srv"}))
}

struct Run {
    rate: f64,
    batched: f64,
    verified: bool,
}

/// `writers` stores on one database, `tasks` appenders each, for
/// `seconds`; then batches of 1,000 from every writer for `seconds`.
async fn run(writers: u64, tasks: u64, seconds: u64) -> Run {
    let name = format!("gh_bench_writers_{}_{writers}", std::process::id());
    let url = database(&name);
    let mut stores = Vec::new();
    for _ in 0..writers {
        stores.push(Store::open(&url).await.expect("store"));
    }
    let deadline = Duration::from_secs(seconds);
    let t = Instant::now();
    let mut handles = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        for k in 0..tasks {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while t.elapsed() < deadline {
                    store
                        .append(&event(w as u64, n * tasks + k))
                        .await
                        .expect("append");
                    n += 1;
                }
                n
            }));
        }
    }
    let mut total = 0;
    for h in handles {
        total += h.await.expect("appender");
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut handles = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while t.elapsed() < deadline {
                let batch = (0..1000).map(|i| event(w as u64, n + i)).collect();
                store.append_batch(batch).await.expect("append batch");
                n += 1000;
            }
            n
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.expect("batcher");
    }
    let batched = total as f64 / t.elapsed().as_secs_f64();

    let verified = match stores[0].verify_chain().await {
        Ok(report) => report.first_bad.is_none(),
        Err(e) => {
            eprintln!("verify: {e}");
            false
        }
    };
    for s in stores {
        s.close().await;
    }
    drop_database(&name);
    Run {
        rate,
        batched,
        verified,
    }
}

pub async fn run_all(table: &mut String, json: &mut Map<String, Value>) {
    let tasks = env_u64("GH_BENCH_WRITER_TASKS", 16);
    let seconds = env_u64("GH_BENCH_WRITER_SECONDS", 10);
    let mut rows = Vec::new();
    table.push_str(&format!(
        "\naudit ingest into one PostgreSQL chain, {tasks} appenders per writer, {seconds} s per run:\n\
         | writers | events/s (single appends) | per writer | events/s (batches of 1000) | chain verified |\n|---:|---:|---:|---:|---|\n"
    ));
    for writers in [1u64, 2, 4] {
        let r = run(writers, tasks, seconds).await;
        table.push_str(&format!(
            "| {writers} | {:.0} | {:.0} | {:.0} | {} |\n",
            r.rate,
            r.rate / writers as f64,
            r.batched,
            if r.verified { "yes" } else { "NO" }
        ));
        rows.push(serde_json::json!({
            "writers": writers, "events_per_s": r.rate, "batched_per_s": r.batched,
            "verified": r.verified,
        }));
    }
    json.insert("writers".into(), Value::Array(rows));
}
