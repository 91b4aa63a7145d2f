#!/usr/bin/env bash
# Thread context: what reading it costs BPF at each sample, and what setting a label costs the
# program. The cpu program's run time per run (kernel BPF stats) on tests/workloads/threadctx.c
# publishing `endpoint` (and a trace on a quarter of its time) against the same loop publishing
# nothing (one map lookup finds no process), at the same frequency; and the ns per
# baton_ctx_set() call of the C helper.
# Usage (as root): bench/threadctx.sh [SECONDS=10] [FREQUENCY=999]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
FREQ=${2:-999}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'sysctl -q -w kernel.bpf_stats_enabled=0; rm -rf "$tmp"' EXIT
clang -O2 -g -fno-omit-frame-pointer -o "$tmp/threadctx" tests/workloads/threadctx.c

sysctl -q -w kernel.bpf_stats_enabled=1
bpf_cost() { # mode -> "ns_per_run runs" of on_cpu_sample while profiling the workload
  "$tmp/threadctx" "$1" "$((SECS + 2))" > /dev/null 2>&1 & local pid=$!
  sleep 0.3
  "$BATON" record cpu -F "$FREQ" --pid "$pid" --duration "${SECS}s" --format collapsed \
    --output /dev/null > "$tmp/$1.out" 2>&1 &
  local rec=$!
  sleep "$(python3 -c "print($SECS * 0.8)")"
  bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("name") == "on_cpu_sample" and p.get("run_cnt")]
n = sum(p["run_cnt"] for p in progs)
print("%.0f %d" % (sum(p["run_time_ns"] for p in progs) / max(1, n), n))'
  wait "$rec" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
echo "cpu profiler at ${FREQ} Hz for ${SECS} s on one busy thread, BPF run time per sample"
echo "(every run of the program on the host's CPUs, the busy thread's and the idle CPUs'):"
deltas=()
for round in 1 2 3 4 5; do
  with=$(bpf_cost cpu)
  reads=$(grep -ho "[0-9]* samples or events read it" "$tmp/cpu.out" | cut -d' ' -f1)
  without=$(bpf_cost plain)
  w=${with% *}; wo=${without% *}; runs=${with#* }
  # The extra time of the runs that read a context, per read.
  per=$(python3 -c "print(round(($w - $wo) * $runs / max(1, ${reads:-0})))")
  deltas+=("$per")
  printf "  round %d: with thread context %5s ns/run, without %5s ns/run; %s of %s runs read a context: +%s ns per read\n" \
    "$round" "$w" "$wo" "${reads:-0}" "$runs" "$per"
done
echo "  median extra BPF time per context read: $(printf '%s\n' "${deltas[@]}" | sort -n | sed -n 3p) ns"
echo "setting a label (C helper, baton_ctx_set):"
for n in 10000000 10000000 10000000; do
  printf "  %s\n" "$("$tmp/threadctx" setcost "$n")"
done
