"""Build records with a real Docker daemon (tests/docker_daemon.py): ``cachegate session
run -- docker build`` of a Dockerfile with apt, pip, npm and Maven steps, from an image
made by ``cachegate trust image``; its SBOM; ``session replay`` of it with the origin
stopped; an unlisted package refused at its step.

- The SBOM validates against the CycloneDX 1.6 schema; its components are exactly the
  packages the build installed, with their versions, and the sha256 of the fixture
  bodies; the indexes the clients read are listed apart.
- Replayed with the origin stopped, the same build succeeds; a Dockerfile that adds one
  unlisted package fails at that step with the 403 naming the URL and the session, and
  the origin sees nothing.

Root only: skipped elsewhere, a failure under CI=true."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from twisted.internet import threads

from tests import docker_builds as db
from tests import netns
from tests.clients import need
from tests.docker_daemon import DOCKER
from tests.fixtures import Fixtures, build_fixtures
from tests.origin import serve_tree
from tests.processes import free_port

# What the build of db.CLIENTS installs: (purl, path suffix of the fixture body).
INSTALLED = {
    "pkg:deb/debian/hello-cachegate@1.0?arch=all": "/hello-cachegate_1.0_all.deb",
    "pkg:deb/debian/cachegate-data@1.0?arch=all": "/cachegate-data_1.0_all.deb",
    "pkg:pypi/cachegate-fixture-a@1.0": "/cachegate_fixture_a-1.0-py3-none-any.whl",
    "pkg:pypi/cachegate-fixture-b@1.0": "/cachegate_fixture_b-1.0-py3-none-any.whl",
    "pkg:npm/%40cachegate/fixture@1.0.0": "/@cachegate/fixture/-/fixture-1.0.0.tgz",
    "pkg:npm/cachegate-fixture@1.1.0": "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz",
    "pkg:maven/org.cachegate/fixture@1.0": "/org/cachegate/fixture/1.0/fixture-1.0.jar",
    "pkg:maven/org.cachegate/fixture-dep@1.0":
        "/org/cachegate/fixture-dep/1.0/fixture-dep-1.0.jar",
}
UNLISTED = "https://registry.npmjs.org/cachegate-fixture/-/cachegate-fixture-1.0.0.tgz"


@pytest.fixture(scope="module")
def tree(docker_daemon, tmp_path_factory) -> Fixtures:  # type: ignore[no-untyped-def]
    made = build_fixtures(tmp_path_factory.mktemp("records-tree"),
                          files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    need(made.apt_keyring, "gpg not installed: the fixture apt repository is unsigned")
    return made


@pytest.fixture(scope="module")
def origin(tree):  # type: ignore[no-untyped-def]
    yield from serve_tree(tree.root)


@pytest.fixture(scope="module")
def gateway(docker_daemon, origin, tmp_path_factory):  # type: ignore[no-untyped-def]
    made = db.DockerGateway(tmp_path_factory.mktemp("records-gw"), docker_daemon.address,
                            origin.url, "127.0.0.1:9").wait_ready()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def trusted(docker_daemon, stock_image, gateway) -> str:  # type: ignore[no-untyped-def]
    done = gateway.cli("trust", "image", db.TRUSTED, env=docker_daemon.env())
    assert done.returncode == 0, done.stdout + done.stderr
    yield db.TRUSTED
    gateway.cli("trust", "image", "--restore", db.TRUSTED, env=docker_daemon.env())


def in_session(gateway, daemon, action: list[str], context) -> threads.Deferred:  # type: ignore[no-untyped-def]
    """``cachegate session ACTION… -- docker build --no-cache CONTEXT`` in a thread."""
    argv = ["session", *action, "--clients", daemon.container_cidr, "--", str(DOCKER),
            "build", "--no-cache", "--progress=plain", str(context)]
    return threads.deferToThread(gateway.cli, *argv, env=daemon.env(DOCKER_BUILDKIT="1"))


def said(done, gateway) -> str:  # type: ignore[no-untyped-def]
    return (f"exit {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n"
            f"--- cachegate log ---\n{gateway.log_tail()}")


def body_sha256(tree: Fixtures, suffix: str) -> str:
    return next(o.sha256 for o in tree.objects if o.path.endswith(suffix) and not o.accept)


@pytest.fixture(scope="module")
def recorded(docker_daemon, trusted, gateway, tmp_path_factory):  # type: ignore[no-untyped-def]
    """``cachegate session run --name build -- docker build`` of apt, pip, npm and mvn
    steps: (its context, the SBOM file, the session id)."""
    work = tmp_path_factory.mktemp("records-build")
    context = db.write_context(work / "all", trusted, db.CLIENTS)
    sbom_path = work / "build.cdx.json"
    done = pytest_twisted.blockon(in_session(
        gateway, docker_daemon, ["run", "--name", "build", "--sbom", str(sbom_path)], context))
    assert done.returncode == 0, said(done, gateway)
    session = re.search(r"session (\w+) started", done.stderr).group(1)
    return context, sbom_path, session


@pytest_twisted.ensureDeferred
async def test_a_recorded_docker_build_its_sbom_and_its_hermetic_replay(
        docker_daemon, recorded, trusted, gateway, origin, tree, tmp_path):
    context, sbom_path, session = recorded
    text = sbom_path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    found = {c["purl"]: c for c in sbom["components"]}
    assert set(found) == set(INSTALLED), sorted(found)
    for purl, suffix in INSTALLED.items():
        assert found[purl]["hashes"] == [{"alg": "SHA-256",
                                          "content": body_sha256(tree, suffix)}], purl
        clients = [p["value"] for p in found[purl]["properties"]
                   if p["name"] == "cachegate:client"]
        assert clients and all(c.startswith(docker_daemon.address.rsplit(".", 1)[0])
                               for c in clients)
    indexes = [p["value"] for p in sbom["metadata"]["properties"]
               if p["name"] == "cachegate:index"]
    for index in ("/dists/bookworm/InRelease", "/simple/cachegate-fixture-a/",
                  "registry.npmjs.org/cachegate-fixture ", "/fixture-1.0.jar.sha1 "):
        assert any(index in line for line in indexes), (index, indexes)

    # Replay with the origin stopped: the same build succeeds, nothing reaches it.
    await origin.stop_serving()
    origin.reset()
    try:
        again = await in_session(gateway, docker_daemon, ["replay", "build"], context)
        assert again.returncode == 0, said(again, gateway)
        # One unlisted package: that step fails with the 403 naming it and the session.
        extra = tmp_path / "extra"
        db.write_context(extra, trusted, db.CLIENTS)
        with open(extra / "Dockerfile", "a") as dockerfile:
            dockerfile.write(f"RUN curl -sS --fail-with-body -o /dev/stdout {UNLISTED}\n")
        denied = await in_session(gateway, docker_daemon, ["replay", "build"], extra)
    finally:
        origin.resume()
    assert denied.returncode != 0
    output = denied.stdout + denied.stderr
    assert f"cachegate: {UNLISTED} is not in the record of session {session} (build), " \
           "replayed by session" in output, said(denied, gateway)
    assert origin.requests == []


class OfflineGateway(db.DockerGateway):
    """``cachegate serve`` on the bridge address with ``cache.offline = true``."""

    def __init__(self, workdir, address: str, origin_url: str) -> None:  # type: ignore[no-untyped-def]
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.addresses = [address]
        self.admin_port = free_port()
        self.config = workdir / "cachegate.toml"
        self.config.write_text(db.gateway_toml(self.state_dir, address, origin_url,
                                               "127.0.0.1:9", self.admin_port)
                               + "\n[cache]\noffline = true\n")
        self.log_path = workdir / "gateway.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.ops.cli", "--config", str(self.config), "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=db.ROOT,
            preexec_fn=netns.die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest_twisted.ensureDeferred
async def test_a_bundle_from_gateway_a_builds_on_a_fresh_offline_gateway_b(
        docker_daemon, recorded, gateway, origin, tmp_path):
    """Export the session from A (running: its admin API), import it into B's empty state
    directory (stopped), then build on B with ``offline = true`` and the origin down.  B
    keeps A's CA only because the test image trusts that one."""
    context, _, session = recorded
    bundle = tmp_path / "build.tar"
    done = await threads.deferToThread(gateway.cli, "export", "--session", "build", "-o",
                                       str(bundle))
    assert done.returncode == 0, done.stderr
    gateway.stop()
    b = tmp_path / "b"
    (b / "state").mkdir(parents=True)
    shutil.copytree(gateway.state_dir / "ca", b / "state" / "ca")
    (b / "cachegate.toml").write_text(f'[server]\nstate_dir = "{b / "state"}"\n')
    imported = await threads.deferToThread(
        subprocess.run, [sys.executable, "-m", "gateway.ops.cli", "--config",
                         str(b / "cachegate.toml"), "import", str(bundle), "--json"],
        cwd=db.ROOT, capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert report["imported"] and not report["refused"] and not report["drift"]
    assert report["sessions"] == [session]
    await origin.stop_serving()
    origin.reset()
    offline = OfflineGateway(b, docker_daemon.address, origin.url).wait_ready()
    try:
        built = await threads.deferToThread(db.build, docker_daemon, context, "buildkit", "b")
        assert built.returncode == 0, said_build(built, offline)
        served = offline.served()
        assert served and {s.label for s in served} <= {"HIT", "STALE"}, served
    finally:
        offline.stop()
        origin.resume()
    assert origin.requests == []


def said_build(done, gateway) -> str:  # type: ignore[no-untyped-def]
    return (f"exit {done.returncode}:\n{done.output[-4000:]}\n"
            f"--- cachegate log ---\n{gateway.log_tail()}")


@pytest.fixture(scope="module")
def stock_image(docker_daemon, tree, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    """The base image the trusted one shadows (tests/docker_builds.py); its stand-in
    public CA is a throwaway: nothing here is tunnelled."""
    import time

    from tls.ca import create_ca
    ca = tmp_path_factory.mktemp("records-ca") / "stand-in.crt"
    ca.write_bytes(create_ca(("example.invalid",), "ecdsa", False, time.time()).cert_pem())
    return db.make_stock_image(docker_daemon, ca, tree.apt_keyring,
                               tmp_path_factory.mktemp("records-stock"))
