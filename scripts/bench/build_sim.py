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

``--docker``: the same three builds as real ``docker build``s (BuildKit, --no-cache) on a
private dockerd (tests/docker_daemon.py) FROM an image made by ``cachegate trust image``,
one RUN step per client (apt, pip, npm, mvn; tests/docker_builds.py); each RUN step's
time from ``--progress=plain``.  Each round clears the cache first.

Run as root from the repository root:
    .venv/bin/python scripts/bench/build_sim.py [--docker] [--origin-delay-ms 100] [--origin-kib-per-s 2048]
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


# --- --docker: real `docker build`s on a private dockerd ------------------------------

STEP_CLIENTS = (("apt-get", "apt"), ("pip install", "pip"), ("npm install", "npm"),
                ("mvn ", "mvn"))


def client_of(step: str) -> str | None:
    return next((client for marker, client in STEP_CLIENTS if marker in step), None)


@defer.inlineCallbacks
def docker_round(daemon, context: Path, gateway, origin: Origin,  # type: ignore[no-untyped-def]
                 counting: CountingFactory, builds: int, tag: str,
                 logs: Path) -> defer.Deferred:
    """``builds`` BuildKit builds of ``context`` at once: wall time, each RUN step's time
    (the median over the builds, from --progress=plain) and what crossed the wire."""
    from tests import docker_builds as db
    requests, origin_bytes, since = len(origin.requests), counting.sent, gateway.log_size()
    started = time.monotonic()
    done = yield defer.gatherResults(
        [threads.deferToThread(db.build, daemon, context, "buildkit", f"{tag}-{n}")
         for n in range(builds)], consumeErrors=True)
    wall = time.monotonic() - started
    for n, one in enumerate(done):
        (logs / f"{tag}-{n}.log").write_text(one.output)
        if one.returncode != 0:
            raise RuntimeError(f"docker build exited {one.returncode}:\n{one.output[-3000:]}")
    steps: dict[str, list[float]] = {}
    for one in done:
        for step, seconds in one.step_seconds().items():
            if client := client_of(step):
                steps.setdefault(client, []).append(seconds)
    served = gateway.served(since)
    return {"wall": wall, "origin_requests": len(origin.requests) - requests,
            "origin_bytes": counting.sent - origin_bytes, "requests": len(served),
            "served": sum(s.sent for s in served), "wait": sum(s.ms for s in served) / 1000,
            "hits": sum(1 for s in served if s.label in FROM_CACHE),
            **{f"step_{c}": statistics.median(t) for c, t in steps.items()}}


def docker_report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    clients = ("apt", "pip", "npm", "mvn")
    print(f"{args.containers} concurrent `docker build --no-cache` (BuildKit, Debian's dockerd "
          f"20.10) FROM an image made by `cachegate trust image`, one RUN step per client, "
          f"{args.rounds} rounds, medians; origin: {args.origin_delay_ms} ms before each "
          f"answer, {args.origin_kib_per_s or 'unlimited'} KiB/s per response")
    print(f"{'round':6} {'wall s':>7} " + " ".join(f"{c + ' s':>6}" for c in clients)
          + f" {'wait s':>7} {'requests':>9} {'hits':>5} {'origin req':>11} "
          f"{'served bytes':>13} {'origin bytes':>13}")
    med = {name: {key: statistics.median(r[key] for r in rows if key in r) for key in rows[0]}
           for name, rows in results.items()}
    for name, m in med.items():
        print(f"{name:6} {m['wall']:7.2f} "
              + " ".join(f"{m.get('step_' + c, float('nan')):6.2f}" for c in clients)
              + f" {m['wait']:7.2f} {m['requests']:9.0f} {m['hits']:5.0f} "
              f"{m['origin_requests']:11.0f} {m['served']:13.0f} {m['origin_bytes']:13.0f}")
    cold, warm = med["cold"], med["warm"]
    print(f"speed-up warm vs cold: {cold['wall'] / warm['wall']:.2f}x wall; time the builds "
          f"waited on requests: {cold['wait']:.2f} s -> {warm['wait']:.2f} s")
    print(f"load average while measuring: {args.load[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    served = cold["served"] + warm["served"]
    fetched = cold["origin_bytes"] + warm["origin_bytes"]
    print(f"bytes: {served:.0f} served to the {2 * args.containers} builds, {fetched:.0f} "
          f"fetched from the origin: {served - fetched:.0f} saved ({1 - fetched / served:.0%})")


@defer.inlineCallbacks
def docker_bench(reactor, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The session's Docker harness outside pytest: a private dockerd, the stock image
    shadowed by `cachegate trust image`, cachegate on the bridge address; each round
    clears the cache, then cold builds, then warm ones."""
    from tests import docker_builds as db
    from tests import docker_daemon
    work = Path(tempfile.mkdtemp(prefix="cachegate-build-sim-docker-"))
    tree = build_fixtures(work / "tree", files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    origin = Origin(tree.root, reactor)
    counting = listen_counting(origin, reactor)
    daemon = docker_daemon.create()
    stand_in = gateway = None
    try:
        daemon.start()
        stand_in = db.StandIn(origin, daemon, work / "stand-in")
        yield threads.deferToThread(db.make_stock_image, daemon, stand_in.ca_cert,
                                    tree.apt_keyring, work)
        gateway = db.DockerGateway(work / "gateway", daemon.address, origin.url,
                                   stand_in.dns.address).wait_ready()
        done = yield threads.deferToThread(gateway.cli, "trust", "image", db.TRUSTED,
                                           env=daemon.env())
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        context = db.write_context(work / "context", db.TRUSTED, db.CLIENTS)
        if args.origin_delay_ms or args.origin_kib_per_s:
            origin.behave("*", delay_headers=args.origin_delay_ms / 1000,
                          slow_bytes_per_s=args.origin_kib_per_s * 1024 or None)
        results: dict[str, list[dict]] = {"cold": [], "warm": []}
        for number in range(args.rounds):
            gateway.clear_cache()
            for name in ("cold", "warm"):
                results[name].append((yield docker_round(daemon, context, gateway, origin,
                                                         counting, args.containers,
                                                         f"{name}{number}", work)))
        docker_report(results, args)
    finally:
        if gateway is not None:
            gateway.stop()
        if stand_in is not None:
            yield stand_in.stop()
        docker_daemon.destroy(daemon)
        yield origin.stop_serving()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docker", action="store_true",
                        help="real `docker build`s on a private dockerd instead of namespaces")
    parser.add_argument("--containers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="cold+warm pairs (medians)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (fixtures, gateway logs, build output)")
    parser.add_argument("--origin-delay-ms", type=int, default=0,
                        help="the origin waits this long before each answer (a WAN's RTT)")
    parser.add_argument("--origin-kib-per-s", type=int, default=0,
                        help="the origin sends each body at this pace (0: unlimited)")
    args = parser.parse_args()
    if args.docker:
        from tests import docker_daemon
        why = docker_daemon.unavailable()
    else:
        why = netns.unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    args.load = os.getloadavg()
    task.react(docker_bench if args.docker else bench, [args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
