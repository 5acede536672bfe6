#!/usr/bin/env bash
# Config push to many agents (issue 4: an apply reaches 50 agents, all
# acknowledged, in under 100 ms p99). Run by hand:
#   bench/mesh-push.sh [AGENTS] [APPLIES]      (defaults 50 and 20)
# Starts meshgate (release) on loopback and AGENTS client-only agents, then
# APPLIES times: applies a changed VirtualService and polls
# /api/v1/proxy-status until every agent reports the new revision; prints
# the time from the apply's start to the last acknowledgement.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/meshgate
[ -x "$BIN" ] || cargo build --release -p meshgate
N=${1:-50}; APPLIES=${2:-20}
. bench/lib.sh
bench_workdir
start_meshgate
for i in $(seq 1 "$N"); do
  tok=$("$BIN" token create --service "svc-$i" 2>/dev/null)
  MESHGATE_LOG=error "$BIN" agent --join "https://$MESH" --token "$tok" --service "svc-$i" --ca-fingerprint "$FP" \
    --data-dir "$W/a$i" --outbound 127.0.0.1:0 --metrics 127.0.0.1:0 >/dev/null 2>&1 &
  PIDS+=($!)
done
python3 - "$ADMIN" "$MESHGATE_TOKEN" "$N" "$APPLIES" <<'PY'
import json, sys, time, urllib.request
admin, token, n, applies = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def call(method, path, body=None):
    req = urllib.request.Request(admin + path, method=method, data=body,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/yaml"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
def synced():
    s = call("GET", "/api/v1/proxy-status")
    rev = s["revision"]
    agents = [p for p in s["proxies"] if p.get("role") == "sidecar"]
    return len(agents), sum(1 for p in agents if p["revision"] == rev)
deadline = time.time() + 120
while synced() != (n, n):
    if time.time() > deadline: sys.exit("agents did not all connect")
    time.sleep(0.2)
times = []
for i in range(applies):
    yaml = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: push}\n"
            "spec:\n  hosts: [push.example]\n  http:\n  - directResponse: {status: 200, body: {string: '%d'}}\n" % i).encode()
    t0 = time.perf_counter()
    call("POST", "/api/v1/apply?namespace=default", yaml)
    while synced()[1] != n:
        time.sleep(0.001)
    times.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.2)
times.sort()
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"agents={n} applies={applies} p50={pick(0.5):.1f}ms p90={pick(0.9):.1f}ms p99={pick(0.99):.1f}ms max={times[-1]:.1f}ms")
PY
