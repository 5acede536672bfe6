#!/usr/bin/env bash
# The cost of tracing and access logging on the gateway (issue 6: metrics,
# tracing at 1% and an access log to a file cost at most 10% of its
# requests/s), with the shared yardstick, run by hand:
#   bench/telemetry-cost.sh [YARDSTICK] [ROUNDS]
# YARDSTICK defaults to ../shared/bench/proxy-yardstick.sh; ROUNDS to 3.
# Two meshgates (release, --workers ${WORKERS:-1}) forward to the
# yardstick's upstream 127.0.0.1:18080: "off" with tracing off
# (meshConfig.enableTracing: false) and no access log; "on" with tracing at
# Istio's default 1% (every request's trace context read, continued and
# passed on in W3C and B3 form; 1% recorded into the trace store) and a
# JSON access log to a file. Istio metrics are on in both (they cannot be
# turned off). Each round runs the yardstick against both, alternating
# which goes first. Prints each run and the median of on/off requests/s.
# Needs: nginx haproxy wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
YARDSTICK=${1:-../shared/bench/proxy-yardstick.sh}
ROUNDS=${2:-3}
BIN=target/release/meshgate
[ -x "$BIN" ] || cargo build --release -p meshgate
W0=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W0"; }
trap cleanup EXIT
. bench/lib.sh

printf 'meshConfig:\n  enableTracing: false\n' >"$W0/off.yaml"
W=$W0/off; mkdir -p "$W"
HTTP_ADDR=127.0.0.1:${OFF_PORT:-18091} UP_ARGS="--workers ${WORKERS:-1} --config $W0/off.yaml" start_meshgate
OFF_PID=$MESHGATE_PID
bench_gateway_yaml | "$BIN" apply -f - >/dev/null
W=$W0/on; mkdir -p "$W"
HTTP_ADDR=127.0.0.1:${ON_PORT:-18092} UP_ARGS="--workers ${WORKERS:-1} --access-log $W0/access.log" start_meshgate
ON_PID=$MESHGATE_PID
bench_gateway_yaml | "$BIN" apply -f - >/dev/null

run() { # name port pid
  local out
  out=$("$YARDSTICK" --gateway "http://127.0.0.1:$2/" --gateway-pid "$3"); echo "$out" >&2
  awk '$1=="gateway"{sub("rps=","",$2); print $2}' <<<"$out"
}
echo "meshgate $(git rev-parse --short HEAD), workers ${WORKERS:-1}, $(date -u +%F)"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    off=$(run off "${OFF_PORT:-18091}" "$OFF_PID"); on=$(run on "${ON_PORT:-18092}" "$ON_PID")
  else
    on=$(run on "${ON_PORT:-18092}" "$ON_PID"); off=$(run off "${OFF_PORT:-18091}" "$OFF_PID")
  fi
  echo "round $round: off $off rps, on $on rps, kept $(awk -v a="$on" -v b="$off" 'BEGIN{printf "%.2f", a/b}')" | tee -a "$W0/rounds"
done
echo "access log lines written: $(wc -l <"$W0/access.log")"
awk '{print $NF}' "$W0/rounds" | sort -n | awk '{v[NR]=$1} END{print "median kept: " v[int((NR+1)/2)]}'
