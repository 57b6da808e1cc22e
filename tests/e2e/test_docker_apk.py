"""Alpine's apk in real ``docker build``s: ``RUN apk update && apk add`` on the session's
private dockerd (tests/docker_daemon.py), whose containers' DNS is cachegate on the
bridge address (tests/docker_builds.py), against the signed fixture repository of
tests/alpine_repo.py at Alpine's default ``https://dl-cdn.alpinelinux.org``.

The base image is an Alpine root filesystem ``docker import``ed: apk.static 2.14.9 (built
by scripts/build-apk.sh), busybox and its applets, ``/etc/apk/{repositories,keys}``, and
Alpine's CA layout holding the stand-in public roots, as a registry's alpine image holds
the real ones (``tests.alpine_repo.alpine_root``).

- FROM the stock image: the first build fails on cachegate's certificate (apk does not
  retry), the next one goes through the tunnel to the stand-in upstream, uncached.
- FROM the image ``cachegate trust image`` made: three builds at once fetch each object
  from the origin once; a ``--no-cache`` rebuild fetches nothing.

Root only: skipped elsewhere, a failure under CI=true."""

from __future__ import annotations

import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from tests import alpine_repo as ar
from tests import docker_builds as db
from tests.clients import need
from tests.origin import Origin

STOCK = "alpine:3.20"
TRUSTED = "alpine:3"  # the same image under a second name, for `cachegate trust image`
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COLD_DELAY = 0.25
DOCKERFILE = f"""\
FROM {{base}}
ARG BUILD=0
RUN apk update && apk add {ar.TOP} && cachegate-hello \\
    && test -f /usr/share/cachegate-data/payload.bin
"""


@pytest.fixture(scope="module")
def apk(docker_daemon):  # type: ignore[no-untyped-def]
    path, why = ar.find_apk()
    need(path, why)
    need(ar.BUSYBOX.exists(), "busybox not installed (Debian package busybox-static)")
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> ar.AlpineRepo:  # type: ignore[no-untyped-def]
    return ar.publish_alpine(tmp_path_factory.mktemp("docker-alpine-tree"))


@pytest.fixture(scope="module")
def origin(repo):  # type: ignore[no-untyped-def]
    server = Origin(repo.root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())


@pytest.fixture(scope="module")
def stand_in(origin, docker_daemon, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from db.stand_in_for(origin, docker_daemon, tmp_path_factory.mktemp("stand-in"))


@pytest.fixture(scope="module")
def images(docker_daemon, apk, repo, stand_in, tmp_path_factory):  # type: ignore[no-untyped-def]
    """``STOCK`` and ``TRUSTED``: the Alpine root trusting the stand-in public roots."""
    work = tmp_path_factory.mktemp("alpine-image")
    root = ar.alpine_root(work / "root", apk, repo, f"https://{ar.HOST}{ar.REPOSITORY}",
                          [stand_in.ca_cert])
    tarball = work / "alpine.tar"
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."],
                   check=True)
    docker_daemon.docker("import", "--change", f"ENV PATH={IMAGE_PATH}",
                         "--change", 'CMD ["/bin/sh"]', str(tarball), STOCK)
    docker_daemon.docker("tag", STOCK, TRUSTED)
    yield STOCK, TRUSTED
    docker_daemon.docker("rmi", "--force", STOCK, TRUSTED, check=False)


@pytest.fixture
def gateway(docker_daemon, origin, stand_in, tmp_path):  # type: ignore[no-untyped-def]
    """A cachegate of this test's own: a stock image's rejection is remembered per
    process, and the trusted builds must start from an empty cache."""
    origin.reset()
    made = db.DockerGateway(tmp_path / "gw", docker_daemon.address, origin.url,
                            stand_in.dns.address).wait_ready()
    yield made
    made.stop()


def context(tmp_path, base: str):  # type: ignore[no-untyped-def]
    directory = tmp_path / f"context-{base.replace(':', '-')}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    return directory


def build(daemon, directory, builder: str, build_arg: str = "0") -> defer.Deferred:  # type: ignore[no-untyped-def]
    return threads.deferToThread(db.build, daemon, directory, builder, build_arg)


def said(done: db.Build, gateway: db.DockerGateway) -> str:
    return (f"{done.builder} build exited {done.returncode}:\n{done.output[-3000:]}\n"
            f"--- cachegate log ---\n{gateway.log_tail()}")


@pytest_twisted.inlineCallbacks
def test_a_stock_alpine_image_fails_once_then_builds_through_the_tunnel(
        docker_daemon, images, gateway, origin, repo, tmp_path):
    stock, _ = images
    directory = context(tmp_path, stock)
    first = yield build(docker_daemon, directory, "buildkit", "1")
    assert first.returncode != 0 and "certificate verify failed" in first.output, \
        said(first, gateway)
    second = yield build(docker_daemon, directory, "buildkit", "2")
    assert second.returncode == 0, said(second, gateway)
    assert "hello from cachegate" in second.output
    assert f"does not trust the cachegate CA for {ar.HOST}" in gateway.log_path.read_text()
    assert [s for s in gateway.served() if s.host == ar.HOST] == []  # tunnelled, not served
    for obj in repo.objects:
        assert origin.count(obj.origin_path) == 1, obj.origin_path


@pytest_twisted.inlineCallbacks
def test_a_trusted_alpine_image_builds_from_the_cache(docker_daemon, images, gateway, origin,
                                                      repo, tmp_path):
    _, trusted = images
    done = gateway.cli("trust", "image", trusted, env=docker_daemon.env())
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        directory = context(tmp_path, trusted)
        origin.behave("*", delay_headers=COLD_DELAY)
        try:
            cold = yield db_all([build(docker_daemon, directory, builder, f"cold{i}")
                                 for i, builder in enumerate(("buildkit", "legacy",
                                                              "buildkit"))])
        finally:
            origin.behave("*")
        for result in cold:
            assert result.returncode == 0, said(result, gateway)
        assert {r.path for r in origin.requests} == {o.origin_path for o in repo.objects}
        assert db.repeated_objects(origin.requests) == {}
        before = len(origin.requests)
        warm = yield build(docker_daemon, directory, "legacy", "warm")
        assert warm.returncode == 0, said(warm, gateway)
        assert origin.requests[before:] == []
        served = [s for s in gateway.served() if s.host == ar.HOST]
        assert len(served) == 4 * len(repo.objects)
        assert {s.label for s in served[-len(repo.objects):]} == {"HIT"}
    finally:
        restored = gateway.cli("trust", "image", "--restore", trusted, env=docker_daemon.env())
        assert restored.returncode == 0, restored.stdout + restored.stderr


@defer.inlineCallbacks
def db_all(deferreds):  # type: ignore[no-untyped-def]
    try:
        results = yield defer.gatherResults(deferreds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()
    return results


