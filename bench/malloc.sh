#!/usr/bin/env bash
# Cost of the malloc profiler's modes on an allocation-heavy loop (bench/allocloop.c: mixed-size
# malloc/free pairs, 16 B to 2 KiB, a pool of 4,096 live blocks), as throughput ratios against
# the same loop with no profiler, measured in the same run and interleaved, pinned to one CPU:
#
#   sampler        the default: Baton's preloaded sampler, 1 sample per 2 MiB on average
#   sampler-idle   the sampler preloaded, no Baton attached (what a service started with it pays
#                  while nothing profiles it)
#   sampler-none   the sampler with Baton attached and a mean so large nothing is sampled: the
#                  cost of an unsampled allocation
#   sampler-4k     the sampler at 1 sample per 4 KiB: nearly every allocation traps, which gives
#                  the cost of one sampled allocation
#   uprobe         mode=uprobe at its default sampling: every call traps
#   jemalloc       the loop linked with jemalloc, under the default mode (the jemalloc shim and
#                  jemalloc's own sampling), against the same binary bare; neither pinned (a
#                  `taskset` wrapper would be the command `baton record` starts, and it links
#                  glibc, not jemalloc)
#
# Prints ops/s per mode, the ratio to bare, and the cost per allocation derived from them; then
# a real allocator-heavy program (Debian's python3 on a dict/list/str churn) bare and under the
# default mode, with the top allocation sites Baton found; then whether bcc's memleak runs here.
# Usage (as root): bench/malloc.sh [SECONDS=3] [REPEATS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
REPEAT=${2:-5}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -O2 -g -fno-omit-frame-pointer -o "$tmp/allocloop" bench/allocloop.c
clang -O2 -g -fno-omit-frame-pointer -o "$tmp/allocloop-je" bench/allocloop.c /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
LIB=$("$BATON" preload --quiet)
CPU=${CPU:-1}

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
loop() { taskset -c "$CPU" "$tmp/allocloop" "$SECS"; }

run_mode() {
  case "$1" in
    bare) loop | rate ;;
    sampler-idle) LD_PRELOAD=$LIB loop | rate ;;
    sampler) "$BATON" record malloc --format collapsed --output "$tmp/s.folded" -- taskset -c "$CPU" "$tmp/allocloop" "$SECS" 2>"$tmp/sampler.log" | rate ;;
    sampler-none) "$BATON" record malloc --opt sample_bytes=1000000000000000 --format collapsed --output "$tmp/n.folded" -- taskset -c "$CPU" "$tmp/allocloop" "$SECS" 2>"$tmp/none.log" | rate ;;
    sampler-4k) "$BATON" record malloc --opt sample_bytes=4096 --format collapsed --output "$tmp/k.folded" -- taskset -c "$CPU" "$tmp/allocloop" "$SECS" 2>"$tmp/4k.log" | rate ;;
    jemalloc-bare) "$tmp/allocloop-je" "$SECS" | rate ;;
    jemalloc) "$BATON" record malloc --format collapsed --output "$tmp/j.folded" -- "$tmp/allocloop-je" "$SECS" 2>"$tmp/jemalloc.log" | rate ;;
    uprobe) "$BATON" record malloc --opt mode=uprobe --format collapsed --output "$tmp/u.folded" -- taskset -c "$CPU" "$tmp/allocloop" "$SECS" 2>"$tmp/uprobe.log" | rate ;;
  esac
}

MODES=(bare sampler-idle sampler sampler-none sampler-4k uprobe jemalloc-bare jemalloc)
declare -A runs
for i in $(seq "$REPEAT"); do
  for m in "${MODES[@]}"; do
    runs[$m]+="$(run_mode "$m") "
  done
done
declare -A med
for m in "${MODES[@]}"; do
  med[$m]=$(printf '%s\n' ${runs[$m]} | median)
done
b=${med[bare]}
echo "allocloop, ${SECS}s x $REPEAT (median), pinned to CPU $CPU"
for m in "${MODES[@]}"; do
  [ "${m#jemalloc}" = "$m" ] || continue
  awk -v m="$m" -v r="${med[$m]}" -v b="$b" 'BEGIN {
    printf "  %-13s %12.0f pairs/s   ratio %.4f   +%.1f ns per malloc/free pair\n", m, r, r / b, (1e9 / r - 1e9 / b) }'
