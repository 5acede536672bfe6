#!/usr/bin/env python3
"""Config push latency (issue 3 target: a change reaches the gateway in
under 50 ms, p99). POSTs a VirtualService change to /api/v1/apply and, right
after, sends a request through the gateway that only the new config routes
correctly; the apply call returns only once the data plane serves the new
revision, so (apply round trip) bounds commit + compile + swap.

Usage: bench/config-push.py ADMIN_URL TOKEN GATEWAY_HOST:PORT [N] [ROUTES]
(the gateway must have a Gateway on port 80 for host push.example.com and a
ServiceEntry `push-upstream` pointing at a server that answers 200).
"""
import json, statistics, sys, time, urllib.request

admin, token, gw = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
routes = int(sys.argv[5]) if len(sys.argv) > 5 else 100

def vs(i):
    http = [{"match": [{"uri": {"prefix": f"/r{j}/"}}], "route": [{"destination": {"host": "push-upstream"}}]} for j in range(routes - 1)]
    # The last route answers directly with the iteration number: proof the new config is live.
    http.append({"directResponse": {"status": 200, "body": {"string": str(i)}}})
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "push"},
            "spec": {"hosts": ["push.example.com"], "gateways": ["push-gw"], "http": http}}

def post(body):
    req = urllib.request.Request(f"{admin}/api/v1/apply", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return urllib.request.urlopen(req).read()

post([{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "push-gw"},
       "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["push.example.com"]}]}}])
lat, stale = [], 0
for i in range(n):
    t = time.perf_counter()
    post([vs(i)])
    lat.append((time.perf_counter() - t) * 1000)
    got = urllib.request.urlopen(urllib.request.Request(f"http://{gw}/x", headers={"Host": "push.example.com"})).read().decode()
    if got != str(i):
        stale += 1
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"applies={n} routes={routes} p50={p(0.5):.1f}ms p90={p(0.9):.1f}ms p99={p(0.99):.1f}ms max={lat[-1]:.1f}ms stale_after_apply={stale}")
