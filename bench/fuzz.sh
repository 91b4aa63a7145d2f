#!/usr/bin/env bash
# Coverage-guided fuzzing of Baton's parsers, on stable Rust: the targets in fuzz/ are built
# with LLVM's sanitizer-coverage instrumentation (-Cpasses=sancov-module and its llvm-args, all
# stable rustc flags) and linked with libFuzzer (the libfuzzer-sys crate builds it from C++).
# No nightly feature is used, so no AddressSanitizer: a target finds panics, aborts, overflows
# (overflow-checks and debug assertions are on), hangs (-timeout) and runaway memory
# (-rss_limit_mb), not silent memory errors, which safe Rust does not have.
#
# Each target runs SECONDS from a corpus kept in fuzz/corpus/TARGET (seeded here from real
# inputs: this host's /proc maps, Baton's example config, ELF files, a recorded pprof) and prints
# its executions, executions per second, coverage, and whether it crashed. A crash leaves its
# input in fuzz/artifacts/; copy it to fuzz/regressions/TARGET/ and fix the code: the crate's
# tests replay every file there (cargo test, in CI).
# Usage: bench/fuzz.sh [SECONDS=60] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
ALL=(pprof config adhoc_header bpftrace_json perf_map proc_maps elf_cutter ingest_query)
TARGETS=("${@:-${ALL[@]}}")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/fuzz
# --target keeps the instrumentation off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --release --target "$TRIPLE" --manifest-path fuzz/Cargo.toml
BIN=$CARGO_TARGET_DIR/$TRIPLE/release
mkdir -p fuzz/artifacts

seed() { # TARGET: fills fuzz/corpus/TARGET with real inputs the first time
  local d=fuzz/corpus/$1
  [ -d "$d" ] && return
  mkdir -p "$d"
  case "$1" in
    proc_maps) cat /proc/self/maps > "$d/self"; cat /proc/1/maps > "$d/init" 2>/dev/null || true ;;
    perf_map) printf '7f0000001000 40 LazyCompile:*hot /app/hot.js:3\n7f0000001040 20 Interpreter\n' > "$d/node" ;;
    config) find examples/config -name "*.toml" -exec cp {} "$d/" \; ;;
    adhoc_header) for f in examples/config/adhoc/*.bt; do sed '1{/^\/\/ baton:$/d}' "$f" > "$d/$(basename "$f")"; done ;;
    bpftrace_json)
      printf '{"type": "attached_probes", "data": {"probes": 2}}\n{"type": "map", "data": {"@n": 5}}\n' > "$d/series"
      printf '{"type": "hist", "data": {"@lat": {"sh": [{"min": 0, "max": 1, "count": 2}, {"min": 2, "max": 3, "count": 1}]}}}\n' > "$d/hist"
      printf '{"type": "map", "data": {"@stacks": {"\\n        do_syscall_64+1\\n, \\n        main+4\\n, sleep": 3}}}\n' > "$d/stacks" ;;
    elf_cutter) cp /bin/true "$d/true"; head -c 65536 /bin/ls > "$d/ls-head" ;;
    ingest_query) printf 'profiler=cpu&batch_id=h1-42&service=checkout&host=h1' > "$d/agent" ;;
    pprof)
      local baton=${BATON:-${CARGO_TARGET_DIR%/fuzz}/release/baton}
      if [ -x "$baton" ] && [ "$(id -u)" = 0 ]; then
        "$baton" record cpu --duration 1s --format pprof --output "$d/cpu.pb.gz" -- sleep 1 >/dev/null 2>&1 || true
        [ -s "$d/cpu.pb.gz" ] && gzip -dc "$d/cpu.pb.gz" > "$d/cpu.pb"
      fi ;;
  esac
}

status=0
# First the inputs that crashed a target once, each run once by the instrumented build (with
# overflow checks, which the release build the tests use does not have).
for d in fuzz/regressions/*/; do
  t=$(basename "$d")
  [ -x "$BIN/$t" ] || continue
  if "$BIN/$t" "$d"* > /dev/null 2>&1; then
    echo "regressions of $t: $(ls "$d" | wc -l) inputs pass"
  else
    echo "regressions of $t: FAIL (run $BIN/$t $d* to see which)"; status=1
  fi
done
printf '%-14s %12s %10s %6s %s\n' target executions per_sec cov result
for t in "${TARGETS[@]}"; do
  seed "$t"
  log=$(mktemp)
  rc=0
  "$BIN/$t" -max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$t-" "fuzz/corpus/$t" > "$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  if [ "$rc" = 0 ]; then result=ok; else
    result="CRASH: $(grep -o 'Test unit written to .*' "$log" | head -1)"; status=1
    grep -m3 -E 'panicked at|ERROR' "$log" | sed 's/^/    /'
  fi
  printf '%-14s %12s %10s %6s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result"
  rm -f "$log"
done
exit $status
