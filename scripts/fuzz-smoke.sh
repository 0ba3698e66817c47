#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time (FUZZ_SECONDS each, default 20).
# Long runs are done by hand: cargo +nightly fuzz run TARGET -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-20}"
for t in $(cargo +nightly fuzz list); do
  echo "-- fuzz $t (${secs}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|Done|==|SUMMARY)" || true
  test "${PIPESTATUS[0]}" -eq 0
done
