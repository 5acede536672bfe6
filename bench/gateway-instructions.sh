#!/usr/bin/env bash
# User-space instructions per gateway request, counted by valgrind's
# callgrind: exact and free of this machine's noise, unlike requests/s.
#   bench/gateway-instructions.sh [REQUESTS]      (run by hand; needs valgrind nginx curl)
# meshgate (release, --workers 1) runs under callgrind with the benchmarks'
# gateway configuration (100 routes, the last one matches) in front of
# nginx answering 64 bytes; after 100 warm-up requests the counters are
# zeroed, REQUESTS (default 1000) requests go through one keep-alive
# connection, and the script prints instructions per request and the
# functions that execute them (self cost), and calls per request of
# malloc, memcpy and header-map hashing. CALLGRIND_OUT=FILE keeps the profile.
# PROXY=nginx counts the yardstick's nginx proxy the same way instead.
# BIN=path counts another build (no cargo build).
# VG_ARGS=--cache-sim=yes adds simulated cache misses per request.
# CONNS=64 [SECS=20] loads it with wrk over 64 connections instead of one
# curl connection (needs wrk): per-request cost when requests come together.
# PROFILE=profiling counts a build with line tables (for callgrind_annotate
# --auto=yes on a kept profile); the same code as release.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
for t in valgrind callgrind_control nginx curl python3; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y valgrind nginx curl)" >&2; exit 2; }
done
. bench/lib.sh
bench_workdir
APP_PORT=${APP_PORT:-18088}
start_app "$APP_PORT"
if [ "${PROXY:-meshgate}" = nginx ]; then
  # The yardstick's nginx proxy (one worker, upstream keepalive), counted the same way.
  GATEWAY=127.0.0.1:${NGINX_PORT:-18089}
  cat >"$W/px.conf" <<NG
daemon off; master_process off; worker_processes 1; pid $W/px.pid; error_log $W/px.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$APP_PORT; keepalive 128; }
  server { listen $GATEWAY; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
  # shellcheck disable=SC2086 # VG_ARGS is a list of flags
  valgrind --tool=callgrind --quiet ${VG_ARGS:-} --callgrind-out-file="$W/cg.run.%p" nginx -c "$W/px.conf" -p "$W" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://$GATEWAY/" 2>/dev/null && break; sleep 0.2; done
  WHAT="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
else
  if [ -n "${BIN:-}" ]; then
    REAL=$(realpath "$BIN")
  else
    cargo build --profile "${PROFILE:-release}" -p meshgate
    REAL=$PWD/target/${PROFILE:-release}/meshgate
  fi
  # shellcheck disable=SC2086 # VG_ARGS is a list of flags
  callgrind_wrapper ${VG_ARGS:-}
  BIN=$W/vg UP_ARGS="--workers 1" start_meshgate
  BIN=$REAL
  bench_gateway_yaml 100 "$APP_PORT" | "$BIN" apply -f - >/dev/null
  PID=$MESHGATE_PID
  WHAT="meshgate $(git rev-parse --short HEAD)"
fi
urls() { for _ in $(seq 1 "$1"); do printf 'http://%s/ ' "$GATEWAY"; done; }
# shellcheck disable=SC2046 # one URL per word: curl reuses its connection
curl -fsS $(urls 100) >/dev/null
callgrind_control -z "$PID" >/dev/null 2>&1
if [ -n "${CONNS:-}" ]; then
  # Under load: wrk keeps CONNS connections busy for SECS seconds, so the
  # runtime's per-wake-up work is shared by the requests ready together
  # (as in the yardstick); N is what wrk completed.
  N=$(wrk -t1 -c"$CONNS" -d"${SECS:-20}s" "http://$GATEWAY/" | awk '/requests in/ {print $1}')
  WHAT="$WHAT, $CONNS connections"
else
  # shellcheck disable=SC2046
  curl -fsS $(urls "$N") >/dev/null
fi
callgrind_control -d "$PID" >/dev/null 2>&1
echo "$WHAT, $N requests"
# CALLGRIND_OUT=FILE keeps the profile (callgrind_annotate --tree=caller FILE).
[ -n "${CALLGRIND_OUT:-}" ] && cp "$W/cg.run.$PID.1" "$CALLGRIND_OUT"
python3 - "$W/cg.run.$PID.1" "$N" <<'PY'
import collections, re, sys
names, own, calls = {}, collections.Counter(), collections.Counter()
fn, callee, after_call = None, None, False
def name(tok):
    m = re.match(r'\((\d+)\)(?: (.*))?', tok)
    if not m:
        return tok
    i, n = m.groups()
    if n:
        names[i] = n
    return names.get(i, i)
events, totals = [], []
for line in open(sys.argv[1]):
    line = line.rstrip('\n')
    if line.startswith('events:'):
        events = line.split()[1:]
    elif line.startswith('totals:') or line.startswith('summary:'):
        totals = [int(x) for x in line.split()[1:]]
    elif line.startswith('fn='):
        fn = name(line[3:])
    elif line.startswith('cfn='):
        callee = name(line[4:])
    elif line.startswith('calls='):
        calls[callee] += int(line[6:].split()[0])
        after_call = True
    elif line[:1].isdigit() or line[:1] in '+-*':
        parts = line.split()
        if len(parts) >= 2:
            if after_call:
                after_call = False  # the inclusive cost of that call, not this function's own
            else:
                own[fn] += int(parts[1])
n = int(sys.argv[2])
total = sum(own.values())
print(f"user-space instructions per request: {total / n:,.0f}")
for f in ('malloc', 'http::header::map::hash_elem_using'):
    print(f"calls per request: {f}: {calls[f] / n:.1f}")
print(f"calls per request: memcpy: {sum(c for f, c in calls.items() if 'memcpy' in f) / n:.1f}")
# With --cache-sim=yes: simulated first-level and last-level cache misses.
for e, t in zip(events, totals):
    if e != 'Ir':
        print(f"{e} per request: {t / n:,.1f}")
print("top functions (own instructions per request):")
for f, c in own.most_common(25):
    print(f"  {c / n:7,.0f}  {100 * c / total:4.1f}%  {f[:100]}")
PY
