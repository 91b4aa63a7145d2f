#!/usr/bin/env bash
# Overhead of the off-CPU profiler on a context-switch-heavy benchmark (bench/pingpong.c: two
# threads passing a token through pipes, pinned to CPU 0 so every pass is two context switches
# on one CPU, about 300k per second here; across CPUs the VM's wakeups make it 10x slower and
# noisy), as
# throughput ratios against no profiler measured in the same run:
#   - `baton record offcpu -- pingpong` at its defaults (blocks under 1 ms counted, not recorded);
#   - the same with `--min-block 0` (every block recorded with its stacks);
#   - `baton record offcpu --all` (every process on the host, defaults);
#   - bcc's `offcputime` on the same pid, if it runs here (it needs kernel headers).
# Usage (as root): bench/offcpu.sh [SECONDS=10] [REPEATS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
REPEAT=${2:-3}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -pthread -o "$tmp/pingpong.bin" bench/pingpong.c
printf '#!/bin/sh\nexec taskset -c 0 "%s" "$@"\n' "$tmp/pingpong.bin" > "$tmp/pingpong"
chmod +x "$tmp/pingpong"

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
BCC=$(command -v offcputime-bpfcc || true)
BCC_WHY="offcputime-bpfcc is not installed"
if [ -n "$BCC" ] && ! timeout 20 "$BCC" -p $$ 1 >/dev/null 2>"$tmp/bcc-try.err"; then
  BCC_WHY="offcputime-bpfcc fails here: $(grep -m1 -iE 'error|exception' "$tmp/bcc-try.err" || echo 'exit status non-zero') (bcc compiles its BPF at run time and needs this kernel's headers)"
  BCC=
fi

base=(); def=(); zero=(); all=(); bcc=()
for i in $(seq "$REPEAT"); do
  base+=("$("$tmp/pingpong" "$SECS" | rate)")
  def+=("$("$BATON" record offcpu --format collapsed --output "$tmp/d.folded" -- "$tmp/pingpong" "$SECS" 2>"$tmp/d.log" | rate)")
  zero+=("$("$BATON" record offcpu --min-block 0s --format collapsed --output "$tmp/z.folded" -- "$tmp/pingpong" "$SECS" 2>"$tmp/z.log" | rate)")
  all+=("$("$BATON" record offcpu --all --duration "$((SECS + 2))s" --format collapsed --output "$tmp/a.folded" 2>/dev/null >/dev/null & sleep 1; "$tmp/pingpong" "$SECS" | rate; wait)")
  if [ -n "$BCC" ]; then
    "$tmp/pingpong" "$SECS" > "$tmp/bcc.out" & ppid=$!
    timeout $((SECS + 5)) "$BCC" -p "$ppid" "$SECS" > "$tmp/bcc.folded" 2>"$tmp/bcc.err" || true
    wait "$ppid"
    bcc+=("$(rate < "$tmp/bcc.out")")
  fi
  echo "run $i: none ${base[-1]}  baton ${def[-1]}  baton-min0 ${zero[-1]}  baton-all ${all[-1]}  bcc ${bcc[*]:+${bcc[-1]}}"
done
b=$(printf '%s\n' "${base[@]}" | median)
d=$(printf '%s\n' "${def[@]}" | median)
z=$(printf '%s\n' "${zero[@]}" | median)
a=$(printf '%s\n' "${all[@]}" | median)
echo "median passes/s: none $b, baton offcpu $d, baton offcpu --min-block 0 $z, baton offcpu --all $a"
awk -v b="$b" -v d="$d" -v z="$z" -v a="$a" 'BEGIN {
  printf "throughput ratio baton offcpu (defaults) / none:      %.4f\n", d/b;
  printf "throughput ratio baton offcpu --min-block 0 / none:   %.4f\n", z/b;
  printf "throughput ratio baton offcpu --all / none:           %.4f\n", a/b;
}'
grep "recorded" "$tmp/d.log" "$tmp/z.log" || true
if [ -n "$BCC" ] && [ ${#bcc[@]} -gt 0 ] && [ -n "${bcc[0]}" ]; then
  c=$(printf '%s\n' "${bcc[@]}" | median)
  awk -v b="$b" -v c="$c" 'BEGIN { printf "throughput ratio bcc offcputime / none:               %.4f\n", c/b }'
  head -3 "$tmp/bcc.err" || true
else
  echo "bcc offcputime: not run: $BCC_WHY"
fi
