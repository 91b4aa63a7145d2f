#!/usr/bin/env bash
# Overhead and accuracy of the jemalloc reporter (crates/profilers/src/preload/baton_jemalloc.c)
# on bench/jemalloc_loop.c linked against Debian's libjemalloc.so.2, all measured in this run:
#   bare            no MALLOC_CONF
#   prof            MALLOC_CONF=prof:true,lg_prof_sample:19, jemalloc's own backtraces
#   shim            the same, with the reporter preloaded, no tracer attached (the reporter then
#                   pauses jemalloc's sampling: prof.active follows the probes' semaphore)
#   shim-active     the same, sampling kept on (BATON_JEMALLOC_KEEP_ACTIVE): hook, no unwinding
#   shim+bpftrace   the reporter with bpftrace attached to its probes (a trap per sample; frees
#                   ride along with the next sample's trap)
# Prints throughput (malloc/free pairs per second, median of REPEATS) and the ratio to bare; the
# cost per unsampled pair (shim against bare) and per sampled pair (every allocation sampled,
# lg_prof_sample:0); then checks, through bpftrace, that the probes fire about once per 2^19
# allocated bytes and that the weighted samples estimate allocated and live bytes within 10%.
# Exits non-zero when the reporter's throughput is below 0.95x bare or an estimate is off.
# Usage (as root): bench/jemalloc.sh [PAIRS=30000000] [REPEATS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-30000000}
REPEAT=${2:-5}
JE=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -e "$JE" ] || { echo "needs Debian's libjemalloc2 ($JE)" >&2; exit 1; }
tmp=$(mktemp -d)
bp=""
cleanup() { [ -n "$bp" ] && kill -INT "$bp" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# The reporter is built as the profiler's build script builds it.
clang -O2 -g -fPIC -shared -fno-omit-frame-pointer -fvisibility=hidden -Wall -Wextra -Werror \
  -o "$tmp/libbaton_jemalloc.so" crates/profilers/src/preload/baton_jemalloc.c -ldl -lm -lpthread
gcc -O2 -g -fno-omit-frame-pointer -o "$tmp/loop" bench/jemalloc_loop.c "$JE"
SHIM=$tmp/libbaton_jemalloc.so
CONF=prof:true,prof_active:true,lg_prof_sample:19

rate() { grep -o 'ops_per_sec=[0-9]*' | tail -1 | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # MODE PAIRS [LIVE_MB [count]]: the loop's output in MODE
  local mode=$1; shift
  case "$mode" in
    bare) "$tmp/loop" "$@" ;;
    prof) MALLOC_CONF=$CONF "$tmp/loop" "$@" ;;
    shim) MALLOC_CONF=$CONF LD_PRELOAD=$SHIM "$tmp/loop" "$@" ;;
    shim-active) MALLOC_CONF=$CONF BATON_JEMALLOC_KEEP_ACTIVE=1 LD_PRELOAD=$SHIM "$tmp/loop" "$@" ;;
    every-prof) MALLOC_CONF=prof:true,lg_prof_sample:0 "$tmp/loop" "$@" ;;
    every-shim) MALLOC_CONF=prof:true,lg_prof_sample:0 BATON_JEMALLOC_KEEP_ACTIVE=1 LD_PRELOAD=$SHIM "$tmp/loop" "$@" ;;
  esac
}

# A bpftrace program on the reporter's probes: per (usable size, mean), the sampled allocations,
# and those freed before the loop's checkpoint; all allocs and frees.
# Frees come in batches (with the next sample's alloc probe, or 64 at a time), before it.
frees() { # ARRAY COUNT: bpftrace for each freed pointer of a batch
  echo "\$i = 0; while (\$i < $2 && \$i < 64) { \$p = *(uint64 *)($1 + \$i * 8); @nf = count();
    if (@stop == 0 && @sz[\$p] != 0) { @freed[@sz[\$p], @mn[\$p]] = count(); }
    delete(@sz[\$p]); delete(@mn[\$p]); \$i++; }"
}
cat > "$tmp/count.bt" <<EOF
usdt:$SHIM:baton:alloc { $(frees arg3 arg4)
  @alloc[arg1, arg2] = count(); @sz[arg0] = arg1; @mn[arg0] = arg2; @na = count(); }