done
# Samples per second in the 4 KiB run, from its summary ("N events"): the cost of one sampled
# allocation is its extra time per second over the samples in a second.
events=$(grep -o '[0-9]* events' "$tmp/4k.log" | head -1 | cut -d' ' -f1)
awk -v r="${med[sampler-4k]}" -v b="$b" -v e="$events" -v s="$SECS" 'BEGIN {
  if (e > 0) printf "  one sampled allocation: %.2f us (%d samples in %d s at 1 per 4 KiB)\n", (1 - r / b) * s / e * 1e6, e, s }'
awk -v r="${med[jemalloc]}" -v b="${med[jemalloc-bare]}" 'BEGIN {
  printf "  %-13s %12.0f pairs/s   (bare jemalloc %.0f)   ratio %.4f\n", "jemalloc", r, b, r / b }'
sed 's/^/  sampler: /' <(grep -h "recorded" "$tmp/sampler.log")
sed 's/^/  jemalloc: /' <(grep -h "recorded" "$tmp/jemalloc.log")
# The default modes must stay on: at least 0.95 of bare throughput.
fail=0
for pair in "sampler:bare" "jemalloc:jemalloc-bare"; do
  m=${pair%%:*}; base=${pair#*:}
  if ! awk -v r="${med[$m]}" -v b="${med[$base]}" 'BEGIN { exit !(r / b >= 0.95) }'; then
    echo "  FAIL: $m runs at less than 0.95 of bare"; fail=1
  fi
done
sed 's/^/  uprobe:  /' <(grep -h "recorded" "$tmp/uprobe.log")

# A real program: python3 building and dropping dicts, lists and strings.
cat > "$tmp/churn.py" <<'EOF'
import time
def make_record(i):
    return {"id": i, "name": "user-%d" % i, "tags": [str(i), str(i * 2)], "score": i * 0.5}
def churn(n):
    out = []
    for i in range(n):
        out.append(make_record(i))
        if len(out) > 5000:
            out = out[2500:]
    return len(out)
t0 = time.time(); n = 0
while time.time() - t0 < float(__import__("sys").argv[1]):
    churn(20000); n += 1
print("ops_per_sec=%d" % (n * 20000 / (time.time() - t0)))
EOF
pb=(); pp=()
for i in $(seq "$REPEAT"); do
  pb+=("$(taskset -c "$CPU" python3 "$tmp/churn.py" "$SECS" | rate)")
  pp+=("$("$BATON" record malloc --format collapsed --output "$tmp/py.folded" -- taskset -c "$CPU" python3 "$tmp/churn.py" "$SECS" 2>"$tmp/py.log" | rate)")
done
b=$(printf '%s\n' "${pb[@]}" | median)
p=$(printf '%s\n' "${pp[@]}" | median)
awk -v b="$b" -v p="$p" 'BEGIN { printf "python3 churn: bare %.0f records/s, under baton record malloc %.0f records/s, ratio %.4f\n", b, p, p / b }'
echo "  top allocation sites (alloc_bytes, by the first frame outside the allocators):"
awk '{ v = $NF; $NF = ""; sub(/ +$/, ""); n = split($0, f, ";"); site = f[1]
       for (i = n; i >= 1; i--) if (f[i] !~ /^(malloc|calloc|realloc|reallocarray|posix_memalign|aligned_alloc|memalign|valloc|pvalloc|_?PyObject_(Malloc|Calloc|Realloc)|_?PyMem_[A-Za-z]*|_PyObject_GC_[A-Za-z]*|gc_alloc|_PyObject_New[A-Za-z]*|realloc_by_copy)$/) { site = f[i]; break }
       s[site] += v; t += v }
     END { for (k in s) printf "%6.2f%%  %s\n", 100 * s[k] / t, k }' "$tmp/py.folded" | sort -rn | head -5 | sed 's/^/    /'

if t=$(command -v memleak-bpfcc); then
  if timeout 20 "$t" -p $$ 1 >/dev/null 2>"$tmp/bcc.err"; then
    echo "bcc memleak: runs here; compare by hand: $t -p PID"
  else
    echo "bcc memleak: fails here: $(grep -m1 -iE 'error|exception|fail' "$tmp/bcc.err" || echo 'non-zero exit')"
  fi
else
  echo "bcc memleak: not installed (bpfcc-tools)"
fi
exit $fail
