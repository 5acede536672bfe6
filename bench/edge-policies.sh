#!/usr/bin/env bash
# The cost of edge policies (issue 5), with the shared yardstick, run by hand:
#   bench/edge-policies.sh [YARDSTICK] [ROUNDS]
# YARDSTICK defaults to ../shared/bench/proxy-yardstick.sh; ROUNDS to 3.
# One meshgate (release, --workers ${WORKERS:-1}) forwards to the
# yardstick's upstream 127.0.0.1:18080. Each round runs the yardstick twice
# against it: "plain" (no policies at all) and "policies": a
# RequestAuthentication with an ES256 key (inline JWKS, so the key is
# cached), an AuthorizationPolicy that requires a checked JWT, and a
# RateLimitPolicy taking a token from a per-client bucket on every request
# (set high enough never to refuse). The JWT travels in the URL
# (`?access_token=`), which the yardstick's wrk sends on every request.
# Prints each run and the median of policies/plain requests per second.
# Needs: nginx haproxy wrk, python3 with `cryptography` (pip install cryptography).
set -euo pipefail
cd "$(dirname "$0")/.."
YARDSTICK=${1:-../shared/bench/proxy-yardstick.sh}
ROUNDS=${2:-3}
BIN=target/release/meshgate
[ -x "$BIN" ] || cargo build --release -p meshgate
. bench/lib.sh
bench_workdir
PORT=${GW_PORT:-18090}
HTTP_ADDR=127.0.0.1:$PORT UP_ARGS="--workers ${WORKERS:-1}" start_meshgate
PID=$MESHGATE_PID

# An ES256 key made now: its public JWK and a token signed with it.
python3 - "$W" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
w = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
nums = key.public_key().public_numbers()
jwk = {"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
       "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}
head = b64(json.dumps({"alg": "ES256", "kid": "bench"}).encode())
body = b64(json.dumps({"iss": "https://auth.example.com", "sub": "bench", "exp": int(time.time()) + 86400}).encode())
r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
open(f"{w}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
open(f"{w}/token", "w").write(f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
PY
TOKEN=$(cat "$W/token")

bench_gateway_yaml | "$BIN" apply -f - >/dev/null
{
  printf 'apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules:\n  - issuer: https://auth.example.com\n    jwks: %s\n' "$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$W/jwks.json")"
  printf -- '---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: need-jwt, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: ALLOW\n  rules:\n  - from: [{source: {requestPrincipals: ["*"]}}]\n'
  printf -- '---\napiVersion: meshgate.io/v1\nkind: RateLimitPolicy\nmetadata: {name: per-client}\nspec:\n  targetRefs: [{kind: VirtualService, name: bench}]\n  limits: [{requests: 1000000000, per: second, key: clientIp}]\n'
} >"$W/policies.yaml"

echo "meshgate $(git rev-parse --short HEAD) pid $PID on 127.0.0.1:$PORT, workers ${WORKERS:-1}, $(date -u +%F)"
for round in $(seq 1 "$ROUNDS"); do
  "$BIN" delete -f "$W/policies.yaml" >/dev/null 2>&1 || true
  out=$("$YARDSTICK" --gateway "http://127.0.0.1:$PORT/" --gateway-pid "$PID"); echo "$out" >&2
  plain=$(awk '$1=="gateway"{sub("rps=","",$2); print $2}' <<<"$out")
  "$BIN" apply -f "$W/policies.yaml" >/dev/null
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")
  [ "$code" = 403 ] || { echo "without a token the gateway answered $code, not 403: policies not in force" >&2; exit 1; }
  out=$("$YARDSTICK" --gateway "http://127.0.0.1:$PORT/?access_token=$TOKEN" --gateway-pid "$PID"); echo "$out" >&2
  guarded=$(awk '$1=="gateway"{sub("rps=","",$2); print $2}' <<<"$out")
  echo "round $round: plain $plain rps, policies $guarded rps, kept $(awk -v a="$guarded" -v b="$plain" 'BEGIN{printf "%.2f", a/b}')" | tee -a "$W/rounds"
done
awk '{print $NF}' "$W/rounds" | sort -n | awk '{v[NR]=$1} END{print "median kept: " v[int((NR+1)/2)]}'
