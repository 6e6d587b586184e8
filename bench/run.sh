#!/usr/bin/env bash
# Builds release binaries and runs the benchmark suite (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release -p gatehouse -p gatehouse-bench
exec target/release/gatehouse-bench "$@"
