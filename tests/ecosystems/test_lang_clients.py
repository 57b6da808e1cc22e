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
from tests.origin import serve_tree


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
    yield from serve_tree(tree.root)


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


def go_with_default_sumdb(world, work: Path):  # type: ignore[no-untyped-def]
    """go mod download with GOSUMDB left at its default, in the cold container."""
    [step] = lang_clients.build_steps("go", work)
    env = {k: v for k, v in step.env.items() if k != "GOSUMDB"}
    argv = world.cold.argv(lang_clients.in_trusting_image(step.argv, world.bundle))
    return run(argv, env=env, cwd=step.cwd)


@pytest_twisted.inlineCallbacks
def test_go_asks_the_checksum_database_through_proxy_golang_org(world, origin, upstream_dns,
                                                                 tmp_path):
    """With GOSUMDB at its default, go asks its proxy whether it serves the checksum
    database; proxy.golang.org says yes, so the lookups go to proxy.golang.org, through
    cachegate, and sum.golang.org is never resolved.  (They fail here: the database's
    signed answers cannot be faked, hence GOSUMDB=off in the tests above.)"""
    need(lang_clients.missing("go") is None, str(lang_clients.missing("go")))
    done = yield go_with_default_sumdb(world, tmp_path / "sumdb")
    assert done.returncode != 0 and "verifying" in done.stderr, done.stderr
    fetched = {r.path for r in origin.requests}
    assert f"/go{lf.GO_SUMDB_SUPPORTED}" in fetched
    lookup = f"/go/sumdb/sum.golang.org/lookup/{lf.GO_MODULES[0]}@{lf.GO_VERSION}"
    assert lookup in fetched, sorted(fetched)
    assert "sum.golang.org" not in upstream_dns.names()


@pytest_twisted.inlineCallbacks
def test_behind_a_proxy_without_the_database_go_resolves_sum_golang_org_itself(
        world, origin, upstream_dns, tmp_path):
    """A GOPROXY that does not serve the checksum database (404 on .../supported): go
    connects to sum.golang.org itself.  That name is not in the catalogue: cachegate
    forwards it, and where it does not resolve (or cannot be reached) the build fails
    (README: what a real Go build does with sum.golang.org)."""
    need(lang_clients.missing("go") is None, str(lang_clients.missing("go")))
    origin.behave(f"/go{lf.GO_SUMDB_SUPPORTED}", status=404)
    try:
        done = yield go_with_default_sumdb(world, tmp_path / "sumdb")
    finally:
        origin.behave(f"/go{lf.GO_SUMDB_SUPPORTED}")
    assert done.returncode != 0
    assert "lookup sum.golang.org" in done.stderr and "verifying" in done.stderr, done.stderr
    assert "sum.golang.org" in upstream_dns.names()
