#!/usr/bin/env bash
# Builds the fuzz targets and runs each, one after the other, for SECONDS seconds (default
# 10) on its kept corpus (fuzz/corpus/<target>/), then prints the executions of each.
#   fuzz/run.sh [SECONDS] [TARGET...]
# Works on the stable toolchain: no sanitizer (the code forbids `unsafe`), libFuzzer's
# coverage instrumentation only, with debug assertions and overflow checks on. New inputs
# found go to fuzz/target/new-corpus/<target>/ (not kept); a crash stops the script, its
# input in fuzz/artifacts/<target>/. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
# TRM_FUZZ_DEV=1 builds without optimisation (CI: a quicker build; far fewer executions a
# second, enough to replay the corpus and catch a regression).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-10}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# cargo-fuzz has no --locked: check the lock file first, so the build cannot change it.
cargo fetch --locked
build=(--sanitizer none)
if [ "${TRM_FUZZ_DEV:-}" = 1 ]; then
    build+=(--dev)
fi
cargo fuzz build "${build[@]}"
total=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "target/new-corpus/$t" "corpus/$t"
    log="target/fuzz-$t.log"
    echo "== $t: ${seconds}s"
    if ! cargo fuzz run "${build[@]}" "$t" "target/new-corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $t failed: see $log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    runs="${runs:-0}"
    total=$((total + runs))
    summary+=("$(printf '%-16s %12s executions in %ss' "$t" "$runs" "$seconds")")
done
printf '%s\n' "${summary[@]}"
printf '%-16s %12s executions\n' "total" "$total"
