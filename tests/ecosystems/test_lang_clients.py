"""Go, cargo, gem and bundler through cachegate as a build container runs them: network
namespaces whose only resolver and route are cachegate on the real ports (tests/netns.py),
the clients unconfigured (proxy.golang.org, index.crates.io/static.crates.io,
rubygems.org), the CA in the system bundle as a trusted image has it, and the fixture
origin behind every catalogue entry (tests/lang_fixtures.py).

For each client: a cold build in one container fetches every package once from the
origin; a build in a second, fresh container makes no origin request at all, every
response a HIT, and both leave the origin's bytes.

Root only: skipped elsewhere, a failure under CI=true (``tests.clients.need``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests import lang_clients, netns
from tests import lang_fixtures as lf
from tests.clients import need, run
from tests.dns_helpers import FakeUpstream
from tests.fixtures import Fixtures, build_fixtures
from tests.origin import Origin


@pytest.fixture(scope="module")
def namespaces_possible() -> None:
    need(netns.unavailable() is None, f"language clients end to end: {netns.unavailable()}")


@pytest.fixture(scope="module")
def tree(namespaces_possible, tmp_path_factory) -> Fixtures:  # type: ignore[no-untyped-def]
    return build_fixtures(tmp_path_factory.mktemp("lang-tree"),
                          files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")


@pytest.fixture(scope="module")
def origin(tree):  # type: ignore[no-untyped-def]
    server = Origin(tree.root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())


@pytest.fixture(scope="module")
def upstream_dns(namespaces_possible):  # type: ignore[no-untyped-def]
    """cachegate's only forwarder: NXDOMAIN for every name (sum.golang.org included)."""
    server = FakeUpstream(reactor).start()
    yield server
    pytest_twisted.blockon(server.stop())


class World:
    def __init__(self, containers: list[netns.Container], gateway: netns.HostGateway,
                 bundle: Path) -> None:
        self.cold, self.warm = containers
        self.gateway, self.bundle = gateway, bundle


@pytest.fixture
def world(origin, upstream_dns, tmp_path):  # type: ignore[no-untyped-def]
    """Two containers and a cachegate with an empty cache, for one client."""
    work = tmp_path / "world"
    with netns.containers(2) as containers:
        gateway = netns.HostGateway(work, containers, origin.url, upstream_dns.address)
        try:
            gateway.wait_ready()
            bundle = work / "ca-certificates.crt"  # the system bundle plus our CA
            system = netns.SYSTEM_BUNDLE.read_bytes() if netns.SYSTEM_BUNDLE.exists() else b""
            bundle.write_bytes(system + b"\n" + gateway.ca_cert.read_bytes())
            yield World(containers, gateway, bundle)
        finally:
            gateway.stop()


@defer.inlineCallbacks
def build(container: netns.Container, client: str, world: World, tree: Fixtures,
          work: Path):  # type: ignore[no-untyped-def]
    """``client``'s build in ``container``; then each package it stored, checked against
    the origin's bytes."""
    for step in lang_clients.build_steps(client, work):
        argv = container.argv(lang_clients.in_trusting_image(step.argv, world.bundle))
        done = yield run(argv, env=step.env, cwd=step.cwd)
        assert done.returncode == 0, (
            f"{client} in {container.name}: {' '.join(step.argv[:3])}... exited "
            f"{done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"--- cachegate log ---\n{world.gateway.log_tail()}")
    for expected in lang_clients.expected_files(client, tree):
        found = sorted(work.glob(expected.pattern))
        assert len(found) == 1, f"{client} left {found} for {expected.pattern}"
        data = found[0].read_bytes()
        assert hashlib.sha256(data).hexdigest() == expected.obj.sha256, found[0]


@pytest.mark.parametrize("client", lang_clients.CLIENTS)
@pytest_twisted.inlineCallbacks
def test_unconfigured_client_is_served_by_cachegate(client, world, tree, origin, tmp_path):
    need(lang_clients.missing(client) is None, str(lang_clients.missing(client)))
    need(tree.of(lang_clients.ECOSYSTEM[client]), f"no {client} fixtures (gem missing?)")
    before = len(origin.requests)
    yield build(world.cold, client, world, tree, tmp_path / "cold")
    fetched = [r.path for r in origin.requests[before:]]
    assert set(lang_clients.key_origin_paths(client, tree)) <= set(fetched), fetched
    packages = [p for p in fetched if p.endswith((".zip", "/download", ".gem"))]
    assert len(packages) == len(set(packages)), packages  # each package once

    before, since = len(origin.requests), world.gateway.log_size()
    yield build(world.warm, client, world, tree, tmp_path / "warm")
    assert origin.requests[before:] == []
    served = world.gateway.served(since)
    assert {s.client for s in served} == {world.warm.ip}
    assert {s.host for s in served} == lang_clients.DEFAULT_HOSTS[client], served
    assert {s.label for s in served} == {"HIT"}, served
    assert "Traceback" not in world.gateway.log_tail(10**6)


@pytest_twisted.inlineCallbacks
def test_go_checks_sum_golang_org_directly_it_is_not_in_the_catalogue(world, tree, origin,
                                                                       upstream_dns, tmp_path):
    """With GOSUMDB left at its default, go asks sum.golang.org about every module it has
    not seen in go.sum.  That name is forwarded, never redirected: here the forwarder knows
    no such host, so the build fails, as it does on a build host that cannot reach
    sum.golang.org (README: what a real Go build does with sum.golang.org)."""
    need(lang_clients.missing("go") is None, str(lang_clients.missing("go")))
    [step] = lang_clients.build_steps("go", tmp_path / "sumdb")
    env = {k: v for k, v in step.env.items() if k != "GOSUMDB"}
    argv = world.cold.argv(lang_clients.in_trusting_image(step.argv, world.bundle))
    done = yield run(argv, env=env, cwd=step.cwd)
    assert done.returncode != 0
    assert "sum.golang.org" in done.stderr and "verifying" in done.stderr, done.stderr
    assert "sum.golang.org" in upstream_dns.names()
    fetched = {r.path for r in origin.requests}
    assert f"/go/{lf.GO_MODULES[0]}/@v/{lf.GO_VERSION}.mod" in fetched  # from the cache's side
