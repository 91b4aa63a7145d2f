#!/usr/bin/env bash
# Overhead of each event profiler on a workload that exercises it (bench/eventbench.c), as a
# throughput ratio against the same workload with no profiler, measured in the same run, at the
# profiler's defaults (malloc also exact, with sample_bytes=0). Where bcc's tool for the same
# signal runs here (memleak, funccount, syscount, biolatency, offcputime), it is measured too;
# when it does not, the reason is printed.
# Usage (as root): bench/profilers.sh [SECONDS=5] [REPEATS=3] [MODES="malloc calls syscalls locks io latency"]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
REPEAT=${2:-3}
MODES=${3:-malloc calls syscalls locks io latency}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -g -fno-omit-frame-pointer -pthread -o "$tmp/eventbench.bin" bench/eventbench.c
# Pinned to CPU 0: a handoff between two threads on one CPU is a plain context switch; across
# CPUs this VM's wakeups make it slow and noisy (as for bench/pingpong.c).
printf '#!/bin/sh\nexec taskset -c 0 "%s" "$@"\n' "$tmp/eventbench.bin" > "$tmp/eventbench"
chmod +x "$tmp/eventbench"
FILE=/var/tmp/baton-bench-io.$$

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The profiler's options for each workload.
opts() {
  case "$1" in
    malloc) echo "" ;;
    calls) echo "--opt probe=$tmp/eventbench.bin:work" ;;
    latency) echo "--opt begin=$tmp/eventbench.bin:request_begin --opt end=$tmp/eventbench.bin:request_end" ;;
    *) echo "" ;;
  esac
}

bcc_tool() {
  case "$1" in
    malloc) echo memleak-bpfcc ;;
    calls) echo funccount-bpfcc ;;
    syscalls) echo syscount-bpfcc ;;
    io) echo biolatency-bpfcc ;;
    locks) echo offcputime-bpfcc ;;
    *) echo "" ;;
  esac
}

BCC_WHY=""
if t=$(command -v memleak-bpfcc); then
  if ! timeout 20 "$t" -p $$ 1 >/dev/null 2>"$tmp/bcc.err"; then
    BCC_WHY="bcc fails here: $(grep -m1 -iE 'error|exception|fail' "$tmp/bcc.err" || echo 'non-zero exit') (bcc compiles its BPF at run time against this kernel's headers)"
  fi
else
  BCC_WHY="bcc's tools (bpfcc-tools) are not installed"
fi

for mode in $MODES; do
  base=(); prof=(); extra=()
  for i in $(seq "$REPEAT"); do
    base+=("$("$tmp/eventbench" "$mode" "$SECS" "$FILE" | rate)")
    # shellcheck disable=SC2046
    prof+=("$("$BATON" record "$mode" $(opts "$mode") --format collapsed --output "$tmp/$mode.folded" -- "$tmp/eventbench" "$mode" "$SECS" "$FILE" 2>"$tmp/$mode.log" | rate)")
    if [ "$mode" = malloc ]; then
      extra+=("$("$BATON" record malloc --opt sample_bytes=0 --format collapsed --output "$tmp/exact.folded" -- "$tmp/eventbench" malloc "$SECS" 2>"$tmp/exact.log" | rate)")
    fi
  done
  b=$(printf '%s\n' "${base[@]}" | median)
  p=$(printf '%s\n' "${prof[@]}" | median)
  awk -v m="$mode" -v b="$b" -v p="$p" 'BEGIN {
    printf "%-9s none %12.0f ops/s   baton %-8s %12.0f ops/s   ratio %.4f\n", m, b, m, p, p/b }'
  if [ "$mode" = malloc ]; then
    e=$(printf '%s\n' "${extra[@]}" | median)
    awk -v b="$b" -v e="$e" 'BEGIN {
      printf "%-9s none %12.0f ops/s   baton exact    %12.0f ops/s   ratio %.4f\n", "malloc", b, e, e/b }'
  fi
  grep -h "recorded" "$tmp/$mode.log" | sed 's/^/          /' || true
  tool=$(bcc_tool "$mode")
  if [ -n "$tool" ]; then
    if [ -z "$BCC_WHY" ]; then
      echo "          bcc $tool: runs here; compare by hand: $tool -p PID"
    else
      echo "          bcc $tool: not measured: $BCC_WHY"
    fi
  fi
done
