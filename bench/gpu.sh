#!/usr/bin/env bash
# Cost of the GPU profilers, on Baton's fake CUDA runtime and driver (tests/workloads/fakecuda),
# whose launch calls do no work, so what is measured is the probes' cost alone:
#
#   bare         the launch loops of tests/workloads/gpu.c (N cudaLaunchKernel calls, each
#                calling the fake driver's cuLaunchKernel as a runtime does, and N/2 direct
#                cuLaunchKernel calls, from known chains), no profiler
#   cuda         under `baton record cuda` at its default rate limit (2,000 launches a second
#                per thread recorded in full, 1 in 16 past it): every launch still traps
#   cuda-all     under `baton record cuda --opt max_rate=0`: every launch recorded with its stack
#   trap-ref     the reference for one trap: `baton record calls` counting the driver's
#                cuLaunchKernel without stacks (the cheapest uprobe Baton has), 1.5 N traps
#
# A runtime launch traps twice (cudaLaunchKernel, and the driver's cuLaunchKernel it calls,
# recognised as nested and not counted): the cuda modes take 2.5 N traps for 1.5 N launches.
# Prints the loops' time per mode (median of REPEATS, interleaved, pinned to one CPU), the ratio
# of throughput to bare and the cost per launch derived from them; then the NVML reader's CPU
# time per reading (fake NVML with 8 devices: Baton's own cost, not the driver's; the GPU check
# script measures it on a real driver).
# Usage (as root): bench/gpu.sh [N=1000000] [REPEATS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
REPEAT=${2:-5}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=tests/workloads
clang -O2 -g -fPIC -shared -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so.1" "$src/fakecuda/cuda.c"
clang -O2 -g -fPIC -shared -Wl,-soname,libcudart.so.12 -o "$tmp/libcudart.so.12" \
    "$src/fakecuda/cudart.c" "$tmp/libcuda.so.1" -Wl,-rpath,"$tmp"
clang -O2 -g -fPIC -shared -Wl,-soname,libnvidia-ml.so.1 -o "$tmp/libnvidia-ml.so.1" \
    "$src/fakecuda/nvml.c"
clang -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -fno-optimize-sibling-calls \
    -o "$tmp/gpu" "$src/gpu.c" "$tmp/libcudart.so.12" "$tmp/libcuda.so.1" -Wl,-rpath,"$tmp"
CPU=${CPU:-1}

secs() { grep -o 'launches in [0-9.]*' | awk '{print $3}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A runs
for _ in $(seq "$REPEAT"); do
    runs[bare]+="$(taskset -c "$CPU" "$tmp/gpu" "$N" 2>&1 | secs) "
    # Baton pinned too (its child inherits the CPU): `-- taskset …` would make taskset the
    # command Baton starts, and its probes would go in only once the loop had run.
    runs[cuda]+="$(taskset -c "$CPU" "$BATON" record cuda -o "$tmp/c.pb" -- "$tmp/gpu" "$N" 2>&1 | secs) "
    runs[cuda-all]+="$(taskset -c "$CPU" "$BATON" record cuda --opt max_rate=0 -o "$tmp/a.pb" -- "$tmp/gpu" "$N" 2>&1 | secs) "
    runs[trap-ref]+="$(taskset -c "$CPU" "$BATON" record calls --opt probe="$tmp/libcuda.so.1:cuLaunchKernel" --opt stacks=false -o "$tmp/r.pb" -- "$tmp/gpu" "$N" 2>&1 | secs) "
done
launches=$((N + N / 2))
bare=$(echo "${runs[bare]}" | tr ' ' '\n' | grep . | median)
printf "%-10s %12s %10s %14s %12s\n" mode "loops (s)" "vs bare" "ns per launch" "ns per trap"
for m in bare cuda cuda-all trap-ref; do
    t=$(echo "${runs[$m]}" | tr ' ' '\n' | grep . | median)
    traps=$((N * 5 / 2))
    [ "$m" = trap-ref ] && traps=$launches
    awk -v m="$m" -v t="$t" -v b="$bare" -v n="$launches" -v k="$traps" \
        'BEGIN { printf "%-10s %12.4f %10.4f %14.0f %12.0f\n", m, t, b / t, (t - b) / n * 1e9, (t - b) / k * 1e9 }'
done
echo "($launches launches per run, median of $REPEAT, CPU $CPU)"

# NVML: the reading thread's CPU time per reading of 8 devices, every 100 ms for 10 s.
export BATON_FAKE_NVML_DEVICES=8 BATON_FAKE_NVML_PID=$$
"$BATON" record nvml --all --duration 12s --opt lib="$tmp/libnvidia-ml.so.1" \
    --opt interval=100ms -o "$tmp/n.pb" >/dev/null 2>&1 &
rec=$!
sleep 11
tid=$(grep -l '^baton-nvml$' /proc/"$rec"/task/*/comm 2>/dev/null | head -1 | cut -d/ -f5)
# schedstat's first field: nanoseconds the thread ran.
ns=$(awk '{print $1}' /proc/"$rec"/task/"$tid"/schedstat)
wait "$rec"
awk -v ns="$ns" 'BEGIN {
    printf "nvml reader: %.2f ms of CPU for about 110 readings of 8 devices: %.0f us per reading (%.4f%% of a core at 1 Hz)\n",
        ns / 1e6, ns / 110 / 1e3, ns / 110 / 1e9 * 100 }'
