#!/usr/bin/env bash
# Runs every test weft has: formatting, lints, unit, property, simulator, CNI, lab and
# end-to-end tests (twice: with the data path's offloads and without), and a short bounded
# run of every fuzz target. Run it as root: the namespace tests need it. Missing Debian
# packages and cargo-fuzz are installed first.
# With CI=true a test that cannot run (no root, no namespaces) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# A hung test must fail the run with its name on screen, not use up CI's time: each test
# command gets a limit well above its usual time (about 6 and 2 minutes here). timeout
# signals its whole process group, so the test binaries go too.
bounded() {
    local limit=$1
    shift
    local rc=0
    timeout --kill-after=30s "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "test-all: '$*' did not finish within $limit (a test hung; the last test" \
            "named above 'has been running for over 60 seconds' is the one)" >&2
    fi
    return "$rc"
}

scripts/install-deps.sh --fuzz
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binaries the lab tests run)"
cargo build --workspace --bins --locked
echo "== cargo test (routers with offloads: TUN TSO/GRO, UDP GSO/GRO)"
bounded 25m cargo test --workspace --locked --no-fail-fast
# The end-to-end tests again on the fallback path (one packet per system call), which a
# kernel without the offloads gets (e2e test a checks which path the routers run).
# --workspace, as above: the same feature set, so nothing is compiled again.
echo "== end-to-end tests again, routers with WEFT_OFFLOAD=off"
WEFT_OFFLOAD=off bounded 15m cargo test --workspace --locked --no-fail-fast --test 'e2e_*'
# The 2-minute soak (scripts/soak.sh: churn, floods, pod churn; no duplicate, orphan, leak
# or leftover). Ignored by plain `cargo test` for its length; run once here, with offloads.
# --workspace, as above: the same feature set, so nothing is compiled again.
echo "== soak, 2 minutes (tests/tests/e2e_soak.rs)"
bounded 8m cargo test --workspace --locked --test e2e_soak -- --ignored
echo "== fuzz smoke (bounded)"
scripts/fuzz-smoke.sh
