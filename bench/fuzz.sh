#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of every parser that
# reads bytes from a user or a target: username, sftp, scp, capture,
# guard, asciicast, config, runbook (bodies in crates/fuzzing, harness in
# fuzz/). Each target runs for a bounded time, one after the other, with
# bounded memory; the script fails when any target crashes, leaks past
# the memory limit or hangs.
#
#   bash bench/fuzz.sh              60 s per target; new finds go to the
#                                   working corpus fuzz/target/corpus/<target>/
#                                   (kept between runs, not committed), then
#                                   minimised (what `cargo fuzz cmin` does)
#   bash bench/fuzz.sh --ci         12 s per target; the checked-in corpus
#                                   is read, never written
#   bash bench/fuzz.sh 300 sftp scp 300 s each for the targets named
#
# Environment: FUZZ_SECONDS (time per target), FUZZ_RSS_MB (memory limit,
# default 512). Needs a nightly toolchain; installs cargo-fuzz if missing.
# Crash reproducers land in fuzz/artifacts/<target>/ (not committed: a
# fixed crash becomes a unit test next to the parser and a corpus file).
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0
seconds=${FUZZ_SECONDS:-60}
targets=()
for arg in "$@"; do
    case "$arg" in
        --ci) ci=1; seconds=${FUZZ_SECONDS:-12} ;;
        ''|*[!0-9]*) targets+=("$arg") ;;
        *) seconds=$arg ;;
    esac
done
rss_mb=${FUZZ_RSS_MB:-512}
all=(username sftp scp capture guard asciicast config runbook)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz: harness built in $(($(date +%s) - start)) s"
# Run the binaries just built: `cargo fuzz run` would rebuild first
# whenever a source file changed meanwhile.
bin_dir=fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

# AddressSanitizer keeps 256 MiB of freed memory in quarantine by default,
# which alone would eat half the memory limit.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=32}
# Each target's libFuzzer log stays here for a look after the run.
logs=fuzz/target/fuzz-logs
rm -rf "$logs"
mkdir -p "$logs"
failed=()
summary="target    secs  execs/s  runs      cov    ft     corpus  peak_rss_mb  result"
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    if [ $ci = 1 ]; then
        # New units go to a scratch directory; the checked-in corpus only
        # seeds the run.
        dirs=("$logs/$t" "fuzz/corpus/$t")
        mkdir -p "$logs/$t"
    else
        # New units go to a working corpus kept between runs (not
        # committed: it grows to megabytes); the checked-in seeds and
        # regressions stay as they are.
        mkdir -p "fuzz/target/corpus/$t"
        dirs=("fuzz/target/corpus/$t" "fuzz/corpus/$t")
    fi
    echo "fuzz: $t for ${seconds}s"
    set +e
    mkdir -p "fuzz/artifacts/$t"
    "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=25 \
        -print_final_stats=1 "${dirs[@]}" >"$logs/$t.log" 2>&1
    status=$?
    set -e
    log="$logs/$t.log"
    stat() { awk -v k="stat::$1:" '$1 == k { print $2 }' "$log" | tail -1; }
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.*corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
    result=ok
    if [ $status != 0 ]; then
        result="FAILED (exit $status)"
        failed+=("$t")
        grep -E 'panicked at|ERROR: libFuzzer|==ERROR|SUMMARY|Test unit written to|Slowest unit|out-of-memory|Timeout' "$log" | head -20 || true
    fi
    summary+=$'\n'$(printf '%-9s %-5s %-8s %-9s %-6s %-6s %-7s %-12s %s' "$t" "$seconds" \
        "$(stat average_exec_per_sec)" "$(stat number_of_executed_units)" \
        "${cov:--}" "${ft:--}" "${corp:--}" "$(stat peak_rss_mb)" "$result")
    if [ $ci = 0 ] && [ $status = 0 ]; then
        # What `cargo fuzz cmin` does: keep the smallest set of inputs
        # with the same coverage.
        rm -rf "$logs/min"
        mkdir "$logs/min"
        if "$bin_dir/$t" -merge=1 -rss_limit_mb="$rss_mb" "$logs/min" "fuzz/target/corpus/$t" >"$logs/$t.cmin.log" 2>&1; then
            rm -f "fuzz/target/corpus/$t"/*
            cp "$logs/min"/* "fuzz/target/corpus/$t"/
        else
            echo "fuzz: minimising $t failed:"
            tail -5 "$logs/$t.cmin.log"
        fi
    fi
done

echo
echo "$summary"
if [ $ci = 0 ]; then
    echo
    echo "working corpus after cmin: $(find fuzz/target/corpus -type f | wc -l) files, $(du -sb fuzz/target/corpus | cut -f1) bytes (fuzz/target/corpus)"
fi
echo "fuzz: $(( $(date +%s) - start )) s in all"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (reproducers in fuzz/artifacts/; replay with cargo +nightly fuzz run TARGET FILE)"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran without a crash"
