//! `GH_BENCH_ONLY=ingest`: batched audit ingest alone, the figure behind
//! the one-node target (batches of 1,000 events), `GH_BENCH_RUNS` rounds
//! on each backend, each round on a new store, so that one run of the
//! benchmark gives the spread. The `audit` section measures the same
//! batches once, after single and concurrent appends.

use std::time::Instant;

use gatehouse_model::{NewEvent, Outcome, Severity};
use gatehouse_store::Store;
use serde_json::{Map, Value};

/// Events per batch, and batches per round.
const BATCH: u64 = 1000;
const BATCHES: u64 = 200;

/// The bulk events of a busy node (file transfers), made before any
/// clock starts: in the gateway, sessions make their events on tasks of
/// their own.
pub fn batches() -> Vec<Vec<NewEvent>> {
    (0..BATCHES)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    NewEvent::new("sftp.close", Severity::Info, Outcome::Success, "bench")
                        .user(format!("user{}", (b + i) % 100))
                        .details(
                            serde_json::json!({"path": "/srv/data/file.bin", "bytes_written": 1048576}),
                        )
                })
                .collect()
        })
        .collect()
}

/// Events per second for `store` taking `batches`, one commit each.
pub async fn timed(store: &Store, batches: Vec<Vec<NewEvent>>) -> f64 {
    let total: usize = batches.iter().map(Vec::len).sum();
    let t = Instant::now();
    for batch in batches {
        store.append_batch(batch).await.expect("append batch");
    }
    total as f64 / t.elapsed().as_secs_f64()
}

async fn rounds(url: &dyn Fn(u64) -> String, runs: u64) -> Vec<f64> {
    let mut rates = Vec::new();
    for r in 0..runs {
        let store = Store::open(&url(r)).await.expect("store");
        rates.push(timed(&store, batches()).await);
        let report = store.verify_chain().await.expect("verify");
        assert!(
            report.first_bad.is_none(),
            "the chain did not verify after round {r}: {:?}",
            report.first_bad
        );
        store.close().await;
    }
    rates
}

fn spread(rates: &[f64]) -> String {
    let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().cloned().fold(0.0, f64::max);
    format!("{} (spread {lo:.0}–{hi:.0})", each.join(", "))
}

pub async fn run(runs: u64, table: &mut String, json: &mut Map<String, Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = |r: u64| format!("sqlite://{}/ingest{r}.db", dir.path().display());
    let lite = rounds(&sqlite, runs).await;
    let pid = std::process::id();
    let postgres = |r: u64| crate::writers::database(&format!("gh_bench_batch_{pid}_{r}"));
    let pg = rounds(&postgres, runs).await;
    for r in 0..runs {
        crate::writers::drop_database(&format!("gh_bench_batch_{pid}_{r}"));
    }
    table.push_str(&format!(
        "batched ingest, {BATCHES} commits of {BATCH} events, events/s per round: SQLite {}; PostgreSQL {}\n",
        spread(&lite),
        spread(&pg)
    ));
    json.insert(
        "batched_ingest_events_per_s".into(),
        serde_json::json!({"sqlite": lite, "postgres": pg}),
    );
}
