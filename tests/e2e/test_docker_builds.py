"""End to end with a real Docker daemon: ``docker build`` of Dockerfiles with no proxy,
index or registry settings, on the session's private dockerd (tests/docker_daemon.py)
whose containers' DNS is ``cachegate serve`` on the bridge address (53/80/443), every
catalogue entry's origin the fixture origin (tests/docker_builds.py).  Both builders:
the legacy one (DOCKER_BUILDKIT=0) and BuildKit (Debian's /usr/bin/docker 20.10).

- FROM the stock image: apt is cached; the HTTPS clients behave as the README's "Will my
  Dockerfile work unchanged?" matrix says (pip and npm complete uncached through the
  tunnel in one run; curl and Maven fail once on the certificate, then go through).
- FROM an image made by ``cachegate trust image`` against the daemon: apt, pip, npm and
  mvn are served from the cache; three builds at once make at most one origin request per
  object; a second ``--no-cache`` build makes none; with the origin stopped it still
  builds.

Root only: skipped elsewhere, a failure under CI=true."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests import docker_builds as db
from tests.clients import need
from tests.fixtures import Fixtures, build_fixtures
from tests.origin import Origin, serve_tree

BUILDERS = ("legacy", "buildkit")
# The origin's delay before each answer in the concurrent cold builds: long enough that
# the three builds' requests for an object overlap (they join one download).
COLD_DELAY = 0.25
CERT_REJECTED = ("SSL certificate problem", "PKIX path building failed")


@pytest.fixture(scope="module")
def tree(docker_daemon, tmp_path_factory) -> Fixtures:  # type: ignore[no-untyped-def]
    made = build_fixtures(tmp_path_factory.mktemp("docker-tree"),
                          files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    need(made.apt_keyring, "gpg not installed: the fixture apt repository is unsigned")
    return made


@pytest.fixture(scope="module")
def origin(tree):  # type: ignore[no-untyped-def]
    yield from serve_tree(tree.root)


@pytest.fixture(scope="module")
def stand_in(origin, docker_daemon, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from db.stand_in_for(origin, docker_daemon, tmp_path_factory.mktemp("stand-in"))


@pytest.fixture(scope="module")
def stock(docker_daemon, stand_in, tree, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    return db.make_stock_image(docker_daemon, stand_in.ca_cert, tree.apt_keyring,
                               tmp_path_factory.mktemp("stock"))


@pytest.fixture(scope="module")
def gateways(docker_daemon, origin, stand_in, tmp_path_factory):  # type: ignore[no-untyped-def]
    made = db.Gateways(docker_daemon, origin, stand_in.dns.address,
                    tmp_path_factory.mktemp("gateways"))
    yield made
    made.stop()


@pytest.fixture(scope="module")
def trusted(docker_daemon, stock, gateways) -> str:  # type: ignore[no-untyped-def]
    """``TRUSTED`` shadowed by ``cachegate trust image`` run against the daemon."""
    gateway = gateways.get("trusted")
    done = gateway.cli("trust", "image", db.TRUSTED, env=docker_daemon.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{db.TRUSTED}: now trusts the cachegate CA" in done.stdout
    yield db.TRUSTED
    done = gateway.cli("trust", "image", "--restore", db.TRUSTED, env=docker_daemon.env())
    assert done.returncode == 0, done.stdout + done.stderr


def build(daemon, context, builder: str, build_arg: str = "0") -> defer.Deferred:  # type: ignore[no-untyped-def]
    return threads.deferToThread(db.build, daemon, context, builder, build_arg)


def said(done: db.Build, gateway: db.DockerGateway) -> str:
    return (f"{done.builder} build exited {done.returncode}:\n{done.output[-4000:]}\n"
            f"--- cachegate log ---\n{gateway.log_tail()}")


def origin_paths(origin: Origin, since: int, prefix: str = "/") -> list[str]:
    return [r.path for r in origin.requests[since:] if r.path.startswith(prefix)]


# --- FROM the stock image -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_stock_image_apt_is_cached_and_https_clients_follow_the_matrix(
        docker_daemon, stock, gateways, origin, tree, tmp_path):
    gateway = gateways.get("stock")
    gateway.clear_cache()
    context = db.write_context(tmp_path / "apt-pip-npm", stock, ("apt", "pip", "npm"))
    before = len(origin.requests)
    first = await build(docker_daemon, context, "buildkit")
    assert first.returncode == 0, said(first, gateway)
    # pip and npm: rejected our certificate, their own retries went through the tunnel.
    log = gateway.log_path.read_text()
    for host in ("pypi.org", "registry.npmjs.org"):
        assert f"does not trust the cachegate CA for {host}" in log, host
    apt_cold = origin_paths(origin, before, "/debian/")
    for suffix in db.KEY_OBJECTS["apt"]:
        assert any(p.endswith(suffix) for p in apt_cold), (suffix, apt_cold)

    before, since = len(origin.requests), gateway.log_size()
    again = await build(docker_daemon, context, "legacy")
    assert again.returncode == 0, said(again, gateway)
    assert origin_paths(origin, before, "/debian/") == []  # apt: all from the cache
    served = gateway.served(since)
    assert {s.host for s in served} == {"deb.debian.org"}, served  # the rest tunnelled
    assert {s.label for s in served} == {"HIT"}, served

    # curl and Maven do not retry a certificate failure: the first build fails at curl,
    # the next one at mvn (curl now tunnelled), the third goes through.
    context = db.write_context(tmp_path / "curl-mvn", stock, ("curl", "mvn"))
    runs = [await build(docker_daemon, context, "buildkit") for _ in range(3)]
    assert runs[0].returncode != 0 and CERT_REJECTED[0] in runs[0].output, said(runs[0], gateway)
    assert runs[1].returncode != 0 and CERT_REJECTED[1] in runs[1].output, said(runs[1], gateway)
    assert runs[2].returncode == 0, said(runs[2], gateway)
    assert "Traceback" not in gateway.log_path.read_text()

    # `cachegate doctor` names the build containers that rejected the CA, per name.
    doctor = await threads.deferToThread(gateway.cli, "doctor", env=docker_daemon.env())
    clients = next(line for line in doctor.stdout.splitlines()
                   if "build clients trust the CA" in line)
    assert clients.startswith("✗"), doctor.stdout
    for host in ("pypi.org", "registry.npmjs.org", "deb.debian.org", "repo.maven.apache.org"):
        assert re.search(rf"client {re.escape(docker_daemon.address.rsplit('.', 1)[0])}\.\d+ "
                         rf"does not trust the CA for {re.escape(host)} ", clients), clients


# --- FROM an image made by `cachegate trust image` -----------------------------------------

@pytest.mark.parametrize("builder", BUILDERS)
@pytest_twisted.ensureDeferred
async def test_trusted_image_every_client_is_served_from_the_cache(
        builder, docker_daemon, trusted, gateways, origin, tree, tmp_path):
    """Three builds at once from an empty cache: each object fetched once; then a
    ``--no-cache`` rebuild: no origin request, every response a hit."""
    gateway = gateways.get("trusted")
    gateway.clear_cache()
    context = db.write_context(tmp_path / "all", trusted, db.CLIENTS)
    before = len(origin.requests)
    origin.behave("*", delay_headers=COLD_DELAY)
    try:
        cold = await defer.gatherResults([build(docker_daemon, context, builder, str(n))
                                          for n in range(3)], consumeErrors=True)
    finally:
        origin.behave("*")
    for done in cold:
        assert done.returncode == 0, said(done, gateway)
    fetched = origin_paths(origin, before)
    for client in db.CLIENTS:
        for suffix in db.KEY_OBJECTS[client]:
            assert any(p.endswith(suffix) for p in fetched), (client, suffix, fetched)
    assert db.repeated_objects(origin.requests[before:]) == {}

    before, since = len(origin.requests), gateway.log_size()
    warm = await build(docker_daemon, context, builder, "warm")
    assert warm.returncode == 0, said(warm, gateway)
    assert origin.requests[before:] == []
    served = gateway.served(since)
    assert {s.host for s in served} == set().union(*(db.HOSTS[c] for c in db.CLIENTS))
    assert {s.label for s in served} == {"HIT"}, served
    assert "does not trust the cachegate CA" not in gateway.log_path.read_text()
    assert "Traceback" not in gateway.log_path.read_text()


@pytest_twisted.ensureDeferred
async def test_trusted_image_builds_with_the_origin_stopped(docker_daemon, trusted, gateways,
                                                             origin, tmp_path):
    gateway = gateways.get("trusted")
    context = db.write_context(tmp_path / "all", trusted, db.CLIENTS)
    warm = await build(docker_daemon, context, "buildkit", "warm-up")
    assert warm.returncode == 0, said(warm, gateway)
    await origin.stop_serving()
    try:
        down = await build(docker_daemon, context, "legacy", "outage")
    finally:
        origin.resume()
    assert down.returncode == 0, said(down, gateway)
