#!/usr/bin/env bash
# The UI on large profiles: time to the first flame-graph frame, zoom frame rate and bytes of the
# flame-graph payload, for 10,000 and 100,000 distinct stacks, in headless Chromium (playwright-
# core from tests/ui). References measured in the same run: the 300 ms and 16.7 ms (60 fps)
# budgets, and the bytes of the nested-tree JSON that the binary flat, gzipped payload replaces.
# Usage (as root): bench/ui.sh [REPEATS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-5}
T=${CARGO_TARGET_DIR:-target}
BATON=${BATON:-$T/release/baton}
cargo build --release -q -p baton-bench --bin ui-data
[ -x "$BATON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $up 2>/dev/null || true; rm -rf "$tmp"' EXIT
for n in 10000 100000; do
  "$T/release/ui-data" "$n" "$tmp/d$n"
  "$BATON" up --listen 127.0.0.1:0 --data "$tmp/d$n" --frequency 1 2>"$tmp/up$n.log" &
  up=$!
  for _ in $(seq 60); do grep -q "UI at" "$tmp/up$n.log" && break; sleep 0.5; done
  addr=$(grep -o 'UI at http://[^/]*' "$tmp/up$n.log" | sed 's|UI at http://||')
  q="since=15m&comm=synthetic"
  api="since=15m&filter=comm%3Dsynthetic"
  tree=$(curl -s "http://$addr/api/v1/flamegraph?$api" | wc -c)
  flat=$(curl -s "http://$addr/api/v1/flamegraph?$api&shape=flatbin" | wc -c)
  flatgz=$(curl -s -H 'Accept-Encoding: gzip' "http://$addr/api/v1/flamegraph?$api&shape=flatbin" | wc -c)
  mkdir -p "$tmp/out$n"
  (cd tests/ui && node drive.mjs perf "http://$addr" "$tmp/out$n" "{\"query\":\"$q\",\"repeat\":$REPEAT}") > "$tmp/perf$n.json"
  python3 - "$n" "$tree" "$flat" "$flatgz" "$tmp/perf$n.json" <<'PY'
import json, statistics, sys
n, tree, flat, flatgz, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = json.load(open(path))["runs"]
med = lambda k: statistics.median(r[k] for r in runs)
zoom = lambda k: statistics.median(r["zoom"][k] for r in runs)
first, client = med("firstFrameMs"), med("parseMs") + med("renderMs")
full = med("fullMs")
fps = 1000 / zoom("meanGapMs")
print(f"{int(n):,} stacks, {runs[0]['nodes']:,} nodes:")
print(f"  first frame {first:.0f} ms: {med('firstNodes'):,.0f} visible nodes, {med('firstBytes'):,.0f} B (query + transfer {med('firstFetchMs'):.0f} ms, decode {med('parseMs'):.0f} ms, layout+draw+paint {med('renderMs'):.0f} ms); {first/300:.2f}x the 300 ms budget")
print(f"  whole tree in (top table, search, zoom detail) at {full:.0f} ms; its fetch {med('fetchMs'):.0f} ms")
print(f"  zoom: {fps:.1f} fps ({zoom('frames'):.0f} frames in 6 zooms, {zoom('slowFrames'):.0f} gaps over 20 ms, longest {zoom('maxGapMs'):.0f} ms) against {zoom('idleFps'):.1f} fps of empty animation frames in the same page ({fps/zoom('idleFps'):.2f}x); draw median {zoom('medianDrawMs'):.1f} ms, p95 {zoom('p95DrawMs'):.1f} ms ({zoom('p95DrawMs')/16.7:.2f}x a 60 fps frame)")
print(f"  payload: nested tree JSON {tree:,} B; binary flat {flat:,} B ({flat/tree:.2f}x), gzipped {flatgz:,} B ({flatgz/tree:.3f}x); transferred as the page saw it {med('bytes'):,.0f} B")
PY
  kill $up; wait $up 2>/dev/null || true
done
