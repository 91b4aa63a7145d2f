#!/usr/bin/env bash
# Fleet benchmarks against a fresh `baton server` on this machine (insecure-local, loopback):
#   1. ingest throughput (sample rows per second over HTTP, against writing the same batches
#      straight into DuckDB in-process), with 1 and 4 clients;
#   2. AGENTS simulated agents speaking the real protocol (register, heartbeat every 5 s, a batch
#      every 10 s) for SECONDS: heartbeat and ingest latency, and the server's CPU and memory.
# Usage: bench/fleet.sh [AGENTS=200] [SECONDS=60]
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-200}
SECS=${2:-60}
T=${CARGO_TARGET_DIR:-target}
BATON=${BATON:-$T/release/baton}
cargo build --release -q -p baton-bench --bin fleet-bench
tmp=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null; rm -rf "$tmp"' EXIT
# A fresh server and store for each measurement, so none finds the frames of the one before.
start_server() {
  [ -n "$SERVER" ] && kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
  PORT=$((20000 + RANDOM % 20000))
  rm -rf "$tmp/data"
  "$BATON" server --insecure-local --listen 127.0.0.1:$PORT --data "$tmp/data" --heartbeat 5s --host-timeout 30s 2> "$tmp/server.log" &
  SERVER=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/api/v1/status" >/dev/null && break; sleep 0.2; done
  URL=http://127.0.0.1:$PORT
}
start_server
"$T/release/fleet-bench" ingest "$URL" 200 2000 1
start_server
"$T/release/fleet-bench" ingest "$URL" 200 2000 4
[ "${SKIP_AGENTS:-}" = 1 ] && exit 0
start_server
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
"$T/release/fleet-bench" agents "$URL" "$AGENTS" "$SECS" 200 &
BENCH=$!
peak=0
while kill -0 $BENCH 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 1
done
wait $BENCH
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
echo "server during the agents run: CPU $(echo "($c1 - $c0) / $ticks / ($t1 - $t0) * 100" | bc -l | xargs printf '%.1f')% of one core, RSS $((rss / 1024)) MB at the end, peak $((peak / 1024)) MB"
echo "hosts up: $(curl -s "$URL/api/v1/hosts" | grep -o '"state":"up"' | wc -l)"
