"""End to end, as a build container sees cachegate: network namespaces whose only resolver
and only route are cachegate on the host side (tests/netns.py), real unconfigured clients
inside them (apt-get, pip, npm, mvn, and curl fetching Alpine paths as apk does), and
``cachegate serve`` on the real ports in front of the fixture origin, which listens on the
host's 127.0.0.1 where the containers cannot reach it.

Root only: skipped elsewhere, a failure under CI=true (``tests.clients.need``)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests import netns
from tests.clients import need, run
from tests.dns_helpers import FakeUpstream
from tests.fixtures import Fixtures, build_fixtures, maven_plugin_repo
from tests.origin import Origin, Recorded, serve_tree

CONTAINERS = 3
SHORT_TTL = 1  # seconds: the outage test's indexes go stale this fast
# The origin's delay before each answer in cold runs: long enough that the three
# containers' requests for an object overlap in flight (they join one download) rather
# than follow one another (a plain hit).
COLD_DELAY = 0.25
CLIENT_BINARIES = {"apt": "apt-get", "pip": None, "npm": "npm", "mvn": "mvn", "alpine": "curl"}
INDEXES = {  # an index each ecosystem's build reads (served stale during an outage)
    "apt": "/dists/bookworm/InRelease", "pip": "/simple/cachegate-fixture-a/",
    "npm": "/@cachegate%2ffixture", "alpine": "/APKINDEX.tar.gz",
}


def need_client(client: str) -> None:
    binary = CLIENT_BINARIES[client]
    if binary:
        need(shutil.which(binary), f"{binary} not installed")
    if client == "mvn":
        need(shutil.which("keytool"), "keytool not installed (a JDK)")
        need(maven_plugin_repo(), "no maven-dependency-plugin in /usr/share/maven-repo "
                                  "(packages libmaven-dependency-plugin-java junit4)")


@pytest.fixture(scope="module")
def namespaces_possible() -> None:
    need(netns.unavailable() is None, f"end-to-end tests: {netns.unavailable()}")


@pytest.fixture(scope="module")
def tree(namespaces_possible, tmp_path_factory) -> Fixtures:  # type: ignore[no-untyped-def]
    """Index pages linking https://files.pythonhosted.org and https://registry.npmjs.org,
    as the real registries do."""
    return build_fixtures(tmp_path_factory.mktemp("e2e-tree"),
                          files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")


@pytest.fixture(scope="module")
def origin(tree):  # type: ignore[no-untyped-def]
    yield from serve_tree(tree.root)


@pytest.fixture(scope="module")
def upstream_dns(namespaces_possible):  # type: ignore[no-untyped-def]
    """cachegate's only forwarder: NXDOMAIN for every name, recording them."""
    server = FakeUpstream(reactor).start()
    yield server
    pytest_twisted.blockon(server.stop())


@dataclass
class World:
    containers: list[netns.Container]
    gateway: netns.HostGateway
    trust: netns.Trust


