#!/usr/bin/env bash
# Fleet benchmarks against fresh `baton server`s on this machine (insecure-local, loopback):
#   1. ingest throughput (sample rows per second over HTTP, against writing the same batches
#      straight into DuckDB in-process), with 1 and 4 clients;
#   2. phase A: AGENTS simulated agents speaking the real protocol against one server storing
#      into ClickHouse, for SECONDS;
#   3. phase B: the same agents split between two servers sharing that ClickHouse and one etcd
#      (one holds the control plane; agents follow its X-Baton-Leader answers there for
#      register and heartbeat, and ship their batches to their own server).
# The agents' cadence is a real agent's: register once (spread over the first 5 s), then a
# heartbeat long-poll every 5 s (the server holds it 5 s when it has nothing to say), and a
# batch of ROWS sample rows (24-frame stacks, gzip pprof) every 10 s, its whole-host window.
# Latencies count after a warm-up of SECONDS/3 (at most 10 s); a heartbeat's is what it took
# beyond the 5 s hold. CPU (share of one core, from /proc/PID/stat over the same span) and RSS
# (idle before the agents, peak, end) are read per process: each server, ClickHouse, etcd. The
# simulated agents run in the fleet-bench process, one thread each, and are not counted in any
# of them (their own CPU is in the JSON line). The end: one table, per 1,000 agents and a linear
# projection to 10,000, and a `FLEET_BENCH_JSON {...}` line.
# Usage: bench/fleet.sh [AGENTS=2000] [SECONDS=60]; env ROWS=200, SKIP_INGEST=1, SKIP_AGENTS=1,
# OUT=DIR to keep each phase's figures (a.json, b.json; `fleet-bench report` reads them again).
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-2000}
SECS=${2:-60}
ROWS=${ROWS:-200}
T=${CARGO_TARGET_DIR:-target}
BATON=${BATON:-$T/release/baton}
FB=$T/release/fleet-bench
cargo build --release -q -p baton-bench --bin fleet-bench
[ -x "$BATON" ] || { echo "no $BATON: cargo build --release -p baton" >&2; exit 1; }
tmp=$(mktemp -d)
OUT=${OUT:-$tmp}
mkdir -p "$OUT"
PIDS=()
CHDIR=
stop_all() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  [ -n "$CHDIR" ] && rm -rf "$CHDIR"
  CHDIR=
}
trap 'stop_all; rm -rf "$tmp"' EXIT
# Many agents hold a connection each (two while they follow the leader), on both sides.
ulimit -n "$(ulimit -Hn)"

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
wait_up() { # URL LOG
  for _ in $(seq 150); do curl -sf "$1/api/v1/status" >/dev/null && return 0; sleep 0.2; done
  echo "$1 did not answer; its log:" >&2; tail -20 "$2" >&2; exit 1
}
# baton server NAME [ARGS...]: sets PID and URL; an argument `{url}` becomes the server's URL.
start_baton() {
  local name=$1; shift
  local port; port=$(free_port)
  URL=http://127.0.0.1:$port
  "$BATON" server --insecure-local --listen "127.0.0.1:$port" --data "$tmp/$name" \
    --heartbeat 5s --host-timeout 30s "${@//\{url\}/$URL}" 2> "$tmp/$name.log" &
  PID=$!
  PIDS+=("$PID")
  wait_up "$URL" "$tmp/$name.log"
}
# A private clickhouse-server (the store's test server, through fleet-bench) and database DB:
# sets CH_STORE, CH_PID, CH_HTTP.
start_clickhouse() {
  "$FB" clickhouse "$1" > "$tmp/ch.out" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 600); do grep -q '^CLICKHOUSE ' "$tmp/ch.out" && break; sleep 0.1; done
  grep -q '^CLICKHOUSE ' "$tmp/ch.out" || { cat "$tmp/ch.out" >&2; exit 1; }
  read -r _ CH_STORE CH_PID CH_HTTP CHDIR < <(grep '^CLICKHOUSE ' "$tmp/ch.out")
  PIDS+=("$CH_PID")
}
# A one-member etcd on free loopback ports: sets ETCD and ETCD_PID.
start_etcd() {
  local c p; c=$(free_port); p=$(free_port)
  etcd --name b --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$c" \
    --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
    --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "b=http://127.0.0.1:$p" \
    > "$tmp/etcd.log" 2>&1 &
  ETCD_PID=$!
  PIDS+=("$ETCD_PID")
  ETCD=http://127.0.0.1:$c
  for _ in $(seq 100); do grep -q 'ready to serve client requests' "$tmp/etcd.log" && return 0; sleep 0.2; done
  tail -20 "$tmp/etcd.log" >&2; exit 1
}
# run_agents DB NAME URLS LABEL WATCH: the simulated agents against URLS, their figures in
# $OUT/NAME.json; then the rows their batches left in ClickHouse database DB, and everything
# stopped.
run_agents() {
  "$FB" agents "$3" "$AGENTS" "$SECS" "$ROWS" --label "$4" --watch "$5" --json "$OUT/$2.json"
  local rows hosts
  read -r rows hosts < <(curl -s "http://127.0.0.1:$CH_HTTP/" --data-binary \
    "SELECT count(), uniqExact(host) FROM $1.samples_local FORMAT TSV")
  echo "  ClickHouse holds $rows sample rows from $hosts hosts"
  stop_all
}

if [ "${SKIP_INGEST:-}" != 1 ]; then
  # A fresh server and store for each figure, so none finds the frames of the one before.
  for clients in 1 4; do
    start_baton ingest$clients
    "$FB" ingest "$URL" 200 2000 $clients
    stop_all
  done
fi
[ "${SKIP_AGENTS:-}" = 1 ] && exit 0

echo "== phase A: $AGENTS agents, one server on ClickHouse"
start_clickhouse fleet_a
start_baton a1 --store "$CH_STORE"
run_agents fleet_a a "$URL" "A: 1 server + ClickHouse" "server1=$PID,clickhouse=$CH_PID"

echo "== phase B: $AGENTS agents split between two servers sharing ClickHouse, etcd electing"
start_clickhouse fleet_b
start_etcd
for n in 1 2; do
  start_baton b$n --store "$CH_STORE" --etcd "$ETCD" --cluster fleetbench --advertise '{url}'
  eval "U$n=\$URL S$n=\$PID"
done
# Wait for the election: one of them serves the control plane.
for _ in $(seq 150); do
  for u in "$U1" "$U2"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/api/v1/hosts")" = 200 ] && LEADER=$u && break 2
  done
  sleep 0.2
done
echo "  control plane: ${LEADER:?no server took the control plane}"
run_agents fleet_b b "$U1,$U2" "B: 2 servers + ClickHouse + etcd" \
  "server1=$S1,server2=$S2,clickhouse=$CH_PID,etcd=$ETCD_PID"

echo "== summary ($(nproc) CPUs; agents' cadence: heartbeat long-poll every 5 s, $ROWS rows every 10 s)"
"$FB" report "$OUT/a.json" "$OUT/b.json"
