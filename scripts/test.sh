#!/usr/bin/env bash
# Runs the whole Gatehouse test suite: formatting, lints, unit tests and
# the integration tests that drive real OpenSSH programs and real databases.
# Installs what cargo does not (OpenSSH server and client, rsync, tmux,
# sqlite3) with apt-get when missing and running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in sshd:openssh-server ssh:openssh-client scp:openssh-client sftp:openssh-client \
            rsync:rsync tmux:tmux sqlite3:sqlite3 asciinema:asciinema vi:vim-tiny less:less; do
    bin=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        need+=("$pkg")
    fi
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing programs; install: ${need[*]}" >&2
        exit 1
    fi
fi

# The PostgreSQL store tests need a server on 127.0.0.1:5432 (user postgres).
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
fi

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
exit "$status"
