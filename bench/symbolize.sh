#!/usr/bin/env bash
# Symbolization throughput: `baton symbolize` against `llvm-symbolizer` (Debian's llvm) on the
# same addresses of a large binary with DWARF (by default baton's own release binary: 120 MB,
# line tables and inlining info), with function names, file:line and inlined frames from both.
# Addresses are drawn (seeded) uniformly inside the binary's text symbols.
#   cold: the page cache dropped, a new process;
#   warm: the file in the page cache, a new process;
#   in-process repeat (baton only): the same addresses again in the same process.
# Prints seconds (median of REPEATS) and the ratio llvm-symbolizer / baton (above 1: baton is
# faster).
# Usage (as root, for drop_caches): bench/symbolize.sh [ADDRESSES=100000] [REPEATS=3] [ELF]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
REPEAT=${2:-3}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
ELF=${3:-$BATON}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v llvm-symbolizer >/dev/null || { echo "llvm-symbolizer is missing (apt-get install llvm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$ELF" "$tmp/elf"
nm -S --defined-only "$tmp/elf" | awk '($3=="t"||$3=="T") && $2 !~ /^0+$/ {print $1, $2}' > "$tmp/syms"
python3 - "$tmp/syms" "$N" > "$tmp/addrs" <<'EOF'
import random, sys
random.seed(42)
syms = [(int(a, 16), int(s, 16)) for a, s in (l.split() for l in open(sys.argv[1]))]
for _ in range(int(sys.argv[2])):
    a, s = random.choice(syms)
    print("0x%x" % (a + random.randrange(s)))
EOF
echo "binary: $ELF ($(du -h "$tmp/elf" | cut -f1)), $(wc -l < "$tmp/syms") text symbols, $N addresses"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(cannot drop caches: not root; cold = warm)" >&2; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]}'; }
run_baton() { "$BATON" symbolize --elf "$tmp/elf" --input "$tmp/addrs"; }
run_llvm() { llvm-symbolizer --obj="$tmp/elf" < "$tmp/addrs"; }

# Both name the same share of addresses.
run_baton > "$tmp/out.baton"
run_llvm > "$tmp/out.llvm"
b_named=$(grep -c '^0x[0-9a-f]*: [^?]' "$tmp/out.baton" || true)
l_named=$(awk 'BEGIN{RS=""} {split($0, l, "\n"); if (l[1] != "??") n++} END {print n+0}' "$tmp/out.llvm")
echo "addresses named: baton $b_named, llvm-symbolizer $l_named"

for mode in cold warm; do
  b=(); l=()
  for _ in $(seq "$REPEAT"); do
    [ "$mode" = cold ] && drop
    b+=("$(secs run_baton)")
    [ "$mode" = cold ] && drop
    l+=("$(secs run_llvm)")
  done
  bm=$(printf '%s\n' "${b[@]}" | median)
  lm=$(printf '%s\n' "${l[@]}" | median)
  printf '%-5s baton %6.3fs (%7.0f addr/s)   llvm-symbolizer %6.3fs (%7.0f addr/s)   ratio %.2fx\n' \
    "$mode" "$bm" "$(echo "$N / $bm" | bc -l)" "$lm" "$(echo "$N / $lm" | bc -l)" "$(echo "$lm / $bm" | bc -l)"
done
"$BATON" symbolize --elf "$tmp/elf" --input "$tmp/addrs" --passes 3 2>&1 >/dev/null | sed 's/^/baton in-process /'
