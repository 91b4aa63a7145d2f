#!/usr/bin/env bash
# Cost and completeness of user-stack unwinding, measured in one run against references:
#   overhead: throughput of a CPU-bound benchmark (bench/burn.c, one thread per CPU) under
#     - no profiler (built without frame pointers),
#     - `baton record --unwind auto` on that binary (DWARF: every sample's stack is copied),
#     - `baton record --unwind fp` on the same program built with frame pointers,
#     - `perf record --call-graph dwarf` on the binary without frame pointers,
#     - `perf record -g` on the binary with frame pointers,
#     all at the same frequency;
#   completeness: the share of samples whose stack reaches the entry (main, _start, libc's
#     start, or start_thread/clone3 for threads), Baton against perf, for both binaries, Debian's
#     gzip and clang;
#   memory: the unwind tables and peak RSS of `baton record` on clang (libLLVM) and on baton
#     itself (a large Rust binary), both without frame pointers, --unwind auto against fp.
# Usage (as root): bench/unwind.sh [SECONDS=10] [REPEATS=3] [FREQUENCY=99]
# PARTS=overhead,completeness,memory (the default: all three) picks what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
REPEAT=${2:-3}
FREQ=${3:-99}
PARTS=${PARTS:-overhead,completeness,memory}
want() { [[ ",$PARTS," == *",$1,"* ]]; }
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is needed as the reference (apt-get install linux-perf)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed for peak RSS (apt-get install time)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o "$tmp/burn-fp" bench/burn.c
clang -O2 -fomit-frame-pointer -pthread -o "$tmp/burn-nofp" bench/burn.c

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Share (%) of samples in a collapsed file whose stack holds one of the entry functions.
entry_share_folded() {
  awk '{n = $NF; t += n; if ($0 ~ /(^|;)(start_thread|clone3|clone|_start|__libc_start_call_main|main)(;| )/) h += n}
       END {printf "%.1f", t ? 100 * h / t : 0}' "$1"
}
entry_share_perf() {
  perf script -F ip,sym -i "$1" 2>/dev/null | awk 'BEGIN {RS = ""}
       {t++; if ($0 ~ /[ \t](start_thread|clone3|clone|_start|__libc_start_call_main|main)([ \t\n]|$)/) h++}
       END {printf "%.1f", t ? 100 * h / t : 0}'
}

if want overhead; then
base=(); dw=(); fp=(); pdw=(); pfp=()
for i in $(seq "$REPEAT"); do
  base+=("$("$tmp/burn-nofp" "$SECS" | rate)")
  dw+=("$("$BATON" record cpu -F "$FREQ" --unwind auto --format collapsed --output "$tmp/dw.folded" -- "$tmp/burn-nofp" "$SECS" 2>"$tmp/dw.log" | rate)")
  fp+=("$("$BATON" record cpu -F "$FREQ" --unwind fp --format collapsed --output "$tmp/fp.folded" -- "$tmp/burn-fp" "$SECS" 2>/dev/null | rate)")
  pdw+=("$(perf record -q -F "$FREQ" --call-graph dwarf -o "$tmp/pdw.data" -- "$tmp/burn-nofp" "$SECS" 2>/dev/null | rate)")
  pfp+=("$(perf record -q -F "$FREQ" -g -o "$tmp/pfp.data" -- "$tmp/burn-fp" "$SECS" 2>/dev/null | rate)")
  echo "run $i: none ${base[-1]}  baton-dwarf ${dw[-1]}  baton-fp ${fp[-1]}  perf-dwarf ${pdw[-1]}  perf-fp ${pfp[-1]}"
done
b=$(printf '%s\n' "${base[@]}" | median)
d=$(printf '%s\n' "${dw[@]}" | median)
f=$(printf '%s\n' "${fp[@]}" | median)
pd=$(printf '%s\n' "${pdw[@]}" | median)
pf=$(printf '%s\n' "${pfp[@]}" | median)
echo "median ops/s at $FREQ Hz: none $b, baton dwarf $d, baton fp $f, perf dwarf $pd, perf fp $pf"
awk -v b="$b" -v d="$d" -v f="$f" -v pd="$pd" -v pf="$pf" 'BEGIN {
  printf "throughput ratio baton --unwind auto (DWARF) / none: %.4f\n", d/b;
  printf "throughput ratio baton --unwind fp / none:          %.4f\n", f/b;
  printf "throughput ratio perf --call-graph dwarf / none:    %.4f\n", pd/b;
  printf "throughput ratio perf -g (fp) / none:               %.4f\n", pf/b;
  printf "throughput ratio baton DWARF / perf dwarf:          %.4f\n", d/pd;
}'
grep "unwound from DWARF" "$tmp/dw.log" || true
fi

