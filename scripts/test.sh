#!/usr/bin/env bash
# Runs the whole Gatehouse test suite: formatting, lints, unit tests and
# the integration tests that drive real OpenSSH programs and real databases.
# Installs what cargo does not (OpenSSH server and client, rsync, tmux,
# sqlite3) with apt-get when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
[ "$status" = 0 ] || exit "$status"
bash bench/fuzz.sh --ci || { echo "FUZZING FAILED: a fuzz target crashed (see above; reproducers in fuzz/artifacts/)"; exit 1; }
# A short soak (30 mixed real sessions in 45 s through a release gateway):
# resources back to their level after the load, every session's events
# complete. The 10-minute version is `bash bench/soak.sh`.
bash bench/soak.sh --short || { echo "SOAK FAILED: see the report above"; exit 1; }