usdt:$SHIM:baton:frees { $(frees arg0 arg1) }
uprobe:$tmp/loop:checkpoint { @stop = 1; }
EOF
attach() { # starts bpftrace on the probes, output to $1; waits until attached
  BPFTRACE_MAP_KEYS_MAX=262144 bpftrace "$tmp/count.bt" > "$1" 2>&1 &
  bp=$!
  for _ in $(seq 100); do grep -q '^Attaching' "$1" 2>/dev/null && break; sleep 0.2; done
  sleep 1
}
detach() { kill -INT "$bp"; wait "$bp" || true; bp=""; }

echo "== throughput: $PAIRS pairs, 16 B..4 KiB, median of $REPEAT (interleaved) =="
declare -A R
MODES="bare prof shim shim-active"
for mode in $MODES; do R[$mode]=""; done
for _ in $(seq "$REPEAT"); do
  for mode in $MODES; do R[$mode]+="$(run $mode "$PAIRS" | rate) "; done
done
attach "$tmp/traced.out"
traced=""
for _ in $(seq "$REPEAT"); do traced+="$(run shim "$PAIRS" | rate) "; done
detach
bare=$(echo ${R[bare]} | tr ' ' '\n' | median)
fmt() { awk -v r="$1" -v b="$bare" 'BEGIN { printf "%12.0f pairs/s  %.3fx bare", r, r / b }'; }
for mode in $MODES; do
  m=$(echo ${R[$mode]} | tr ' ' '\n' | median)
  printf '%-15s %s\n' "$mode" "$(fmt "$m")"
  eval "m_${mode/-/_}=$m"
done
m_traced=$(echo $traced | tr ' ' '\n' | median)
printf '%-15s %s\n' "shim+bpftrace" "$(fmt "$m_traced")"
awk -v b="$bare" -v s="$m_shim" -v p="$m_prof" 'BEGIN {
  printf "per pair against bare: %+.2f ns with the reporter (no tracer), %+.2f ns with prof alone\n",
    1e9 / s - 1e9 / b, 1e9 / p - 1e9 / b }'
# The reporter's own cost per unsampled pair, in one process: chunks through it and chunks
# straight to jemalloc, alternating (without it, both are the same calls: a calibration).
ab() { "$@" "$tmp/loop" "$PAIRS" 0 ab | sed 's/via_ns=//; s/direct_ns=//'; }
ab_cal=(); ab_shim=()
for _ in $(seq "$REPEAT"); do
  ab_cal+=("$(ab env | awk '{print $1 - $2}')")
  ab_shim+=("$(ab env LD_PRELOAD="$SHIM" | awk '{print $1 - $2}')")
done
printf 'reporter wrapper, same process: %+.2f ns per unsampled pair (calibration without it: %+.2f ns)\n' \
  "$(printf '%s\n' "${ab_shim[@]}" | median)" "$(printf '%s\n' "${ab_cal[@]}" | median)"

echo "== cost per sampled pair: every allocation sampled (lg_prof_sample:0), 200000 pairs =="
every=200000
e_bare=$(run bare $every | rate)
e_prof=$(run every-prof $every | rate)
e_shim=$(run every-shim $every | rate)
attach "$tmp/every.out"
e_traced=$(run every-shim $every | rate)
detach
awk -v b="$e_bare" -v p="$e_prof" -v s="$e_shim" -v t="$e_traced" 'BEGIN {
  printf "jemalloc own backtrace (libgcc unwind): %.2f us per sampled pair\n", 1e6 / p - 1e6 / b
  printf "reporter hook, no tracer:               %.2f us per sampled pair\n", 1e6 / s - 1e6 / b
  printf "reporter hook + bpftrace (1 trap):      %.2f us per sampled pair\n", 1e6 / t - 1e6 / b }'

echo "== accuracy: 3000000 pairs after 512 MiB kept live, through bpftrace =="
attach "$tmp/acc.out"
run shim 3000000 512 count > "$tmp/acc.truth"
sleep 0.5
detach
cat "$tmp/acc.truth" | grep -v ops_per_sec
status=0
python3 - "$tmp/acc.out" "$tmp/acc.truth" "$m_shim" "$bare" <<'EOF' || status=1
import math, re, sys
out, truth, shim, bare = open(sys.argv[1]).read(), open(sys.argv[2]).read(), float(sys.argv[3]), float(sys.argv[4])
maps = {"alloc": {}, "freed": {}}
for kind, size, mean, n in re.findall(r"@(alloc|freed)\[(\d+), (\d+)\]: (\d+)", out):
    maps[kind][(int(size), int(mean))] = int(n)
