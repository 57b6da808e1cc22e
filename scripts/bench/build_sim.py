#!/usr/bin/env python3
"""Three simulated ``docker build``s at once through cachegate, cold cache vs warm.

Each build is a network namespace standing in for a build container (tests/netns.py: its
only resolver and only route are cachegate on the host side) running what a Dockerfile's
``RUN`` lines would, with no client configuration beyond a trusted CA: ``apt-get update
&& apt-get install --download-only``, ``pip install``, ``npm install``, ``mvn
dependency:get`` from Central, and curl fetching Alpine's index and packages as apk does.
The three builds run concurrently, each one's steps in order.  ``cachegate serve`` runs
on the real ports in front of the fixture origin (tests/origin.py), which can be made to
answer like a distant upstream (``--origin-delay-ms``, ``--origin-kib-per-s``).

Each round starts cachegate with an empty cache: the cold builds, then three fresh
containers build again (warm).  Printed (medians over rounds): wall time; the time the
builds spent waiting on their requests (the sum of each request's time in cachegate's
access log, so client start-up and CPU contention stay out of it); requests served and
how many were hits; origin requests and bytes (HTTP, headers included); body bytes
served to the builds.  Then the speed-ups and the bytes the cache saved.  Simulated
builds are mostly client start-up (a JVM, node, pip) and the fixture packages are small,
so wall time moves little and with the machine's load; the origin options show what an
upstream across the internet costs.

Run as root from the repository root:
    .venv/bin/python scripts/bench/build_sim.py [--origin-delay-ms 100] [--origin-kib-per-s 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task, threads  # noqa: E402
from twisted.protocols import policies  # noqa: E402

from tests import netns  # noqa: E402
from tests.dns_helpers import FakeUpstream  # noqa: E402
from tests.fixtures import Fixtures, build_fixtures  # noqa: E402
from tests.origin import Origin  # noqa: E402

FROM_CACHE = {"HIT", "REVALIDATED", "STALE"}


class _CountingProtocol(policies.ProtocolWrapper):
    def write(self, data: bytes) -> None:
        self.factory.sent += len(data)
        super().write(data)

    def writeSequence(self, data) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self.factory.sent += sum(len(d) for d in data)
        super().writeSequence(data)


class CountingFactory(policies.WrappingFactory):
    """The origin's site, counting every byte it sends."""

    protocol = _CountingProtocol

    def __init__(self, wrapped) -> None:  # type: ignore[no-untyped-def]
        super().__init__(wrapped)
        self.sent = 0


def listen_counting(origin: Origin, reactor) -> CountingFactory:  # type: ignore[no-untyped-def]
    counting = CountingFactory(origin.site)
    origin._listening = reactor.listenTCP(0, counting, interface="127.0.0.1")
    origin.port = origin._listening.getHost().port
    return counting


