#!/usr/bin/env bash
# What Baton's FDO profiles buy, against the ceiling of instrumented PGO, on the FDO benchmark
# (tests/workloads/fdo.c) and on zstd built from Debian's sources (compressing a fixed input).
#
# For each program: build it with clang-16 and the profiling flags; profile it under
# `baton record`; write the sample and BOLT profiles with `baton fdo`; build the AutoFDO binary,
# the BOLT binary, and the instrumented-PGO binary; then run all four interleaved, N times, and
# print the median wall time of each, the speedups over the baseline, the share of PGO's speedup
# Baton's profile reaches, and callgrind's instruction counts.
#
#   bench/fdo.sh            # both programs
#   bench/fdo.sh fdo        # only the benchmark workload
#   N=21 bench/fdo.sh zstd  # only zstd, 21 interleaved runs
#   REUSE=1 WORK=DIR bench/fdo.sh fdo    # compare the binaries an earlier run left in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
LLVM=/usr/lib/llvm-16/bin
N=${N:-11}
WHAT=${1:-all}
WORK=${WORK:-$(mktemp -d /tmp/baton-fdo-bench.XXXXXX)}
FLAGS="-O2 -gline-tables-only -fdebug-info-for-profiling -funique-internal-linkage-names"
LDFLAGS="-Wl,--build-id -Wl,--emit-relocs"
[ -x "$BATON" ] || { echo "build baton first: cargo build --release" >&2; exit 2; }
[ -x "$LLVM/clang" ] && [ -x "$LLVM/llvm-bolt" ] || { echo "needs clang-16, llvm-16, bolt-16" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (baton record loads BPF)" >&2; exit 2; }
echo "work directory: $WORK" >&2

# median of numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# wall seconds of one run of "$@"
wall() {
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

# compare NAME INSTR_ARGS -- RUN_ARGS: the four binaries $WORK/NAME.{base,autofdo,bolt,pgo}
compare() {
  local name=$1; shift
  local -a cg_args=() run_args=()
  while [ "$1" != "--" ]; do cg_args+=("$1"); shift; done; shift
  run_args=("$@")
  local v
  for v in base autofdo bolt pgo; do : > "$WORK/$name.$v.times"; done
  for ((i = 0; i < N; i++)); do
    for v in base autofdo bolt pgo; do
      wall "$WORK/$name.$v" "${run_args[@]}" >> "$WORK/$name.$v.times"
    done
  done
  local base_t
  base_t=$(median < "$WORK/$name.base.times")
  printf '\n%s: median of %d interleaved runs\n' "$name" "$N"
  printf '%-9s %9s %9s %9s %15s %9s\n' build median fastest speedup instructions ratio
  local base_i=""
  for v in base autofdo bolt pgo; do
    local t ins
    t=$(median < "$WORK/$name.$v.times")
    # Valgrind gives up on some clang-16 DWARF: count the instructions of a copy without it.
    # (llvm-bolt already dropped it from its output, and objcopy would break that file.)
    if [ "$v" = bolt ]; then cp "$WORK/$name.$v" "$WORK/$name.$v.nodebug"
    else objcopy --strip-debug "$WORK/$name.$v" "$WORK/$name.$v.nodebug"; fi
    ins=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$WORK/$name.$v.nodebug" "${cg_args[@]}" 2>&1 >/dev/null \
      | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    [ -n "$base_i" ] || base_i=$ins
    printf '%-9s %9.3f %9.3f %8.1f%% %15s %9.3f\n' "$v" "$t" "$(sort -g "$WORK/$name.$v.times" | head -1)" \
      "$(echo "100 * ($base_t / $t - 1)" | bc -l)" \
      "$ins" "$(echo "$ins / $base_i" | bc -l)"
    echo "$t" > "$WORK/$name.$v.median"
    echo "$ins" > "$WORK/$name.$v.instr"
  done
  local a p ai pi
  a=$(cat "$WORK/$name.autofdo.median"); p=$(cat "$WORK/$name.pgo.median")
  ai=$(cat "$WORK/$name.autofdo.instr"); pi=$(cat "$WORK/$name.pgo.instr")
  printf 'AutoFDO reaches %.0f%% of instrumented PGO'"'"'s wall-time speedup and %.0f%% of its instruction savings\n' \
    "$(echo "100 * ($base_t / $a - 1) / ($base_t / $p - 1)" | bc -l)" \
    "$(echo "100 * ($base_i - $ai) / ($base_i - $pi)" | bc -l)"
}

# bolt NAME: BOLT on Baton's no-LBR profile
bolt() {
  "$LLVM/llvm-bolt" "$WORK/$1.base" -o "$WORK/$1.bolt" -data="$WORK/$1.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=hfsort -split-functions -split-all-cold \
    > "$WORK/$1.bolt.log" 2>&1 || { cat "$WORK/$1.bolt.log" >&2; exit 1; }
  grep -h "non-empty execution profile" "$WORK/$1.bolt.log" >&2 || true
}

bench_fdo() {
  if [ -n "${REUSE:-}" ] && [ -x "$WORK/fdo.pgo" ]; then
    compare fdo 20000 -- 4000000
    return
  fi
  local src=tests/workloads/fdo.c
  "$LLVM/clang" $FLAGS $LDFLAGS -o "$WORK/fdo.base" "$src"
  "$BATON" record cpu --frequency 999 --output "$WORK/fdo.pb.gz" -- "$WORK/fdo.base" >/dev/null
  "$BATON" fdo --binary "$WORK/fdo.base" --input "$WORK/fdo.pb.gz" \
    --output "$WORK/fdo.afdo.txt" --bolt "$WORK/fdo.fdata"
  "$LLVM/clang" $FLAGS $LDFLAGS -fprofile-sample-use="$WORK/fdo.afdo.txt" -o "$WORK/fdo.autofdo" "$src"
  bolt fdo
  "$LLVM/clang" $FLAGS $LDFLAGS -fprofile-instr-generate -o "$WORK/fdo.instr" "$src"
  LLVM_PROFILE_FILE="$WORK/fdo.profraw" "$WORK/fdo.instr" >/dev/null
  "$LLVM/llvm-profdata" merge -o "$WORK/fdo.profdata" "$WORK/fdo.profraw"
  "$LLVM/clang" $FLAGS $LDFLAGS -fprofile-instr-use="$WORK/fdo.profdata" -o "$WORK/fdo.pgo" "$src"
  compare fdo 20000 -- 4000000
}

# zstd from Debian's source package (the package registry is the only download).
zstd_source() {
  local d=$WORK/zstd-src
  [ -d "$d/lib" ] && return
  mkdir -p "$WORK/apt/lists/partial"
  echo 'deb-src http://deb.debian.org/debian bookworm main' > "$WORK/apt/src.list"
  local o=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList="$WORK/apt/src.list" -o Dir::Etc::SourceParts=/dev/null
           -o Dir::State::Lists="$WORK/apt/lists")
  apt-get -qq "${o[@]}" update
  (cd "$WORK/apt" && apt-get -qq "${o[@]}" source --download-only libzstd >/dev/null 2>&1)
  mkdir -p "$d"
  tar -xf "$WORK"/apt/libzstd_*.orig.tar.xz -C "$d" --strip-components=1
}

zstd_build() { # OUT EXTRA_CFLAGS
  make -s -C "$WORK/zstd-src/programs" clean >/dev/null
  make -s -j"$(nproc)" -C "$WORK/zstd-src/programs" zstd-release CC="$LLVM/clang" \
    MOREFLAGS="$FLAGS $2" LDFLAGS="$LDFLAGS $2" >/dev/null 2>&1
  cp "$WORK/zstd-src/programs/zstd" "$1"
}

# zstd works a fixed amount: compress the input 80 times at level 3 (about 2.5 s) (`zstd -b` would run for a
# fixed time instead, whatever the build).
zstd_work() { local f=$1 n=$2; local -a a=(-q -3 -c); for ((k = 0; k < n; k++)); do a+=("$f"); done; echo "${a[@]}"; }

bench_zstd() {
  # shellcheck disable=SC2207
  local train=($(zstd_work "$WORK/zstd.input" 80)) small=($(zstd_work "$WORK/zstd.small" 1))
  if [ -n "${REUSE:-}" ] && [ -x "$WORK/zstd.pgo" ]; then
    compare zstd "${small[@]}" -- "${train[@]}"
    return
  fi
  zstd_source
  # Input: a few MiB of text and binaries that compress moderately.
  cat /usr/share/common-licenses/* "$BATON" > "$WORK/zstd.all"
  head -c 8000000 "$WORK/zstd.all" > "$WORK/zstd.input"
  head -c 1000000 "$WORK/zstd.input" > "$WORK/zstd.small"
  zstd_build "$WORK/zstd.base" ""
  "$BATON" record cpu --frequency 999 --output "$WORK/zstd.pb.gz" -- \
    "$WORK/zstd.base" "${train[@]}" >/dev/null
  "$BATON" fdo --binary "$WORK/zstd.base" --input "$WORK/zstd.pb.gz" \
    --output "$WORK/zstd.afdo.txt" --bolt "$WORK/zstd.fdata"
  zstd_build "$WORK/zstd.autofdo" "-fprofile-sample-use=$WORK/zstd.afdo.txt"
  bolt zstd
  zstd_build "$WORK/zstd.instr" "-fprofile-instr-generate"
  LLVM_PROFILE_FILE="$WORK/zstd.profraw" "$WORK/zstd.instr" "${train[@]}" >/dev/null 2>&1
  "$LLVM/llvm-profdata" merge -o "$WORK/zstd.profdata" "$WORK/zstd.profraw"
  zstd_build "$WORK/zstd.pgo" "-fprofile-instr-use=$WORK/zstd.profdata"
  compare zstd "${small[@]}" -- "${train[@]}"
}

case $WHAT in
  fdo) bench_fdo ;;
  zstd) bench_zstd ;;
  all) bench_fdo; bench_zstd ;;
  *) echo "usage: bench/fdo.sh [all|fdo|zstd]" >&2; exit 2 ;;
esac