count = {k: int(v) for k, v in re.findall(r"@(na|nf): (\d+)", out)}
w = lambda s, m: 1.0 if m == 0 else 1 / (1 - math.exp(-s / m))
est = {k: sum(n * s * w(s, m) for (s, m), n in v.items()) for k, v in maps.items()}
true_alloc = int(re.search(r"alloc_bytes=(\d+)", truth).group(1))
true_live = int(re.search(r"live_bytes=(\d+)", truth).group(1))
mean = next(iter(maps["alloc"]))[1] if maps["alloc"] else 0
samples = sum(maps["alloc"].values())
print(f"samples {samples}, expected about {true_alloc / mean if mean else 0:.0f} (allocated / 2^19); "
      f"allocs {count.get('na', 0)}, frees {count.get('nf', 0)}")
print(f"allocated: estimated {est['alloc'] / 1e6:.1f} MB, true {true_alloc / 1e6:.1f} MB "
      f"({est['alloc'] / true_alloc - 1:+.1%})")
live = est["alloc"] - est["freed"]
print(f"live at checkpoint: estimated {live / 1e6:.1f} MB, true {true_live / 1e6:.1f} MB "
      f"({live / true_live - 1:+.1%})")
bad = []
if shim / bare < 0.95: bad.append(f"reporter throughput {shim / bare:.3f}x bare < 0.95x")
if abs(est["alloc"] / true_alloc - 1) > 0.10: bad.append("allocated bytes off by more than 10%")
if abs(live / true_live - 1) > 0.10: bad.append("live bytes off by more than 10%")
if abs(count.get("na", 0) - count.get("nf", 0)) > 2: bad.append("allocs and frees do not pair up")
print("FAIL: " + "; ".join(bad) if bad else "OK")
sys.exit(1 if bad else 0)
EOF

# A real allocator-heavy program linked against libjemalloc.so.2: Debian's clickhouse-server
# (C++, so operator new and delete come through the reporter too), one query that allocates a
# lot, best of 5, in each mode; and the sampled call sites with bpftrace attached.
CH=$(command -v clickhouse-server || true)
if [ -z "$CH" ] || ! ldd "$CH" | grep libjemalloc >/dev/null; then
  echo "== clickhouse-server: not installed or not linked against libjemalloc.so.2, skipped =="
  exit $status
fi
echo "== clickhouse-server: a GROUP BY of 3,000,000 strings, best of 5 =="
ch=$tmp/ch
mkdir -p "$ch"
port=$((20000 + RANDOM % 20000))
cat > "$ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$ch/server.log</log><errorlog>$ch/error.log</errorlog></logger>
  <http_port>$port</http_port><tcp_port>$((port + 1))</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$ch/data/</path><tmp_path>$ch/tmp/</tmp_path><users_config>$ch/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
XML
cat > "$ch/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
QUERY="SELECT count(), sum(length(s)) FROM (SELECT toString(number) AS s, groupArray(number) FROM numbers(3000000) GROUP BY s) FORMAT Null"
ch_run() { # MODE: best query seconds
  local pid
  case "$1" in
    bare) "$CH" --config-file="$ch/config.xml" >/dev/null 2>&1 & pid=$! ;;
    *) MALLOC_CONF=$CONF LD_PRELOAD=$SHIM "$CH" --config-file="$ch/config.xml" >/dev/null 2>&1 & pid=$! ;;
  esac
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.5; done
  local best=999
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s.%N)
    curl -sf "http://127.0.0.1:$port/" --data-binary "$QUERY" >/dev/null || { echo "query failed in $1" >&2; }
    t1=$(date +%s.%N)
    best=$(awk -v a="$best" -v b="$(echo "$t1 - $t0" | bc)" 'BEGIN { print (b < a) ? b : a }')
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$best"
}
c_bare=$(ch_run bare)
c_shim=$(ch_run shim)
cat > "$tmp/sites.bt" <<BT
usdt:$SHIM:baton:alloc { @n = count(); @f = sum(arg4); }
usdt:$SHIM:baton:frees { @f = sum(arg1); }
BT
BPFTRACE_MAP_KEYS_MAX=262144 bpftrace "$tmp/sites.bt" > "$tmp/sites.out" 2>&1 &
bp=$!
sleep 3
c_traced=$(ch_run shim)
detach
awk -v b="$c_bare" -v s="$c_shim" -v t="$c_traced" 'BEGIN {
  printf "bare %.3f s, reporter %.3f s (%.3fx throughput), reporter + bpftrace %.3f s (%.3fx)\n",
    b, s, b / s, t, b / t }'
grep -E '^@(n|f):' "$tmp/sites.out" | tr '\n' ' '; echo "(sampled allocs, sampled frees)"
exit $status
