#!/usr/bin/env bash
# Soak test (see BENCHMARKS.md, "Soak"): mixed sessions (typing, scp, -L
# forwards, sftp) through a recording gateway to a real sshd, with the
# gateway's RSS, fds and threads sampled; fails unless they are back near
# their level before the load and every session's events are complete.
#   bash bench/soak.sh           300 sessions over 10 minutes (~12 min)
#   bash bench/soak.sh --short   30 sessions over 45 s, for CI
# Knobs: GH_SOAK_SESSIONS, GH_SOAK_SECONDS, GH_SOAK_CONCURRENCY,
# GH_SOAK_SETTLE, GH_SOAK_SEED, GH_SOAK_OUT (keep samples.csv, events.json,
# report.txt and the gateway log there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release -p gatehouse -p gatehouse-bench
exec target/release/gatehouse-bench soak "$@"