if want completeness; then
echo "--- completeness: share of samples reaching the entry"
"$BATON" record cpu -F "$FREQ" --unwind auto --format collapsed --output "$tmp/dw.folded" -- "$tmp/burn-nofp" 3 >/dev/null 2>&1
"$BATON" record cpu -F "$FREQ" --unwind fp --format collapsed --output "$tmp/fp.folded" -- "$tmp/burn-fp" 3 >/dev/null 2>&1
perf record -q -F "$FREQ" --call-graph dwarf -o "$tmp/pdw.data" -- "$tmp/burn-nofp" 3 >/dev/null 2>&1
perf record -q -F "$FREQ" -g -o "$tmp/pfp.data" -- "$tmp/burn-fp" 3 >/dev/null 2>&1
"$BATON" record cpu -F "$FREQ" --unwind fp --format collapsed --output "$tmp/fpn.folded" -- "$tmp/burn-nofp" 3 >/dev/null 2>&1
echo "burn without frame pointers: baton dwarf $(entry_share_folded "$tmp/dw.folded")%, perf dwarf $(entry_share_perf "$tmp/pdw.data")%, baton fp-only $(entry_share_folded "$tmp/fpn.folded")%"
echo "burn with frame pointers:    baton fp $(entry_share_folded "$tmp/fp.folded")%, perf -g $(entry_share_perf "$tmp/pfp.data")%"
head -c 15000000 /dev/urandom | base64 > "$tmp/gz.in"
"$BATON" record cpu -F 499 --format collapsed --output "$tmp/gz.folded" -- gzip -9 -c "$tmp/gz.in" >/dev/null 2>&1
perf record -q -F 499 --call-graph dwarf -o "$tmp/gz.data" -- gzip -9 -c "$tmp/gz.in" >/dev/null 2>&1
"$BATON" record cpu -F 499 --unwind fp --format collapsed --output "$tmp/gzfp.folded" -- gzip -9 -c "$tmp/gz.in" >/dev/null 2>&1
echo "Debian gzip -9 (499 Hz):     baton dwarf $(entry_share_folded "$tmp/gz.folded")%, perf dwarf $(entry_share_perf "$tmp/gz.data")%, baton fp-only $(entry_share_folded "$tmp/gzfp.folded")%"

awk 'BEGIN {for (i = 0; i < 800; i++) printf "int g%d(int x) { int s = 0; for (int j = 0; j < x; j++) s += j * %d %% 7; return s; }\n", i, i}' > "$tmp/few.c"
"$BATON" record cpu -F 499 --format collapsed --output "$tmp/cl.folded" -- clang -O2 -c -o "$tmp/few.o" "$tmp/few.c" >/dev/null 2>&1
perf record -q -F 499 --call-graph dwarf -o "$tmp/cl.data" -- clang -O2 -c -o "$tmp/few.o" "$tmp/few.c" >/dev/null 2>&1
echo "Debian clang-14 -O2 (499 Hz): baton dwarf $(entry_share_folded "$tmp/cl.folded")%, perf dwarf $(entry_share_perf "$tmp/cl.data")% (deep C++ stacks: baton copies up to 32 KiB of stack, perf 8 KiB by default)"

fi

if want memory; then
echo "--- memory: unwind tables and peak RSS of baton record on two large binaries without frame pointers"
# clang (libLLVM is ~100 MB) compiling a generated file, and baton itself planning a 10k-host fleet.
awk 'BEGIN {for (i = 0; i < 3000; i++) printf "int f%d(int x) { int s = 0; for (int j = 0; j < x; j++) s += j * %d %% 7; return s; }\n", i, i}' > "$tmp/many.c"
for mode in auto fp; do
  /usr/bin/time -f "%M" -o "$tmp/rss.clang.$mode" "$BATON" record cpu -F "$FREQ" --unwind "$mode" --format collapsed \
    --output "$tmp/clang.$mode.folded" -- clang -O2 -c -o "$tmp/many.o" "$tmp/many.c" 2>"$tmp/clang.$mode.log" >/dev/null
  echo "clang, --unwind $mode: peak RSS of baton record $(( $(cat "$tmp/rss.clang.$mode") / 1024 )) MiB; $(grep -o 'unwind tables.*' "$tmp/clang.$mode.log" || echo 'no DWARF copies'); entry reached $(entry_share_folded "$tmp/clang.$mode.folded")%"
  /usr/bin/time -f "%M" -o "$tmp/rss.self.$mode" "$BATON" record cpu -F "$FREQ" --unwind "$mode" --format collapsed \
    --output "$tmp/self.$mode.folded" -- "$BATON" plan --config examples/config --fleet examples/fleet-10k.toml --simulate 6h 2>"$tmp/self.$mode.log" >/dev/null || true
  echo "baton plan, --unwind $mode: peak RSS of baton record $(( $(cat "$tmp/rss.self.$mode") / 1024 )) MiB; $(grep -o 'unwind tables.*' "$tmp/self.$mode.log" || echo 'no DWARF copies'); entry reached $(entry_share_folded "$tmp/self.$mode.folded")%"
done
fi
