#!/usr/bin/env bash
# Resident memory of `baton up` after a while (default 600 s) of continuous profiling while a
# workload runs, with no-profiler baseline RSS of the same binary idle for reference.
# Usage (as root): bench/memory.sh [SECONDS=600]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
clang -O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -fno-optimize-sibling-calls -o "$tmp/split" tests/workloads/split.c
"$BATON" up --data "$tmp/data" --listen 127.0.0.1:0 2>"$tmp/up.log" &
upid=$!
sleep 3
rss_start=$(awk '/VmRSS/ {print $2}' /proc/$upid/status)
# Keep some CPU work going: short-lived processes, so the symbolizer's caches see churn.
( end=$((SECONDS + SECS)); while [ $SECONDS -lt $end ]; do "$tmp/split" 2; sleep 1; done ) &
for t in $(seq 60 60 "$SECS"); do
  sleep 60
  echo "t=${t}s $(grep -E 'VmRSS|RssAnon|RssFile' /proc/$upid/status | tr -s ' \t' ' ' | tr '\n' ' ')"
done
sleep $((SECS % 60))
rss_end=$(awk '/VmRSS/ {print $2}' /proc/$upid/status)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$upid/status)
anon=$(awk '/RssAnon/ {print $2}' /proc/$upid/status)
file=$(awk '/RssFile/ {print $2}' /proc/$upid/status)
cpu=$(awk '{print ($14+$15)/100}' /proc/$upid/stat)
kill -TERM "$upid"; wait "$upid" || true
echo "baton up RSS after ${SECS}s: ${rss_end} kB = ${anon} kB anonymous + ${file} kB file-backed (mapped libduckdb, ELF files being symbolized); at start ${rss_start} kB, peak ${hwm} kB; agent CPU ${cpu} s"
awk -v a="$rss_end" -v b="$rss_start" 'BEGIN { printf "ratio RSS end / start: %.2f\n", a/b }'
