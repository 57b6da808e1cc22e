#!/usr/bin/env python3
"""Many hosts: where a child's request is answered, same run, loopback.

One fixture origin, one parent (``[cluster] listen``), SeaweedFS (the S3 tier) and fresh
children, each a real ``cachegate serve``.  For each tier a child that has nothing asks
every object once, so every request is answered by that tier:

- child hit: a child that has everything;
- parent hit: a fresh child whose parent has everything (the child stores what it gets);
- S3 hit: a fresh child with no parent, whose S3 store has everything;
- origin: a fresh child with no tier at all;
- dead tiers: a fresh child whose parent and S3 endpoint are both down (breakers open
  after the first request), against the origin child: the cost of a dead tier.

The peer, in the same run: nginx ``proxy_cache`` children in front of an nginx parent (or
of the origin), as many worker processes as cachegate's, asked the same way.  nginx
checks no digest, so its miss does less than ours; its own parent-hit / child-hit ratio
shows what this host allows a storing child.

Small objects (4 KiB, each asked once: wrk with a script that stops after the last one,
16 connections) in requests/s with the child's CPU time per request, and one 256 MiB
object (curl) in MB/s.  The objects are an entry of the user's own (``[upstreams.objects]``,
immutable): a Maven release file would add the ``.sha1`` it asks first to every miss.
Targets (issue 18): a parent hit >= 0.5x a child hit; a dead tier < 1 ms per request once
its breaker is open.

    .venv/bin/python scripts/bench/cluster_bench.py [--objects 2000] [--big-mib 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import parse_workers  # noqa: E402
from scripts.bench.http_bench import (NGINX_CONF, curl_speed, free_port,  # noqa: E402
                                      milliseconds, need_debs, tree_cpu, wait_port)
from tests.fixtures import make_blob  # noqa: E402
from tests.processes import serve, stop_all  # noqa: E402
from tests.s3_server import S3Server  # noqa: E402

HOST = "objects.example"
TOKEN = "bench-token"  # children's and the parent's shared secret
SMALL = 4096
CONNECTIONS = 16
WARM_UP = 8  # objects each child is asked before it is measured (2 workers: both own some)

WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_usec; }} timeval_t;
int gettimeofday(timeval_t *tv, void *tz);
]]
local tv = ffi.new("timeval_t")
local function now()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) / 1e6
end
counter = 0
done = 0
started = nil
request = function()
  if started == nil then started = now() end
  counter = counter + 1
  if counter > {objects} then counter = 1 end
  return wrk.format("GET", string.format("{origin}/bench/s/%d.bin", counter))
end
response = function(status, headers, body)
  if status ~= 200 then io.stderr:write("status " .. status .. "\\n") end
  done = done + 1
  if done == {objects} then
    io.stderr:write(string.format("elapsed %.6f\\n", now() - started))
    io.stderr:flush()
    wrk.thread:stop()
  end
end
"""


def gateway(work: Path, name: str, origin: str, extra: str = "") -> tuple[int, int, subprocess.Popen]:
    home = work / ("gw-" + name.replace(" ", "-"))
    home.mkdir()
    port, admin = free_port(), free_port()
    config = home / "cachegate.toml"
    config.write_text(f'[server]\nstate_dir = "{home}/state"\nlisten = ["127.0.0.1"]\n'
                      f'http_port = {port}\nhttps_port = 0\nadmin = "127.0.0.1:{admin}"\n'
                      f'[dns]\nport = 0\nforwarders = ["127.0.0.1:9"]\n[images]\nlisten = ""\n'
                      f'[upstreams.objects]\nhosts = ["{HOST}"]\norigin = "{origin}/objects"\n'
                      '[[upstreams.objects.rules]]\npath = "^/bench/"\npolicy = "immutable"\n'
                      + extra)
    proc = serve(config, home / "cachegate.log")
    wait_port(port, proc)
    settle(admin)
    # Objects outside the measured set, so that each worker (the owner of a key fetches
    # it) has made its connections and found a dead tier down: the target is a dead
    # tier's cost once its breaker is open.
    for i in range(WARM_UP):
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/bench/warm-{i}.bin", headers={"Host": HOST})).read()
    return port, admin, proc


