#!/usr/bin/env bash
# Python stacks, Baton against py-spy on the same workload (bench/pyloop.py under Debian's
# python3.11: top_a -> mid_b -> leaf_c), both attached to the running process at the same rate:
#   completeness: the share of samples whose Python frames end with <module> > top_a > mid_b >
#     leaf_c, leaf_c at its hot line;
#   overhead: the workload's throughput under each, against no profiler, interleaved;
#   profiler CPU: user + system seconds of the profiler process itself (py-spy pauses the
#     target at each sample by default; its --nonblocking mode is measured too);
#   BPF cost per sample: the cpu program's run time per run (kernel BPF stats) on this workload
#     (a Python walk on every sample) against bench/burn.c (native stacks only).
# Needs py-spy (pip install py-spy; PY_SPY= names it) and /usr/bin/time.
# Usage (as root): bench/python.sh [SECONDS=5] [REPEATS=3] [FREQUENCY=99]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
REPEAT=${2:-3}
FREQ=${3:-99}
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
PY_SPY=${PY_SPY:-$(command -v py-spy || echo /tmp/pyspy-venv/bin/py-spy)}
PY=/usr/bin/python3.11
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x "$PY_SPY" ] || { echo "py-spy not found: pip install py-spy, or set PY_SPY" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
WARM=1.5
DUR=$(python3 -c "print(int($SECS + 1))")

share() { # speedscope file -> share of samples with the full chain at the hot line
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
frames = d["shared"]["frames"]
hot = next(i + 1 for i, l in enumerate(open("bench/pyloop.py")) if "# HOT" in l)
tot = hit = 0.0
for p in d["profiles"]:
    for s, w in zip(p["samples"], p["weights"]):
        py = [frames[i] for i in s if str(frames[i].get("file", "")).endswith(".py")]
        names = [f["name"].split(" ")[0] for f in py]
        tot += w
        if names[-4:] == ["<module>", "top_a", "mid_b", "leaf_c"] and py[-1].get("line") == hot:
            hit += w
print("%.4f" % (hit / tot if tot else 0))
PY
}

ops() { grep -o 'ops_per_sec=[0-9]*' "$1" | cut -d= -f2; }

run_mode() { # mode rep
  local mode=$1 rep=$2 out="$tmp/$1.$2"
  "$PY" bench/pyloop.py "$SECS" "$WARM" > "$out.ops" & local pid=$!
  sleep 0.3
  case $mode in
    bare) ;;
    baton) /usr/bin/time -f "%U %S" -o "$out.cpu" "$BATON" record cpu -F "$FREQ" --pid "$pid" --duration "${DUR}s" \
             --format speedscope --output "$out.json" > /dev/null 2> "$out.err" ;;
    pyspy) /usr/bin/time -f "%U %S" -o "$out.cpu" "$PY_SPY" record -r "$FREQ" -p "$pid" -d "$DUR" -f speedscope \
             -o "$out.json" > /dev/null 2> "$out.err" ;;
    pyspy-nb) /usr/bin/time -f "%U %S" -o "$out.cpu" "$PY_SPY" record --nonblocking -r "$FREQ" -p "$pid" -d "$DUR" \
             -f speedscope -o "$out.json" > /dev/null 2> "$out.err" ;;
  esac
  wait "$pid"
}

MODES="bare baton pyspy pyspy-nb"
for rep in $(seq "$REPEAT"); do
  for m in $MODES; do run_mode "$m" "$rep"; done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
bare=$(for r in $(seq "$REPEAT"); do ops "$tmp/bare.$r.ops"; done | median)
echo "pyloop under python3.11, ${SECS}s x $REPEAT (median), $FREQ Hz, attached by pid"
printf "  %-9s %10s %8s %10s %12s\n" mode "calls/s" ratio complete "profiler CPU"
printf "  %-9s %10s %8s %10s %12s\n" bare "$bare" 1.0000 - -
for m in baton pyspy pyspy-nb; do
  o=$(for r in $(seq "$REPEAT"); do ops "$tmp/$m.$r.ops"; done | median)
  c=$(for r in $(seq "$REPEAT"); do share "$tmp/$m.$r.json"; done | median)
  cpu=$(for r in $(seq "$REPEAT"); do awk '{print $1 + $2}' "$tmp/$m.$r.cpu"; done | median)
  printf "  %-9s %10s %8.4f %9.1f%% %11.2fs\n" "$m" "$o" "$(echo "$o / $bare" | bc -l)" "$(echo "$c * 100" | bc -l)" "$cpu"
done

# BPF cost per sample: the cpu program's run time per run, with and without a Python walk.
sysctl -q -w kernel.bpf_stats_enabled=1
bpf_cost() { # command... -> ns per run of on_cpu_sample while it runs
  "$@" > /dev/null 2>&1 & local pid=$!
  sleep 0.3
  "$BATON" record cpu -F "$FREQ" --pid "$pid" --duration "${SECS}s" --format collapsed --output /dev/null > /dev/null 2>&1 &
  local rec=$!
  sleep "$(python3 -c "print($SECS * 0.8)")"
  bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("name") == "on_cpu_sample" and p.get("run_cnt")]
print("%.0f" % (sum(p["run_time_ns"] for p in progs) / max(1, sum(p["run_cnt"] for p in progs))))'
  wait "$rec" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
clang -O2 -g -fno-omit-frame-pointer -pthread -o "$tmp/burn" bench/burn.c
py_ns=$(bpf_cost "$PY" bench/pyloop.py "$((SECS + 2))")
native_ns=$(bpf_cost "$tmp/burn" "$((SECS + 2))")
sysctl -q -w kernel.bpf_stats_enabled=0
echo "BPF cost per sample (on_cpu_sample, kernel stats): python3.11 with the Python walk and a stack copy ${py_ns} ns; burn.c, frame pointers only, ${native_ns} ns"
