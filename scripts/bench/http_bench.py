#!/usr/bin/env python3
"""cachegate vs nginx proxy_cache in front of the same origin, same run, loopback.

Both proxies are pinned to the same single core (the load generators to the other), so
the ratios compare one core of each.  With ``--workers 1,2`` each count is run in turn:
cachegate with ``[server] workers = N`` beside nginx with ``worker_processes N``; past one
worker nothing is pinned, so on a 2-core machine the load generator shares the proxies'
cores (the report gives the CPU each side used).  Measures:

- warm-hit throughput on a 1 GiB object (curl, best of 3);
- 16 KiB warm hits: requests/s and p99 latency at 64 connections (wrk, 10 s);
- a 50-client herd on one uncached 50 MB object (origin sending at 25 MB/s): origin
  requests, the spread of the clients' first bytes, and the herd's wall time against
  one cold fetch of the same size.

Run as root (it installs nginx and wrk from Debian when missing):
    .venv/bin/python scripts/bench/http_bench.py [--big-mib 1024] [--seconds 10] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures import make_blob  # noqa: E402
from tests.processes import serve, stop_all  # noqa: E402

HOST = "repo1.maven.org"
PROXY_CORE, CLIENT_CORE = "1", "0"
HERD_CLIENTS = 50
HERD_SIZE = 50 * 1000 * 1000
HERD_RATE = 25 * 1000 * 1000  # the origin's pace: a cold fetch takes ~2 s

NGINX_CONF = """
user root;
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    proxy_cache_path {dir}/nginx-cache levels=1:2 keys_zone=bench:16m max_size=8g
                     inactive=1d use_temp_path=off;
    upstream next {{ server {server}; keepalive 32; }}  # connections reused, as ours are
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://next{path};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 120s;
            proxy_cache_lock_age 120s;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_debs(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"error: install {' '.join(missing)} (Debian packages) or run as root")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: a server exited early ({proc.args})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"error: nothing listens on {port}")


def origin_call(origin: str, action: str, doc: dict | None = None):  # type: ignore[no-untyped-def]
    data = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request(f"{origin}/__origin__/{action}", data=data,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req) as reply:
        return json.loads(reply.read() or b"null")


def origin_count(origin: str, path: str) -> int:
    return sum(1 for r in origin_call(origin, "requests") if r["path"] == path)


def pinned(core: str | None) -> list[str]:
    return ["taskset", "-c", core] if core is not None else []


def curl_speed(port: int, path: str, core: str | None = CLIENT_CORE, host: str = HOST) -> float:
    out = subprocess.run([*pinned(core), "curl", "-s", "-o", "/dev/null",
                          "-w", "%{speed_download}", "-H", f"Host: {host}",
                          f"http://127.0.0.1:{port}{path}"],
                         check=True, capture_output=True, text=True).stdout
    return float(out) / 1e6


