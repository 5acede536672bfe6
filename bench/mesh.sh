#!/usr/bin/env bash
# Mesh data-plane figures (issue 4), run by hand:
#   bench/mesh.sh
# Starts meshgate (release) on loopback, nginx as the app (64-byte answers,
# 127.0.0.1:18080), a sidecar for the app (user-service, --app) and a
# client-side sidecar (orders). Then, with wrk at one connection paced to
# about 1,000 requests/s (a Lua delay of 1 ms between requests):
#   direct      wrk -> nginx
#   two hops    wrk -> orders' outbound -> mTLS -> user-service's inbound -> nginx
# and prints p50/p90/p99 of each, plus each agent's resident memory idle
# and after the load. Needs: nginx wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/meshgate}
[ -x "$BIN" ] || cargo build --release -p meshgate
SECS=${SECS:-20}
. bench/lib.sh
# Agents first (they deregister from the control plane), then the rest.
bench_workdir 0.2


start_app 18080
start_meshgate
user_service_yaml | "$BIN" apply -f - >/dev/null

agent() { # name, extra args...; the ready line goes to $W/NAME.ready
  local svc=$1; shift
  local tok; tok=$("$BIN" token create --service "$svc" 2>/dev/null)
  mkfifo "$W/$svc.out"
  MESHGATE_LOG=warn "$BIN" agent --join "https://$MESH" --token "$tok" --service "$svc" --ca-fingerprint "$FP" \
    --data-dir "$W/$svc" --outbound 127.0.0.1:0 --inbound 127.0.0.1:0 --metrics 127.0.0.1:0 "$@" >"$W/$svc.out" &
  PIDS+=($!); eval "${svc//-/_}_PID=$!"
  while read -r line; do case "$line" in "meshgate agent ready "*) echo "$line" >"$W/$svc.ready"; break;; esac; done <"$W/$svc.out"
  cat "$W/$svc.out" >/dev/null &
}
agent user-service --app 127.0.0.1:18080
agent orders
OUT=$(sed -E 's/.* outbound=([^ ]+).*/\1/' "$W/orders.ready")
rss() { awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Anonymous:/{a=$2} END{printf "%.1f MiB (anonymous %.1f, PSS %.1f)", r/1024, a/1024, p/1024}' "/proc/$1/smaps_rollup"; }
echo "idle RSS: user-service agent $(rss "$user_service_PID"), orders agent $(rss "$orders_PID")"

cat >"$W/paced.lua" <<'LUA'
function delay() return 1 end
LUA
cat >"$W/host.lua" <<'LUA'
wrk.headers["Host"] = "user-service"
function delay() return 1 end
LUA
curl -fsS -o /dev/null -H 'Host: user-service' "http://$OUT/" || { echo "the mesh path does not answer" >&2; exit 1; }
run() { # name url script
  wrk -t1 -c1 -d2s -s "$3" "$2" >/dev/null 2>&1
  local out; out=$(wrk -t1 -c1 -d"${SECS}s" --latency -s "$3" "$2")
  printf '%-9s rps=%-8s p50=%-8s p90=%-8s p99=%s\n' "$1" "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="90%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")"
}
run direct "http://127.0.0.1:18080/" "$W/paced.lua"
run two-hops "http://$OUT/" "$W/host.lua"
echo "RSS after load: user-service agent $(rss "$user_service_PID"), orders agent $(rss "$orders_PID")"
