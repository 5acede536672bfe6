#!/usr/bin/env bash
# Writes server/link-order.txt, the order in which the release link lays out
# functions (server/build.rs passes it to lld as --symbol-ordering-file):
# first every function a sidecar agent runs (joining, resuming from its data
# dir, idling, health probes, requests in and out over mTLS), then the ones
# the gateway runs per request. The kernel maps an executable's code in
# 64 KiB runs around each page an instruction touches; with the agent's
# functions spread over the whole .text, an idle agent had most of the
# binary's code resident. Packed together, they are a few MiB.
#
#   bench/link-order.sh        (run by hand; needs valgrind, nginx, curl)
#
# Rerun it after larger changes to the agent or the data plane: names that
# no longer exist are skipped by the linker, and new functions land in the
# default order, so a stale file costs memory, never correctness. The
# measured effect is in docs/benchmarks.md ("Agent memory").
set -euo pipefail
cd "$(dirname "$0")/.."
for t in valgrind callgrind_control nginx curl; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y valgrind nginx curl)" >&2; exit 2; }
done
# PROFILE=profiling works too: same code, same names.
P=${PROFILE:-release}
cargo build --profile "$P" -p meshgate
REAL=$PWD/target/$P/meshgate
. bench/lib.sh
bench_workdir 0.5
APP_PORT=${APP_PORT:-18088}

# Everything meshgate runs here runs under callgrind, which records each
# function executed (mangled names, as the linker knows them).
start_app "$APP_PORT"
callgrind_wrapper --dump-instr=no --compress-strings=no --compress-pos=no --demangle=no
BIN=$W/vg MG_ROLE=up start_meshgate
UP_PID=$MESHGATE_PID
BIN=$REAL
user_service_yaml | "$BIN" apply -f - >/dev/null
bench_gateway_yaml 100 "$APP_PORT" | "$BIN" apply -f - >/dev/null

agent() { # role, service, extra args...; sets ${role}_PID and ${role}_OUT (its outbound address)
  local role=$1 svc=$2; shift 2
  local tok; tok=$("$BIN" token create --service "$svc" 2>/dev/null)
  mkfifo "$W/$role.out"
  MG_ROLE=agent MESHGATE_LOG=warn "$W/vg" agent --join "https://$MESH" --token "$tok" --service "$svc" \
    --ca-fingerprint "$FP" --data-dir "$W/$svc" --outbound 127.0.0.1:0 --inbound 127.0.0.1:0 \
    --metrics 127.0.0.1:0 "$@" >"$W/$role.out" &
  PIDS+=($!); eval "${role}_PID=$!"
  local line
  while read -r line; do
    case "$line" in "meshgate agent ready "*) eval "${role}_OUT=$(sed -E 's/.* outbound=([^ ]+).*/\1/' <<<"$line")"; break;; esac
  done <"$W/$role.out"
  cat "$W/$role.out" >/dev/null &
}
stop() { kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.2; done; }

echo "agents joining under callgrind (slow)..."
agent server user-service --app "127.0.0.1:$APP_PORT" --health http:/ --health-interval 1s
agent client orders
echo "idle for 15 s..."
sleep 15
for _ in $(seq 1 50); do curl -fsS -o /dev/null -H 'Host: user-service' "http://$client_OUT/v1/users"; done
curl -fsS -o /dev/null -H 'Host: user-service' "http://$client_OUT/v1/users?q=1" -d 'a body'
stop "$client_PID"; stop "$server_PID"
echo "the server agent again, resuming from its data dir..."
rm -f "$W/server.out"
agent server user-service --app "127.0.0.1:$APP_PORT"
sleep 5
stop "$server_PID"

# The gateway's per-request functions: counters zeroed once it is warm.
GW=$GATEWAY
for _ in $(seq 1 20); do curl -fsS -o /dev/null "http://$GW/warm"; done
callgrind_control -z "$UP_PID" >/dev/null
for _ in $(seq 1 200); do curl -fsS -o /dev/null "http://$GW/v1/users"; done
callgrind_control -d "$UP_PID" >/dev/null
stop "$UP_PID"

# Function names executed in meshgate's own object, first the agents', then the gateway's.
names() { awk -v bin="$REAL" '/^ob=/{ours = (substr($0, 4) == bin)} /^fn=/{ if (ours) print substr($0, 4)}' "$@" |
  grep -v -e '^0x' -e '^(' | sort -u; }
names "$W"/cg.agent.* >"$W/agent.txt"
names "$W/cg.up.$UP_PID.1" >"$W/gw.all"
comm -13 "$W/agent.txt" "$W/gw.all" >"$W/gw.txt"
{
  echo "# Written by bench/link-order.sh on $(date -u +%F) at $(git rev-parse --short HEAD): the agent's functions"
  echo "# ($(wc -l <"$W/agent.txt")), then the gateway's per request ($(wc -l <"$W/gw.txt")). See server/build.rs."
  cat "$W/agent.txt" "$W/gw.txt"
} >server/link-order.txt
echo "server/link-order.txt: $(wc -l <"$W/agent.txt") agent functions, $(wc -l <"$W/gw.txt") gateway functions"
