#!/usr/bin/env bash
# Control-plane benchmarks (issue 2): cold start to `meshgate ready`, idle
# RSS, apply of 1,000 resources in one request, list of 10,000, binary size.
# Usage: bench/control-plane.sh [path/to/meshgate]   (default: target/release/meshgate)
# Prints medians of several runs; copy the figures to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/meshgate}
[ -x "$BIN" ] || cargo build --release -p meshgate
RUNS=${RUNS:-7}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now_ms() { date +%s%3N; }

start() { # start DATA_DIR -> sets PID, ADMIN; prints ms to ready
  local fifo="$WORK/out.$RANDOM"; mkfifo "$fifo"
  local t0; t0=$(now_ms)
  "$BIN" up --data-dir "$1" --admin 127.0.0.1:0 --mesh 127.0.0.1:0 >"$fifo" 2>/dev/null &
  PID=$!
  while read -r line; do
    case "$line" in "meshgate ready "*) ADMIN=$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line"); break;; esac
  done <"$fifo"
  echo $(( $(now_ms) - t0 ))
  # keep draining stdout so the server never blocks on a full pipe
  cat "$fifo" >/dev/null &
  DRAIN=$!
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; wait "$DRAIN" 2>/dev/null || true; }

DATA="$WORK/data"
start "$DATA" >/dev/null; stop   # first start creates the data dir

echo "== cold start with an existing data dir (ms to 'meshgate ready'), $RUNS runs"
for _ in $(seq "$RUNS"); do start "$DATA"; stop; done | median | sed 's/^/median: /'

start "$DATA" >/dev/null
TOKEN=$(cat "$DATA/admin.token")
sleep 2 # idle means idle: let start-up allocations settle before reading RSS
echo "== idle RSS: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$PID/status)"

gen() { # gen COUNT PREFIX -> JSON array of ServiceEntries
  python3 - "$1" "$2" <<'PY'
import json, sys
n, p = int(sys.argv[1]), sys.argv[2]
print(json.dumps([{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
  "metadata": {"name": f"{p}-{i}", "namespace": "bench", "labels": {"app": f"{p}-{i}"}},
  "spec": {"hosts": [f"{p}-{i}.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
           "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}} for i in range(n)]))
PY
}
curl_ms() { curl -s -o /dev/null -w '%{time_total}\n' "$@" | awk '{print $1*1000}'; }

echo "== apply of 1,000 new resources in one request (ms), $RUNS runs"
for r in $(seq "$RUNS"); do
  gen 1000 "run$r" >"$WORK/batch.json"
  curl_ms -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary @"$WORK/batch.json" "$ADMIN/api/v1/apply"
done | median | sed 's/^/median: /'

echo "== RSS after the applies: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$PID/status)"
echo "== apply of the same 1,000 again (all unchanged) (ms)"
for _ in $(seq "$RUNS"); do
  curl_ms -X POST -H "Authorization: Bearer $TOKEN" --data-binary @"$WORK/batch.json" "$ADMIN/api/v1/apply"
done | median | sed 's/^/median: /'

have=$((RUNS * 1000))
while [ "$have" -lt 10000 ]; do
  gen 1000 "fill$have" >"$WORK/batch.json"
  curl -s -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" --data-binary @"$WORK/batch.json" "$ADMIN/api/v1/apply"
  have=$((have + 1000))
done
echo "== list of $have resources, GET /api/v1/namespaces/bench/serviceentries (ms), $RUNS runs"
for _ in $(seq "$RUNS"); do
  curl_ms -H "Authorization: Bearer $TOKEN" "$ADMIN/api/v1/namespaces/bench/serviceentries"
done | median | sed 's/^/median: /'
echo "== RSS after the list: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$PID/status)"
stop

echo "== release binary: $(du -h "$BIN" | cut -f1) ($(stat -c %s "$BIN") bytes)"
