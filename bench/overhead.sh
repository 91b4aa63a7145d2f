#!/usr/bin/env bash
# Overhead of Baton on a CPU-bound benchmark (one busy thread per CPU), as throughput ratios
# against references measured in the same run:
#   - `baton up` at its default rate (19 Hz, every process) against no profiler;
#   - `baton record --frequency 99 -- burn` against no profiler and against `perf record -F 99 -g`.
# Usage (as root): bench/overhead.sh [SECONDS=10] [REPEATS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
REPEAT=${2:-3}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is needed as the reference (apt-get install linux-perf)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o "$tmp/burn" bench/burn.c

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

base=(); up=(); rec=(); perf_=()
for i in $(seq "$REPEAT"); do
  base+=("$("$tmp/burn" "$SECS" | rate)")

  "$BATON" up --data "$tmp/data$i" --listen 127.0.0.1:0 2>"$tmp/up.log" &
  upid=$!
  sleep 3
  up+=("$("$tmp/burn" "$SECS" | rate)")
  kill -TERM "$upid"; wait "$upid" || true

  rec+=("$("$BATON" record cpu --frequency 99 --output "$tmp/r.folded" -- "$tmp/burn" "$SECS" 2>/dev/null | rate)")
  perf_+=("$(perf record -F 99 -g -o "$tmp/perf.data" -- "$tmp/burn" "$SECS" 2>/dev/null | rate)")
  echo "run $i: none ${base[-1]}  baton-up ${up[-1]}  baton-record ${rec[-1]}  perf-record ${perf_[-1]}"
done
b=$(printf '%s\n' "${base[@]}" | median)
u=$(printf '%s\n' "${up[@]}" | median)
r=$(printf '%s\n' "${rec[@]}" | median)
p=$(printf '%s\n' "${perf_[@]}" | median)
echo "median ops/s: none $b, baton up (19 Hz, all) $u, baton record (99 Hz) $r, perf record (99 Hz -g) $p"
awk -v b="$b" -v u="$u" -v r="$r" -v p="$p" 'BEGIN {
  printf "throughput ratio baton up / none:          %.4f (overhead %.2f%%)\n", u/b, 100*(1-u/b);
  printf "throughput ratio baton record / none:      %.4f (overhead %.2f%%)\n", r/b, 100*(1-r/b);
  printf "throughput ratio perf record / none:       %.4f (overhead %.2f%%)\n", p/b, 100*(1-p/b);
  printf "throughput ratio baton record / perf:      %.4f\n", r/p;
}'
