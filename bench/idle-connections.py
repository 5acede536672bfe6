#!/usr/bin/env python3
"""Gateway memory at N idle keep-alive client connections (issue 3 target:
10,000 connections under 60 MB). Each connection sends one request through
the gateway, reads the answer, and then stays open, idle.

Usage: bench/idle-connections.py GATEWAY_HOST:PORT GATEWAY_PID [N] [HOST_HEADER]
Needs `ulimit -n` above N (the script raises its own soft limit).
"""
import asyncio, resource, sys, time

addr, pid = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
host_header = sys.argv[4] if len(sys.argv) > 4 else "bench.example.com"
host, port = addr.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))

def rss_mib(p):
    with open(f"/proc/{p}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

async def one(conns):
    r, w = await asyncio.open_connection(host, int(port))
    w.write(f"GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    conns.append((r, w))

async def main():
    before = rss_mib(pid)
    conns = []
    sem = asyncio.Semaphore(200)
    async def guarded():
        async with sem:
            await one(conns)
    await asyncio.gather(*(guarded() for _ in range(n)))
    time.sleep(2)
    after = rss_mib(pid)
    print(f"connections={len(conns)} rss_before={before:.1f}MiB rss_idle={after:.1f}MiB per_conn={(after-before)*1024/len(conns):.1f}KiB")
    for _, w in conns:
        w.close()

asyncio.run(main())