def nginx(work: Path, name: str, server: str, path: str) -> tuple[int, subprocess.Popen]:
    """The peer: an nginx ``proxy_cache`` (a parent or a child) in front of ``server``
    (host:port), with ``path`` prefixed to every request."""
    home = work / ("nginx-" + name.replace(" ", "-"))
    home.mkdir()
    port = free_port()
    (home / "nginx.conf").write_text(NGINX_CONF.format(dir=home, port=port, server=server,
                                                       path=path, workers=parse_workers("auto")))
    proc = subprocess.Popen(["nginx", "-c", str(home / "nginx.conf")])
    wait_port(port, proc)
    return port, proc


def settle(admin: int) -> None:
    """Until every worker is up and the gateway's CPU use has dropped (imports and start-up
    done): a measurement must not time a start."""
    for _ in range(300):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/stats") as reply:
            workers = json.loads(reply.read()).get("workers") or []
        if all(w["state"] == "up" for w in workers):
            break
        time.sleep(0.1)
    time.sleep(1.0)


def tiers(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/stats") as reply:
        return json.loads(reply.read())["tiers"]


def wrk_once_each(work: Path, port: int, objects: int, connections: int = CONNECTIONS,
                  token: str = "") -> tuple[float, float]:
    """Every small object asked once: (requests/s, mean latency in ms).  The script times
    the requests itself and stops; wrk's own figures would count its whole ``-d``.  With
    ``token``, asked as a child asks its parent (absolute form, the token)."""
    script = work / "once.lua"
    script.write_text(WRK_SCRIPT.format(objects=objects, origin=f"http://{HOST}" if token else ""))
    auth = ["-H", f"Proxy-Authorization: Bearer {token}"] if token else []
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", "-d300s", "-s", str(script),
                            "-H", f"Host: {HOST}", *auth, f"http://127.0.0.1:{port}/"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wrk.stderr is not None
    elapsed = None
    for line in wrk.stderr:
        if line.startswith("status "):
            wrk.kill()
            sys.exit(f"error: a non-200 answer ({line.strip()})")
        if line.startswith("elapsed "):
            elapsed = float(line.split()[1])
            break
    wrk.send_signal(signal.SIGINT)  # it prints its summary and exits
    out, _ = wrk.communicate(timeout=30)
    if elapsed is None:
        sys.exit(f"error: wrk ended early:\n{out}")
    mean = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("Latency"))
    return objects / elapsed, milliseconds(mean)


