#!/usr/bin/env bash
# Builds every cargo-fuzz target under fuzz/ once and runs each for
# SECONDS (default 20); fails on any crash. Installs nothing: needs
# cargo-fuzz (`cargo install cargo-fuzz --locked`; .ci/run does it) and a
# C++ compiler for libfuzzer-sys. Works on stable Rust through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags). Seeds are read from
# fuzz/seeds/<target>/ (committed); what a run adds goes to
# fuzz/corpus/<target>/ and crashes to fuzz/artifacts/<target>/ (both
# ignored by git), so a run leaves the tree clean.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Env: FUZZ_SANITIZER (default address; `none` is ~2x faster, no ASan).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer" --debug-assertions
echo "fuzz: built in $(( $(date +%s) - start )) s (sanitizer $sanitizer)"
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    log="$logs/$t.log"
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: 2 GiB.
    if cargo fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    # libFuzzer's last status line (`#N DONE cov: ...` after -runs; after
    # -max_total_time the last `#N ... cov: ... exec/s` line) and its stats.
    cov_line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 | tr '\t' ' ' || true)
    execs=$(awk '/^stat::number_of_executed_units/ {print $2}' "$log")
    rate=$(awk '/^stat::average_exec_per_sec/ {print $2}' "$log")
    echo "fuzz: $t $status: ${execs:-?} execs, ${rate:-?} exec/s, last: ${cov_line:-none}"
    if [ "$status" = FAILED ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|artifact_prefix' "$log" | head -20 || true
        echo "fuzz: full log in $log"
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash ($(( $(date +%s) - start )) s in all)"
