#!/usr/bin/env bash
# Runs every test weft has: formatting, lints, unit/property/simulator/namespace tests, and a
# short bounded run of every fuzz target. Needs root for the namespace tests; with CI=true a
# test that cannot run (no root, no namespaces) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== fuzz smoke (bounded)"
scripts/fuzz-smoke.sh