def open_breaker_cost(rounds: int = 20000) -> float:
    """Microseconds a miss spends passing two parents and an S3 tier whose breakers are
    open (in process, the upstream stubbed): the end-to-end figures above are too noisy
    on a shared 2-core box to show a cost this small."""
    from types import SimpleNamespace

    from twisted.internet import defer, task

    from gateway.cache.breaker import Breaker
    from gateway.cache.rules import Policy, Rule
    from gateway.cache.s3 import S3Tier
    from gateway.cache.tiers import Parent, Tiers
    clock = task.Clock()
    upstream = SimpleNamespace(request=lambda method, url, headers: defer.succeed(
        SimpleNamespace()))
    parents = [Parent(f"http://10.0.0.{i}:3130", None, Breaker(clock.seconds))  # type: ignore[arg-type]
               for i in (1, 2)]
    tiers = Tiers(clock, upstream, parents, "token")  # type: ignore[arg-type]
    s3 = S3Tier(clock, None, "http://10.0.0.9:8333", "b", "p/", "us-east-1", "", 10, 1.0,  # type: ignore[arg-type]
                10.0, lambda url: None)
    s3.client = object()
    tiers.before_upstream.append(s3.lookup)
    for breaker in [p.breaker for p in parents] + [s3.breaker]:
        breaker.failed()
    target = SimpleNamespace(base="repo1.maven.org/x.jar", key="repo1.maven.org/x.jar",
                             host="repo1.maven.org", path="/x.jar", url="http://o/x.jar",
                             rule=Rule("", Policy.IMMUTABLE))
    start = time.perf_counter()
    for _ in range(rounds):
        tiers.request(target, {})
    with_tiers = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds):
        upstream.request("GET", target.url, {})
    bare = time.perf_counter() - start
    assert all(p.breaker.failures == 1 for p in parents), "no request reached a parent"
    return (with_tiers - bare) / rounds * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=256)
    args = parser.parse_args()
    need_debs("wrk", "curl", "nginx")
    work = Path(tempfile.mkdtemp(prefix="cachegate-cluster-bench-"))
    procs: list[subprocess.Popen] = []
    s3 = S3Server(work)
    try:
        return run(work, procs, s3, args)
    finally:
        stop_all(procs)
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, procs: list, s3: S3Server, args) -> int:  # type: ignore[no-untyped-def]
    print("writing objects, starting the origin and SeaweedFS…", file=sys.stderr)
    objects = work / "origin" / "objects" / "bench"
    for i in range(1, args.objects + 1):
        make_blob(objects / "s" / f"{i}.bin", SMALL, seed=f"small-{i}")
    make_blob(objects / "big.bin", args.big_mib * 2**20)
    for i in range(WARM_UP):
        make_blob(objects / f"warm-{i}.bin", SMALL, seed=f"warm-{i}")
    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.origin", "--root",
                                   str(work / "origin"), "--port", str(origin_port)],
                                  cwd=ROOT, stdout=subprocess.DEVNULL))
    wait_port(origin_port, procs[-1])
    s3.start()
    token = work / "token"
    token.write_text(TOKEN + "\n")
    cluster_port = free_port()
    parent = gateway(work, "parent", origin, f'[cluster]\nlisten = "127.0.0.1:{cluster_port}"\n'
                     f'token_file = "{token}"\n')
    procs.append(parent[2])
    with_parent = (f'[cluster]\nparents = ["http://127.0.0.1:{cluster_port}"]\n'
                   f'token_file = "{token}"\n')
    with_s3 = s3.toml(queue=args.objects * 2)

    print("filling the parent and S3 (a first child asks everything once)…", file=sys.stderr)
    filler = gateway(work, "filler", origin, with_parent + with_s3)
    procs.append(filler[2])
    wrk_once_each(work, filler[0], args.objects)
    curl_speed(filler[0], "/bench/big.bin", None, HOST)
    for _ in range(1200):
        state = tiers(filler[1])["s3"]
        if not state["queued"] and not state["uploading"]:
            break
        time.sleep(0.1)
    results: dict[str, dict] = {}

    def measure(name: str, extra: str) -> tuple[int, int, subprocess.Popen]:
        port, admin, proc = gateway(work, name, origin, extra)
        procs.append(proc)
        results[name] = ask_all(work, port, proc.pid, args.objects)
        return port, admin, proc

    port, _, proc = measure("parent hit", with_parent)
    # The same child again: everything stored.
    results["child hit"] = ask_all(work, port, proc.pid, args.objects, big_runs=3)
    # The parent asked as children ask it: what one parent answers for a whole fleet.
    cpu = tree_cpu(parent[2].pid)
    rps, mean = wrk_once_each(work, cluster_port, args.objects, token=TOKEN)
    results["parent asked"] = {"small_rps": rps, "small_mean_ms": mean,
                               "small_cpu_us": (tree_cpu(parent[2].pid) - cpu) / args.objects
                               * 1e6}
    measure("S3 hit", with_s3)
    measure("origin", "")
    dead = (f'[cluster]\nparents = ["http://127.0.0.1:{free_port()}"]\ntoken_file = "{token}"\n'
            f"breaker_seconds = 3600\n"
            f'[store.s3]\nendpoint = "http://127.0.0.1:{free_port()}"\nbucket = "gone"\n'
            f'credentials_file = "{s3.credentials}"\nbreaker_seconds = 3600\n')
    measure("dead tiers", dead)
    # The cost of a dead tier, one connection (a request's own latency, not a queue's),
    # alternating fresh children twice so the box's other load falls on both alike.
    for run in (1, 2):
        for name, extra in (("origin", ""), ("dead tiers", dead)):
            port, _, proc = gateway(work, f"{name} c1 run{run}", origin, extra)
            procs.append(proc)
            rps, mean = wrk_once_each(work, port, args.objects, connections=1)
            results[name].setdefault("c1_mean_ms", []).append(mean)
            results[name].setdefault("c1_rps", []).append(rps)
    print("the peer: nginx children, an nginx parent…", file=sys.stderr)
    report(results, measure_peer(work, procs, origin, args), args)
    return 0


