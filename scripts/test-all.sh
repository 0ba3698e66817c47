#!/usr/bin/env bash
# Runs every test weft has: formatting, lints, unit, property, simulator, CNI, lab and
# end-to-end tests, and a short bounded run of every fuzz target. Run it as root: the
# namespace tests need it. Missing Debian packages and cargo-fuzz are installed first.
# With CI=true a test that cannot run (no root, no namespaces) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --fuzz
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binaries the lab tests run)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== fuzz smoke (bounded)"
scripts/fuzz-smoke.sh
