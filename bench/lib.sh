# Shared by the benchmarks (sourced).
#
# bench_workdir [PAUSE]: a work dir $W and the list PIDS of what the
# benchmark starts; on exit they are stopped newest first (PAUSE seconds
# apart: agents deregister before the control plane goes) and $W removed.
bench_workdir() {
  W=$(mktemp -d)
  PIDS=()
  STOP_PAUSE=${1:-0}
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
    [ "$STOP_PAUSE" = 0 ] || sleep "$STOP_PAUSE"
  done
  wait 2>/dev/null || true
  rm -rf "$W"
}

# start_meshgate runs `meshgate up`
# ($BIN) on loopback with its data in $W/data (the gateway's --http on
# $HTTP_ADDR, port 0 unless set; more flags in $UP_ARGS), appends its pid to
# PIDS and sets MESHGATE_PID, ADMIN, MESH, GATEWAY (its --http) and FP (the CA root's
# fingerprint), and exports MESHGATE_SERVER and MESHGATE_TOKEN for the CLI.
start_meshgate() {
  mkfifo "$W/up"
  # shellcheck disable=SC2086 # UP_ARGS is a list of flags
  MESHGATE_LOG=warn "$BIN" up --data-dir "$W/data" --admin 127.0.0.1:0 --http "${HTTP_ADDR:-127.0.0.1:0}" \
    --https 127.0.0.1:0 --mesh 127.0.0.1:0 ${UP_ARGS:-} >"$W/up" &
  MESHGATE_PID=$!
  PIDS+=($MESHGATE_PID)
  local line
  while read -r line; do
    case "$line" in
      "mesh CA root: "*) FP=$(awk '{print $4}' <<<"$line");;
      "meshgate ready "*)
        ADMIN=$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line")
        MESH=$(sed -E 's/.* mesh=([^ ]+).*/\1/' <<<"$line")
        GATEWAY=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
        break;;
    esac
  done <"$W/up"
  cat "$W/up" >/dev/null &
  MESHGATE_SERVER=$ADMIN
  MESHGATE_TOKEN=$(cat "$W/data/admin.token")
  export MESHGATE_SERVER MESHGATE_TOKEN
}

# The benchmarks' gateway configuration, on stdout: a Gateway on port 80
# (hosts `*`), the yardstick's upstream (127.0.0.1:${2:-18080}) as `upstream`,
# and one VirtualService of ${1:-1} routes whose last one (`prefix: /`) is
# the one that matches.
bench_gateway_yaml() {
  cat <<YAML
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: upstream}
spec:
  hosts: [upstream]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: ${2:-18080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
YAML
  local i
  for i in $(seq 1 $((${1:-1} - 1))); do
    printf '  - match: [{uri: {prefix: /route-%03d/}}]\n    route: [{destination: {host: upstream}}]\n' "$i"
  done
  printf '  - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: upstream}}]\n'
}

# The mesh benchmarks' service, on stdout: `user-service` (port 80, HTTP),
# its instances the agents that register with `app: user-service`.
user_service_yaml() {
  cat <<'YAML'
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: user-service}
spec:
  hosts: [user-service]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: user-service}}
YAML
}

# The app behind the benchmarks: nginx answering 64 bytes on 127.0.0.1:$1
# (its files in $W), its pid appended to PIDS.
start_app() {
  cat >"$W/app.conf" <<NG
daemon off; worker_processes 1; pid $W/app.pid; error_log $W/app.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; } } }
NG
  nginx -c "$W/app.conf" -p "$W" & PIDS+=($!)
}

# Writes $W/vg, which runs $REAL under valgrind's callgrind with the extra
# valgrind flags given here; each process writes $W/cg.$MG_ROLE.PID (MG_ROLE
# from its environment, `run` unless set).
callgrind_wrapper() {
  cat >"$W/vg" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --quiet $* --callgrind-out-file=$W/cg.\${MG_ROLE:-run}.%p "$REAL" "\$@"
SH
  chmod +x "$W/vg"
}
