#!/usr/bin/env bash
# The whole test suite, as CI runs it: deps, formatting, lints, then every test in release (one
# build profile, shared with `cargo build --release`). Run as root: the BPF tests need it.
# Prints each stage's wall time as it ends, and a table of all of them with the total at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stages=()
# stage NAME CMD...: runs CMD, then records and prints its wall time.
stage() {
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  echo "== stage $name"
  "$@" || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  stages+=("$(printf '%-8s %5d s%s' "$name" "$dt" "$([ "$rc" = 0 ] || echo "  (exit $rc)")")")
  echo "== stage $name: ${dt} s (exit $rc)"
  return "$rc"
}
summary() {
  echo "== wall time per stage"
  printf '   %s\n' "${stages[@]}"
  echo "   total    $(( $(date +%s) - start )) s"
}
log=$(mktemp)
trap 'summary; rm -f "$log"' EXIT
stage deps ./scripts/install-deps.sh
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --release --workspace --all-targets -- -D warnings
# The build is its own stage, so the test stage's time is the tests' own.
stage build cargo test --release --workspace --no-run
# One test at a time: the end-to-end tests profile real processes, and on a 2-CPU machine
# parallel tests starve each other's workloads.
tests() {
  set +e
  cargo test --release --workspace --no-fail-fast -- --test-threads=1 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  set -e
  # One closing line over every test binary, so the total is not hidden behind the last one.
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
       END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
  return "$status"
}
stage test tests