def ask_all(work: Path, port: int, pid: int, objects: int, big_runs: int = 1) -> dict:
    """Every small object once, then the big one (best of ``big_runs``), from one child."""
    cpu = tree_cpu(pid)
    rps, mean = wrk_once_each(work, port, objects)
    return {"small_rps": rps, "small_mean_ms": mean,
            "small_cpu_us": (tree_cpu(pid) - cpu) / objects * 1e6,
            "big_mb_s": max(curl_speed(port, "/bench/big.bin", None, HOST)
                            for _ in range(big_runs))}


def measure_peer(work: Path, procs: list, origin: str,
                 args: argparse.Namespace) -> dict[str, dict]:
    """The same questions of nginx: a child whose parent has everything, that child again,
    and a child in front of the origin."""
    origin_server = origin.removeprefix("http://")
    parent_port, proc = nginx(work, "parent", origin_server, "/objects/")
    procs.append(proc)
    ask_all(work, parent_port, proc.pid, args.objects)  # the parent stores everything
    results: dict[str, dict] = {}
    port, proc = nginx(work, "parent hit", f"127.0.0.1:{parent_port}", "/")
    procs.append(proc)
    results["parent hit"] = ask_all(work, port, proc.pid, args.objects)
    results["child hit"] = ask_all(work, port, proc.pid, args.objects, big_runs=3)
    port, proc = nginx(work, "origin", origin_server, "/objects/")
    procs.append(proc)
    results["origin"] = ask_all(work, port, proc.pid, args.objects)
    return results


def report(results: dict[str, dict], peer: dict[str, dict], args: argparse.Namespace) -> None:
    print(json.dumps({"cachegate": results, "nginx": peer}), file=sys.stderr)
    print(f"\n{args.objects} small objects of {SMALL} B, each asked once per child "
          f"({CONNECTIONS} connections); one {args.big_mib} MiB object:")
    table("cachegate", results, ("child hit", "parent hit", "S3 hit", "origin", "dead tiers"))
    table("nginx", peer, ("child hit", "parent hit", "origin"))
    dead, plain = results["dead tiers"], results["origin"]
    costs = [1000 / d - 1000 / p for d, p in zip(dead["c1_rps"], plain["c1_rps"])]
    print(f"\ndead parent + dead S3, breakers open, one connection: "
          f"{', '.join(f'{c:+.3f}' for c in costs)} ms per request (two runs; origin child "
          f"{', '.join(f'{1000 / r:.3f}' for r in plain['c1_rps'])} ms, dead-tier child "
          f"{', '.join(f'{1000 / r:.3f}' for r in dead['c1_rps'])} ms; target < 1 ms)")
    print(f"open breakers (two parents and S3), in process: {open_breaker_cost():.1f} us "
          "per miss before the upstream request")
    asked = results["parent asked"]
    print(f"the parent asked directly, as children ask it (absolute form, token): "
          f"{asked['small_rps']:.0f} req/s, mean {asked['small_mean_ms']:.2f} ms, "
          f"{asked['small_cpu_us']:.0f} us of its CPU per request")
    for name, figures in (("cachegate", results), ("nginx", peer)):
        parent, child = figures["parent hit"], figures["child hit"]
        print(f"parent hit / child hit, {name}: "
              f"{parent['small_rps'] / child['small_rps']:.2f}x small, "
              f"{parent['big_mb_s'] / child['big_mb_s']:.2f}x big (target >= 0.5x)")


def table(name: str, results: dict[str, dict], rows: tuple[str, ...]) -> None:
    child = results["child hit"]
    print(f"\n{name:<12} {'req/s':>9} {'mean ms':>8} {'x child':>8} {'child CPU':>10} "
          f"{'MB/s':>8} {'x child':>8}")
    for row in rows:
        r = results[row]
        print(f"{row:<12} {r['small_rps']:>9.0f} {r['small_mean_ms']:>8.2f} "
              f"{r['small_rps'] / child['small_rps']:>8.2f} {r['small_cpu_us']:>7.0f} us "
              f"{r['big_mb_s']:>8.0f} {r['big_mb_s'] / child['big_mb_s']:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
