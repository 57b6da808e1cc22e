"""A bounded HTTP/1.1 load generator for loopback: N keep-alive clients for S seconds over a
manifest of objects, every body's sha256 checked.  Standard library only (asyncio), so it
runs as its own process beside the gateway and the fixture origin.

    python -m tests.loadgen --port P --manifest m.json --clients 500 --seconds 60

The manifest is ``{"hot": [[host, path, sha256], ...], "cold": [...], "reval": [...]}``:
``hot`` objects are expected to be hits, each ``cold`` one is asked for once by one client
(a miss) and then joins the hot set, ``reval`` ones are asked with ``Cache-Control:
no-cache`` (a revalidation).  Prints one JSON summary; exit status 0 when no request
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import resource
import sys
import time
from collections import Counter

# A request that takes longer than this counts as failed (the gateway wedged).
REQUEST_TIMEOUT = 30.0


class Work:
    """What the clients ask for: misses first come from ``cold``, in order, once each."""

    def __init__(self, manifest: dict, mix: tuple[float, float]) -> None:
        self.hot = [tuple(x) for x in manifest["hot"]]
        self.cold = [tuple(x) for x in manifest["cold"]]
        self.reval = [tuple(x) for x in manifest["reval"]]
        self.miss_share, self.reval_share = mix
        self.next_cold = 0

    def pick(self, rng: random.Random) -> tuple[str, str, str, str]:
        """(kind, host, path, sha256)."""
        roll = rng.random()
        if roll < self.miss_share and self.next_cold < len(self.cold):
            item = self.cold[self.next_cold]
            self.next_cold += 1
            self.hot.append(item)
            return ("miss", *item)
        if roll < self.miss_share + self.reval_share and self.reval:
            return ("reval", *rng.choice(self.reval))
        return ("hit", *rng.choice(self.hot))


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.failures: Counter = Counter()
        self.labels: Counter = Counter()
        self.kinds: Counter = Counter()
        self.latencies: list[float] = []
        self.bytes = 0
        self.connections = 0
        self.examples: list[str] = []

    def fail(self, why: str, detail: str) -> None:
        self.failures[why] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{why}: {detail}")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
            if size == 0:
                break
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


async def one_client(port: int, work: Work, stats: Stats, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    reader = writer = None
    try:
        while time.monotonic() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                stats.connections += 1
            kind, host, path, sha = work.pick(rng)
            extra = "Cache-Control: no-cache\r\n" if kind == "reval" else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            started = time.monotonic()
            try:
                status, headers, body = await asyncio.wait_for(read_response(reader),
                                                               REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError) as e:
                stats.fail(type(e).__name__, f"{kind} {host}{path}")
                writer.close()
                reader = writer = None
                continue
            stats.latencies.append(time.monotonic() - started)
            stats.requests += 1
            stats.kinds[kind] += 1
            stats.bytes += len(body)
            stats.labels[headers.get("x-cache", "?")] += 1
            if status != 200:
                stats.fail(f"status {status}", f"{kind} {host}{path}")
            elif hashlib.sha256(body).hexdigest() != sha:
                stats.fail("corrupt body", f"{kind} {host}{path} ({len(body)} bytes)")
            if "close" in headers.get("connection", "").lower():
                writer.close()
                reader = writer = None
    except (ConnectionError, OSError) as e:
        stats.fail(type(e).__name__, "connect")
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(port: int, manifest: dict, clients: int, seconds: float,
              mix: tuple[float, float]) -> dict:
    work, stats = Work(manifest, mix), Stats()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(one_client(port, work, stats, deadline, i) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": stats.requests,
        "failed": sum(stats.failures.values()), "failures": dict(stats.failures),
        "examples": stats.examples, "x_cache": dict(stats.labels), "kinds": dict(stats.kinds),
        "connections": stats.connections, "mib": round(stats.bytes / 2**20, 1),
        "req_per_s": round(stats.requests / elapsed, 1),
        "p50_ms": round(percentile(stats.latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(stats.latencies, 99) * 1000, 1),
    }


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--miss-share", type=float, default=0.2)
    parser.add_argument("--reval-share", type=float, default=0.15)
    args = parser.parse_args(argv)
    raise_fd_limit()
    with open(args.manifest) as f:
        manifest = json.load(f)
    summary = asyncio.run(run(args.port, manifest, args.clients, args.seconds,
                              (args.miss_share, args.reval_share)))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