def wrk(port: int, path: str, seconds: int,
        core: str | None = CLIENT_CORE) -> tuple[float, float]:
    out = subprocess.run([*pinned(core), "wrk", "-t1", "-c64", f"-d{seconds}s",
                          "--latency", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}{path}"],
                         check=True, capture_output=True, text=True).stdout
    rps = next(float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec"))
    p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
    return rps, milliseconds(p99)


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process below it (workers)."""
    parents, used = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        used[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        more = {c for c, p in parents.items() if p in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(used.get(p, 0.0) for p in tree)


def milliseconds(value: str) -> float:
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(unit):
            return float(value[:-len(unit)]) * factor
    return float(value)


def one_get(port: int, path: str) -> tuple[float, float, int]:
    """(first-byte time, end time, body bytes) of one GET, monotonic seconds."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        first, total, head = None, 0, b""
        while chunk := s.recv(1 << 20):
            if first is None:
                first = time.monotonic()
            total += len(chunk)
            if len(head) < 4096:
                head += chunk[:4096]
        end = time.monotonic()
    return first or end, end, total - (head.find(b"\r\n\r\n") + 4)


def herd(port: int, path: str) -> dict:
    results: list[tuple[float, float, int]] = []
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(one_get(port, path)))
               for _ in range(HERD_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = [r[0] for r in results]
    return {"first_byte_spread_ms": (max(firsts) - min(firsts)) * 1000,
            "wall_s": max(r[1] for r in results) - start,
            "complete": sum(1 for r in results if r[2] == HERD_SIZE)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", default="1", help="worker counts to compare, e.g. 1,2")
    args = parser.parse_args()
    need_debs("nginx", "wrk", "curl")
    work = Path(tempfile.mkdtemp(prefix="cachegate-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        return run(work, procs, args)
    finally:
        stop_all(procs)
        if os.environ.get("KEEP_BENCH"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, procs: list, args) -> int:  # type: ignore[no-untyped-def]
    counts = [int(n) for n in args.workers.split(",")]
    objects = work / "origin" / "maven" / "bench"
    print("writing objects…", file=sys.stderr)
    make_blob(objects / "big.bin", args.big_mib * 2**20)
    make_blob(objects / "small.bin", 16 * 1024)
    for n in counts:
        for name in ("cold-cachegate", "cold-nginx", "herd-cachegate", "herd-nginx"):
            make_blob(objects / f"{name}-{n}.bin", HERD_SIZE)
    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.origin", "--root",
                                   str(work / "origin"), "--port", str(origin_port)],
                                  cwd=ROOT, stdout=subprocess.DEVNULL))
    wait_port(origin_port, procs[-1])
    for n in counts:
        origin_call(origin, "behave", {"path": "/maven/bench/*"})  # full speed again
        results = measure(work / f"w{n}", procs, origin, n, args)
        print(json.dumps({"workers": n, **results}), file=sys.stderr)
        print(f"\n{n} worker(s):")
        report(results)
    return 0


def measure(work: Path, procs: list, origin: str, workers: int,  # type: ignore[no-untyped-def]
            args) -> dict[str, dict]:
    """One worker count: cachegate and nginx side by side, then both stopped."""
    work.mkdir()
    proxy_core = PROXY_CORE if workers == 1 else None
    client_core = CLIENT_CORE if workers == 1 else None
    gw_port, nginx_port = free_port(), free_port()
    config = work / "cachegate.toml"
    config.write_text(f'[server]\nstate_dir = "{work}/state"\nlisten = ["127.0.0.1"]\n'
                      f'http_port = {gw_port}\nhttps_port = 0\nadmin = "127.0.0.1:{free_port()}"\n'
                      f"workers = {workers}\n[dns]\nport = 0\n"
                      f'forwarders = ["127.0.0.1:9"]\n[images]\nlisten = ""\n[upstreams.maven]\n'
                      f'origin = "{origin}/maven"\n'
                      '[[upstreams.maven.rules]]\npath = "^/bench/"\npolicy = "immutable"\n')
    mine = [serve(config, work / "cachegate.log", proxy_core)]
    wait_port(gw_port, mine[0])
    time.sleep(2 if workers > 1 else 0)  # the supervisor accepts before its workers run
    (work / "nginx.conf").write_text(NGINX_CONF.format(
        dir=work, port=nginx_port, server=origin.removeprefix("http://"), path="/maven/",
        workers=workers))
    mine.append(subprocess.Popen([*pinned(proxy_core), "nginx", "-c", str(work / "nginx.conf")]))
    wait_port(nginx_port, mine[1])
    procs.extend(mine)
    proxies = {"cachegate": gw_port, "nginx": nginx_port}
    pids = {"cachegate": mine[0].pid, "nginx": mine[1].pid}
    results: dict[str, dict] = {name: {} for name in proxies}
    for name, port in proxies.items():
        curl_speed(port, "/bench/big.bin", client_core)  # warm
        results[name]["hit_mb_s"] = max(curl_speed(port, "/bench/big.bin", client_core)
                                        for _ in range(3))
        curl_speed(port, "/bench/small.bin", client_core)
        before = tree_cpu(pids[name])
        results[name]["small_rps"], results[name]["small_p99_ms"] = \
            wrk(port, "/bench/small.bin", args.seconds, client_core)
        cpu = tree_cpu(pids[name]) - before
        results[name]["small_cpu"] = cpu / args.seconds  # cores busy during the run
        results[name]["small_per_cpu_s"] = results[name]["small_rps"] * args.seconds / cpu
    origin_call(origin, "behave", {"path": "/maven/bench/*", "slow_bytes_per_s": HERD_RATE})
    for name, port in proxies.items():
        start = time.monotonic()
        one_get(port, f"/bench/cold-{name}-{workers}.bin")  # one client alone, uncached
        results[name]["cold_s"] = time.monotonic() - start
        results[name].update(herd(port, f"/bench/herd-{name}-{workers}.bin"))
        results[name]["herd_origin_requests"] = origin_count(
            origin, f"/maven/bench/herd-{name}-{workers}.bin")
    stop_all(mine)
    for proc in mine:
        procs.remove(proc)
    return results


def report(results: dict[str, dict]) -> None:
    g, n = results["cachegate"], results["nginx"]
    rows = [
        ("warm hit, 1 GiB object (MB/s)", g["hit_mb_s"], n["hit_mb_s"], "{:.0f}"),
        ("16 KiB hits, 64 connections (req/s)", g["small_rps"], n["small_rps"], "{:.0f}"),
        ("16 KiB hits p99 (ms)", g["small_p99_ms"], n["small_p99_ms"], "{:.2f}"),
        ("16 KiB hits: cores busy", g["small_cpu"], n["small_cpu"], "{:.2f}"),
        ("16 KiB hits per CPU-second", g["small_per_cpu_s"], n["small_per_cpu_s"], "{:.0f}"),
        ("herd: origin requests", g["herd_origin_requests"], n["herd_origin_requests"], "{}"),
        ("herd: first-byte spread (ms)", g["first_byte_spread_ms"], n["first_byte_spread_ms"],
         "{:.0f}"),
        ("herd: wall time / one cold fetch", g["wall_s"] / g["cold_s"], n["wall_s"] / n["cold_s"],
         "{:.2f}"),
        ("herd: complete bodies", g["complete"], n["complete"], "{}"),
    ]
    print("| measure | cachegate | nginx | ratio |\n|---|---|---|---|")
    for label, a, b, fmt in rows:
        ratio = f"{a / b:.2f}" if isinstance(a, float) and b else ""
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
