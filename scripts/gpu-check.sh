#!/usr/bin/env bash
# The GPU profilers on a real NVIDIA GPU, in under five minutes, building nothing heavy: a C
# program (scripts/gpu-check.c) loads a PTX kernel through libcuda.so.1 and launches it N times
# from a known chain, allocates device memory, and keeps the GPU busy; `baton record` runs
# cuda, gpumem and nvml on it. It checks what the fake-library tests check (exact launch count
# under the chain, the kernel's name and dimensions, exact live device bytes) plus GPU
# utilisation above zero while the GPU is busy, and prints the cost per launch and of NVML
# sampling. Exit 0 when every check passes.
# Usage (as root, on a host with an NVIDIA driver): scripts/gpu-check.sh [N=20000]
# BATON=path/to/baton overrides the binary (default target/release/baton). LIBCUDA=PATH uses
# that libcuda.so.1 and skips the driver check: with Baton's fake libraries (and
# BATON_NVML_LIBRARY set to the fake NVML) it dry-runs this script where there is no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
fail=0
check() { if eval "$2"; then echo "ok    $1"; else echo "FAIL  $1"; fail=1; fi; }
[ -x "$BATON" ] || { echo "no baton binary at $BATON" >&2; exit 2; }
if [ -z "${LIBCUDA:-}" ]; then
    [ -e /proc/driver/nvidia ] || { echo "no NVIDIA driver here (/proc/driver/nvidia)" >&2; exit 2; }
fi
libcuda=${LIBCUDA:-$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')}
[ -n "$libcuda" ] || { echo "libcuda.so.1 is not in the loader's cache" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CC=${CC:-$(command -v clang || command -v gcc || command -v cc)}
"$CC" -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -o "$work/gpu-check" \
    scripts/gpu-check.c "$libcuda" -Wl,-rpath,"$(dirname "$libcuda")" || exit 2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1
if [ -z "${LIBCUDA:-}" ]; then
    "$BATON" profilers | grep -A2 '^cuda\|^gpumem\|^nvml' | grep unavailable && fail=1
fi

echo "== cuda: $N launches"
"$BATON" record cuda --opt max_rate=0 --format collapsed -- "$work/gpu-check" "$N" 0 \
    >"$work/cuda.txt" 2>"$work/cuda.log"
"$BATON" record cuda --opt max_rate=0 -o "$work/cuda.pb" -- "$work/gpu-check" "$N" 0 \
    >/dev/null 2>&1
chain=$(awk '/main;run_model;launch_spin;cuLaunchKernel / {s += $NF} END {print s + 0}' "$work/cuda.txt")
check "cuda: $N launches under main;run_model;launch_spin;cuLaunchKernel (got $chain)" \
    '[ "$chain" -eq "$N" ]'
strings_in() { gzip -dc "$work/cuda.pb" | strings; }
check "cuda: the kernel is named baton_spin" 'strings_in | grep -q baton_spin'
check "cuda: grid 1x1x1, block 64x1x1" 'strings_in | grep -q 64x1x1 && strings_in | grep -q "^1x1x1"'

echo "== gpumem"
"$BATON" record gpumem --format collapsed --value live_bytes -- "$work/gpu-check" 10 1 \
    >"$work/mem.txt" 2>"$work/mem.log"
live=$(awk '/alloc_buffers/ {s += $NF} END {print s + 0}' "$work/mem.txt")
check "gpumem: 2 MiB live under alloc_buffers (got $live)" '[ "$live" -eq 2097152 ]'

echo "== nvml while the GPU is busy for 8 s"
"$work/gpu-check" 10 8 2>/dev/null &
busy=$!
sleep 1
"$BATON" record nvml --all --duration 6s --format collapsed --value gpu_util \
    >"$work/util.txt" 2>"$work/nvml.log" &
rec=$!
sleep 4
tid=$(grep -l '^baton-nvml$' /proc/"$rec"/task/*/comm 2>/dev/null | head -1 | cut -d/ -f5)
nvml_ns=$(awk '{print $1}' /proc/"$rec"/task/"$tid"/schedstat 2>/dev/null || echo 0)
wait "$rec"
wait "$busy"
util=$(awk '{s += $NF} END {print s + 0}' "$work/util.txt")
check "nvml: GPU utilisation above zero while busy (got $util %)" '[ "$util" -gt 0 ]'
awk -v ns="$nvml_ns" 'BEGIN { printf "nvml reader: %.2f ms of CPU in its first ~3 readings (%.0f us each)\n", ns / 1e6, ns / 3 / 1e3 }'

echo "== cost per launch (cuLaunchKernel, 1-iteration kernel, not synchronised)"
bare=$("$work/gpu-check" "$N" 0 2>&1 | awk '/launch loop/ {print $(NF-1)}')
probed=$("$BATON" record cuda -o "$work/c2.pb" -- "$work/gpu-check" "$N" 0 2>&1 | awk '/launch loop/ {print $(NF-1)}')
all=$("$BATON" record cuda --opt max_rate=0 -o "$work/c3.pb" -- "$work/gpu-check" "$N" 0 2>&1 | awk '/launch loop/ {print $(NF-1)}')
awk -v b="$bare" -v p="$probed" -v a="$all" -v n="$N" 'BEGIN {
    printf "bare %.4f s; cuda (default rate) %.4f s: %.2f us more per launch; every launch recorded %.4f s: %.2f us more\n",
        b, p, (p - b) / n * 1e6, a, (a - b) / n * 1e6 }'
[ "$fail" -eq 0 ] && echo "all checks passed" || echo "some checks FAILED"
exit "$fail"
