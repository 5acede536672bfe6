#!/usr/bin/env bash
# The gateway against nginx and HAProxy, in one run, with the shared
# yardstick (run by hand; not part of the tests):
#   bench/gateway-yardstick.sh [YARDSTICK] [extra yardstick args...]
# YARDSTICK defaults to ../shared/bench/proxy-yardstick.sh.
# meshgate (release) serves a Gateway and one VirtualService of 100 routes
# where the matched route is the last, to the yardstick's upstream
# 127.0.0.1:18080 (BIN=path measures another build). Needs: apt-get install -y nginx haproxy wrk
set -euo pipefail
cd "$(dirname "$0")/.."
YARDSTICK=${1:-../shared/bench/proxy-yardstick.sh}
shift || true
BIN=${BIN:-target/release/meshgate}
[ -x "$BIN" ] || cargo build --release -p meshgate
. bench/lib.sh
bench_workdir

GW_PORT=${GW_PORT:-18090}
HTTP_ADDR=127.0.0.1:$GW_PORT UP_ARGS=${GW_ARGS:-} start_meshgate
PID=$MESHGATE_PID

bench_gateway_yaml 100 >"$W/bench.yaml"
"$BIN" apply -f "$W/bench.yaml" >/dev/null

echo "meshgate $(git rev-parse --short HEAD) pid $PID on 127.0.0.1:$GW_PORT, 100 routes (last one matches)"
"$YARDSTICK" --gateway "http://127.0.0.1:$GW_PORT/" --gateway-pid "$PID" "$@"
