#!/usr/bin/env bash
# Overhead of the ad-hoc cpu_stacks example (bpftrace, profile:hz:99 with kernel and user stacks)
# against Baton's built-in cpu profiler at the same 99 Hz, on a CPU-bound benchmark (one busy
# thread per CPU), as throughput ratios against no profiler measured in the same run.
# Usage (as root): bench/adhoc.sh [SECONDS=10] [REPEATS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
REPEAT=${2:-3}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v bpftrace >/dev/null || { echo "bpftrace is needed (apt-get install bpftrace)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o "$tmp/burn" bench/burn.c

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

base=(); cpu=(); adhoc=()
for i in $(seq "$REPEAT"); do
  base+=("$("$tmp/burn" "$SECS" | rate)")
  cpu+=("$("$BATON" record cpu --frequency 99 --output "$tmp/c.folded" -- "$tmp/burn" "$SECS" 2>/dev/null | rate)")
  # The script samples the command named burn; it attaches before burn starts.
  "$BATON" record adhoc --script examples/config/adhoc/cpu_stacks.bt --opt args=burn \
    --duration "$((SECS + 4))s" --output "$tmp/a.folded" >/dev/null 2>"$tmp/adhoc.log" &
  rpid=$!
  sleep 3
  adhoc+=("$("$tmp/burn" "$SECS" | rate)")
  wait "$rpid" || { cat "$tmp/adhoc.log" >&2; exit 1; }
  echo "run $i: none ${base[-1]}  baton cpu ${cpu[-1]}  ad-hoc cpu_stacks ${adhoc[-1]}"
done
b=$(printf '%s\n' "${base[@]}" | median)
c=$(printf '%s\n' "${cpu[@]}" | median)
a=$(printf '%s\n' "${adhoc[@]}" | median)
echo "median ops/s: none $b, baton record cpu (99 Hz) $c, baton record adhoc cpu_stacks (99 Hz) $a"
awk -v b="$b" -v c="$c" -v a="$a" 'BEGIN {
  printf "throughput ratio built-in cpu / none:      %.4f (overhead %.2f%%)\n", c/b, 100*(1-c/b);
  printf "throughput ratio ad-hoc cpu_stacks / none: %.4f (overhead %.2f%%)\n", a/b, 100*(1-a/b);
  printf "throughput ratio ad-hoc / built-in:        %.4f\n", a/c;
}'