def run_step(container: netns.Container, step: netns.Step) -> None:
    done = subprocess.run(container.argv(step.argv), env=step.env, cwd=step.cwd,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{container.name}: {' '.join(step.argv[:3])}... exited "
                           f"{done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@defer.inlineCallbacks
def build(container: netns.Container, tree: Fixtures, trust: netns.Trust,
          work: Path) -> defer.Deferred:
    """One container's Dockerfile: every client's steps, in order."""
    for client in netns.CLIENTS:
        for step in netns.build_steps(client, tree, trust, work / client):
            yield threads.deferToThread(run_step, container, step)


@defer.inlineCallbacks
def round_(containers: list[netns.Container], tree: Fixtures, trust: netns.Trust,
           gateway: netns.HostGateway, origin: Origin, counting: CountingFactory,
           work: Path) -> defer.Deferred:
    """Three builds at once in fresh directories: wall time and what crossed the wire."""
    requests, origin_bytes, since = len(origin.requests), counting.sent, gateway.log_size()
    started = time.monotonic()
    yield defer.gatherResults([build(c, tree, trust, work / c.name) for c in containers],
                              consumeErrors=True)
    wall = time.monotonic() - started
    served = gateway.served(since)
    return {"wall": wall, "origin_requests": len(origin.requests) - requests,
            "origin_bytes": counting.sent - origin_bytes, "requests": len(served),
            "served": sum(s.sent for s in served), "wait": sum(s.ms for s in served) / 1000,
            "hits": sum(1 for s in served if s.label in FROM_CACHE)}


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(f"{args.containers} concurrent builds (apt, pip, npm, mvn, alpine each), "
          f"{args.rounds} rounds, medians; origin: {args.origin_delay_ms} ms before each "
          f"answer, {args.origin_kib_per_s or 'unlimited'} KiB/s per response")
    print(f"{'round':6} {'wall s':>7} {'wait s':>7} {'requests':>9} {'hits':>5} "
          f"{'origin req':>11} {'served bytes':>13} {'origin bytes':>13}")
    med = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
           for name, rows in results.items()}
    for name, m in med.items():
        print(f"{name:6} {m['wall']:7.2f} {m['wait']:7.2f} {m['requests']:9.0f} "
              f"{m['hits']:5.0f} {m['origin_requests']:11.0f} {m['served']:13.0f} "
              f"{m['origin_bytes']:13.0f}")
    cold, warm = med["cold"], med["warm"]
    walls = ", ".join(f"{c['wall']:.1f}/{w['wall']:.1f}"
                      for c, w in zip(results["cold"], results["warm"]))
    print(f"speed-up warm vs cold: {cold['wall'] / warm['wall']:.2f}x wall "
          f"(cold/warm s per round: {walls}); time the builds waited on requests: "
          f"{cold['wait']:.2f} s -> {warm['wait']:.2f} s "
          f"({cold['wait'] / max(warm['wait'], 0.001):.0f}x)")
    print(f"load average while measuring: {args.load[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    served = cold["served"] + warm["served"]
    fetched = cold["origin_bytes"] + warm["origin_bytes"]
    print(f"bytes: {served:.0f} served to the {2 * args.containers} builds, {fetched:.0f} "
          f"fetched from the origin: {served - fetched:.0f} saved "
          f"({1 - fetched / served:.0%}); cold round alone: "
          f"{cold['served'] - cold['origin_bytes']:.0f} saved by sharing one download")


@defer.inlineCallbacks
def bench(reactor, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    work = Path(tempfile.mkdtemp(prefix="cachegate-build-sim-"))
    tree = build_fixtures(work / "tree", files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    origin = Origin(tree.root, reactor)
    counting = listen_counting(origin, reactor)
    if args.origin_delay_ms or args.origin_kib_per_s:
        origin.behave("*", delay_headers=args.origin_delay_ms / 1000,
                      slow_bytes_per_s=args.origin_kib_per_s * 1024 or None)
    dns = FakeUpstream(reactor).start()
    try:
        with netns.containers(args.containers) as containers:
            results = yield rounds(args, containers, tree, origin, counting, dns, work)
        report(results, args)
    finally:
        yield origin.stop_serving()
        yield dns.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


@defer.inlineCallbacks
def rounds(args: argparse.Namespace, containers: list[netns.Container], tree: Fixtures,
           origin: Origin, counting: CountingFactory, dns: FakeUpstream,
           work: Path) -> defer.Deferred:
    """Each round from an empty cache (a new gateway state): cold builds, then warm."""
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    for number in range(args.rounds):
        gateway = netns.HostGateway(work / f"gateway{number}", containers, origin.url,
                                    dns.address)
        try:
            gateway.wait_ready()
            trust = netns.Trust.of(gateway.ca_cert, work / f"trust{number}")
            for name in ("cold", "warm"):
                results[name].append((yield round_(containers, tree, trust, gateway, origin,
                                                   counting, work / f"{name}{number}")))
        finally:
            gateway.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="cold+warm pairs (medians)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (fixtures, gateway logs, build output)")
    parser.add_argument("--origin-delay-ms", type=int, default=0,
                        help="the origin waits this long before each answer (a WAN's RTT)")
    parser.add_argument("--origin-kib-per-s", type=int, default=0,
                        help="the origin sends each body at this pace (0: unlimited)")
    args = parser.parse_args()
    why = netns.unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    args.load = os.getloadavg()
    task.react(bench, [args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