def make_world(work: Path, origin: Origin, upstream_dns: FakeUpstream,
               short_ttl: int | None = None):  # type: ignore[no-untyped-def]
    """A generator for fixtures: the containers and cachegate on their host side; all
    removed afterwards, however the test ended (a crashed run's are swept first)."""
    with netns.containers(CONTAINERS) as containers:
        gateway = netns.HostGateway(work, containers, origin.url, upstream_dns.address,
                                    short_ttl)
        try:
            gateway.wait_ready()
            yield World(containers, gateway, netns.Trust.of(gateway.ca_cert, work / "trust"))
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def world(origin, upstream_dns, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from make_world(tmp_path_factory.mktemp("e2e-world"), origin, upstream_dns)


@pytest.fixture
def outage_world(origin, upstream_dns, tmp_path):  # type: ignore[no-untyped-def]
    yield from make_world(tmp_path / "world", origin, upstream_dns, SHORT_TTL)


# --- running builds -----------------------------------------------------------------

@defer.inlineCallbacks
def build_in(container: netns.Container, client: str, tree: Fixtures, world: World,
             work: Path):  # type: ignore[no-untyped-def]
    """``client``'s build steps in ``container``, one after another; then its files."""
    for step in netns.build_steps(client, tree, world.trust, work):
        done = yield run(container.argv(step.argv), env=step.env, cwd=step.cwd)
        assert done.returncode == 0, (
            f"{client} in {container.name}: {' '.join(step.argv[:4])}... exited "
            f"{done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"--- cachegate log ---\n{world.gateway.log_tail()}")
    for path, sha256 in netns.expected_files(client, tree, work).items():
        assert path.is_file(), f"{client} in {container.name} left no {path}"
        if sha256:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, path


@defer.inlineCallbacks
def all_of(deferreds: list[defer.Deferred]):  # type: ignore[no-untyped-def]
    """Wait for all; re-raise the first failure itself (not a FirstError wrapper)."""
    try:
        yield defer.gatherResults(deferreds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()


def build_everywhere(clients: tuple[str, ...], world: World, tree: Fixtures,
                     work: Path) -> defer.Deferred:
    """Every client in every container at the same time, each in a fresh directory."""
    return all_of([build_in(c, client, tree, world, work / c.name / client)
                   for c in world.containers for client in clients])


def repeated_objects(requests: list[Recorded]) -> dict[tuple, int]:
    """Objects (a path in one representation) the origin was asked for more than once."""
    counts = Counter((r.method, r.path, r.headers.get("accept"),
                      r.headers.get("accept-encoding")) for r in requests)
    return {key: n for key, n in counts.items() if n > 1}


# --- the tests ----------------------------------------------------------------------

CHECK_ISOLATION = r"""
import json, socket, sys
names, unreachable = sys.argv[1].split(","), sys.argv[2].split(",")
out = {"resolved": {}, "connect": {}}
for name in names:
    try:
        out["resolved"][name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})
    except socket.gaierror as e:
        out["resolved"][name] = str(e)
for target in unreachable:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    out["connect"][target] = s.connect_ex((host, int(port)))
print(json.dumps(out))
"""
REPOSITORY_NAMES = ("deb.debian.org", "dl-cdn.alpinelinux.org", "pypi.org",
                    "files.pythonhosted.org", "registry.npmjs.org", "repo.maven.apache.org")


@pytest_twisted.inlineCallbacks
def test_a_container_resolves_and_reaches_only_cachegate(world, origin, upstream_dns):
    containers = world.containers
    for index, c in enumerate(containers):
        other = containers[(index + 1) % len(containers)]
        routes = yield run(c.argv(["ip", "route", "show"]))
        assert routes.stdout.split() == [c.host_ip, "dev", "eth0", "scope", "link"]
        routes6 = yield run(c.argv(["ip", "-6", "route", "show"]))
        assert routes6.stdout.strip() == ""  # not even link-local
        assert c.resolv_conf.read_text() == f"nameserver {c.host_ip}\n"
        refused = [f"127.0.0.1:{origin.port}", f"{c.host_ip}:{origin.port}"]  # no origin here
        no_route = [f"{other.host_ip}:80", "192.0.2.1:80"]  # another container's side, the world
        done = yield run(c.argv([sys.executable, "-c", CHECK_ISOLATION,
                                 ",".join(REPOSITORY_NAMES + ("example.com",)),
                                 ",".join(refused + no_route)]))
        seen = json.loads(done.stdout)
        for name in REPOSITORY_NAMES:  # A: the address this container reached us at
            assert seen["resolved"][name] == [c.host_ip], (name, seen)
        assert isinstance(seen["resolved"]["example.com"], str)  # forwarded: NXDOMAIN
        assert [seen["connect"][t] for t in refused] == [errno.ECONNREFUSED] * 2, seen
        assert [seen["connect"][t] for t in no_route] == [errno.ENETUNREACH] * 2, seen
    forwarded = set(upstream_dns.names())
    assert "example.com" in forwarded and not forwarded & set(REPOSITORY_NAMES)
    assert origin.requests == []


@pytest.mark.parametrize("client", netns.CLIENTS)
@pytest_twisted.inlineCallbacks
def test_unconfigured_client_is_served_by_cachegate(client, world, tree, origin, tmp_path):
    """Three containers build at once: one origin request per object at most; then three
    fresh containers build again: no origin request at all, every byte from the cache."""
    need_client(client)
    before = len(origin.requests)
    origin.behave("*", delay_headers=COLD_DELAY)
    try:
        yield build_everywhere((client,), world, tree, tmp_path / "cold")
    finally:
        origin.behave("*")
    cold = origin.requests[before:]
    fetched = {r.path for r in cold}
    assert set(netns.key_origin_paths(client, tree)) <= fetched, sorted(fetched)
    assert repeated_objects(cold) == {}

    before, since = len(origin.requests), world.gateway.log_size()
    yield build_everywhere((client,), world, tree, tmp_path / "warm")
    assert origin.requests[before:] == []
    served = world.gateway.served(since)
    assert {s.client for s in served} == {c.ip for c in world.containers}
    assert {s.host for s in served} == netns.DEFAULT_HOSTS[client]
    assert {s.label for s in served} == {"HIT"}, served
    assert "Traceback" not in world.gateway.log_tail(10**6)


@pytest_twisted.inlineCallbacks
def test_builds_succeed_from_the_cache_while_the_origin_is_down(outage_world, tree, origin,
                                                                 tmp_path):
    for client in netns.CLIENTS:
        need_client(client)
    world = outage_world
    first = world.containers[0]  # warms the cache, every client at once
    yield all_of([build_in(first, client, tree, world, tmp_path / "warm-up" / client)
                  for client in netns.CLIENTS])
    yield task.deferLater(reactor, SHORT_TTL + 0.5, lambda: None)  # every index now stale
    yield origin.stop_serving()
    try:
        since = world.gateway.log_size()
        yield build_everywhere(netns.CLIENTS, world, tree, tmp_path / "outage")
    finally:
        origin.resume()
    served = world.gateway.served(since)
    assert {s.label for s in served} <= {"HIT", "STALE"}, \
        [s for s in served if s.label not in ("HIT", "STALE")]
    stale = {s.path for s in served if s.label == "STALE"}
    for client, index in INDEXES.items():
        assert any(path.endswith(index) for path in stale), (client, sorted(stale))
    assert "Traceback" not in world.gateway.log_tail(10**6)
