#!/usr/bin/env bash
# The whole test suite, as CI runs it: deps, formatting, lints, then every test in release (one
# build profile, shared with `cargo build --release`). Run as root: the BPF tests need it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# One test at a time: the end-to-end tests profile real processes, and on a 2-CPU machine
# parallel tests starve each other's workloads.
cargo test --release --workspace --no-fail-fast -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, so the total is not hidden behind the last one.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
