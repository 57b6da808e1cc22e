"""``scripts/trust-ca.sh`` inside a real Debian bookworm root filesystem (debootstrap),
entered with ``chroot``.  Offline: before it, OpenSSL and Python's certifi reject a
certificate from our CA; after it, both accept it, and a later ``update-ca-certificates``
keeps it.  In network namespaces whose only resolver and route are cachegate: a stock
image fetches apt over http but its curl, pip, npm and mvn reject the gateway's HTTPS;
after the script, with the derived image's ENV and no certificate option, curl, Debian's
pip, pip 24 from its wheel (also with no ENV at all), npm on Debian's node and on
this machine's (Node 20), and Maven on a keytool-trusted JRE all install from the cache.

The rootfs is built once and cached as a tarball under ``/var/cache/cachegate-tests/``
(tests/rootfs.py: rebuilt only when missing or when its recipe changes), with the pinned
pip wheel beside it; each test unpacks a fresh copy.  Needs root (chroot, namespaces), debootstrap, the
Debian mirror and PyPI for the first build (about 130 MB downloaded, three minutes here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.ops.trust import IMAGE_ENV
from tests import fixtures as fx
from tests.clients import need
from tests.netns import NPM_PACKAGE, PIP_PROJECT, expected_files, key_origin_paths
from tests.ops.test_trust_ca_script import SCRIPT, make_ca
from tests.rootfs import build_tarball, fetch_pip_wheel


@pytest.fixture(scope="module")
def tarball() -> Path:
    need(os.geteuid() == 0, "chroot needs root")
    need(shutil.which("debootstrap"), "debootstrap not installed")
    return build_tarball()


@pytest.fixture(scope="module")
def pip_wheel() -> Path:
    return fetch_pip_wheel()


@pytest.fixture
def rootfs(tarball, tmp_path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
    return root


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return make_ca(tmp_path_factory.mktemp("ca"), "pypi.org")


def inside(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def put(root: Path, ca: tuple[Path, Path]) -> None:
    work = root / "tmp/trust"
    work.mkdir(parents=True)
    shutil.copy(SCRIPT, work / "trust-ca.sh")
    shutil.copy(ca[0], work / "ca.crt")
    shutil.copy(ca[1], work / "leaf.crt")


CERTIFI_CHECK = ("import certifi, ssl; c = ssl.create_default_context(cafile=certifi.where());"
                 "print(any(x['subject'] == ((('commonName', 'pypi.org CA'),),) "
                 "for x in c.get_ca_certs()))")


def test_debian_rootfs_trusts_the_ca_after_the_script(rootfs, ca):
    put(rootfs, ca)
    verify = ("openssl", "verify", "-CAfile", "/etc/ssl/certs/ca-certificates.crt",
              "/tmp/trust/leaf.crt")
    assert inside(rootfs, *verify).returncode != 0
    assert inside(rootfs, "python3", "-c", CERTIFI_CHECK).stdout.strip() == "False"
    done = inside(rootfs, "sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt")
    assert done.returncode == 0, done.stderr
    assert inside(rootfs, *verify).returncode == 0
    # OpenSSL's default store (what curl, apt's https and Python's ssl use).
    assert inside(rootfs, "openssl", "verify", "/tmp/trust/leaf.crt").returncode == 0
    assert inside(rootfs, "python3", "-c", CERTIFI_CHECK).stdout.strip() == "True"
    again = inside(rootfs, "sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt")
    assert again.returncode == 0 and again.stdout == done.stdout
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle.count(ca[0].read_text().strip()) == 1


def test_a_later_update_ca_certificates_keeps_it(rootfs, ca):
    put(rootfs, ca)
    assert inside(rootfs, "sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt").returncode == 0
    done = inside(rootfs, "update-ca-certificates", "--fresh")
    assert done.returncode == 0, done.stderr
    assert inside(rootfs, "openssl", "verify", "/tmp/trust/leaf.crt").returncode == 0


def test_rootfs_without_ca_certificates_gets_a_bundle(rootfs, ca):
    """As in Debian's own images, which do not ship ca-certificates."""
    shutil.rmtree(rootfs / "etc/ssl/certs")
    put(rootfs, ca)
    assert inside(rootfs, "sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt").returncode == 0
    assert inside(rootfs, "openssl", "verify", "/tmp/trust/leaf.crt").returncode == 0


# --- in network namespaces whose only resolver and route are cachegate -----------------
#
# Two containers, since a rejection marks (client, name) untrusting for ten minutes: one
# runs the stock image, whose clients reject the gateway and are then tunnelled to the
# stand-in real upstream; the other runs every client after trust-ca.sh with the
# environment the derived image sets (gateway.ops.trust.IMAGE_ENV) and no certificate option.

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=20) as reply:
        sys.stdout.buffer.write(reply.read())
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NPM_OPTIONS = ("--no-audit", "--no-fund", "--no-update-notifier", "--loglevel", "error")
# The rejections each client reports for a certificate it cannot verify.
CERT_REJECTED = re.compile(r"CERTIFICATE_VERIFY_FAILED|SSL certificate problem|"
                           r"SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT|"
                           r"UNABLE_TO_VERIFY_LEAF_SIGNATURE|PKIX path building failed")


@pytest.fixture(scope="module")
def world(tarball, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two namespaces, cachegate on their host side in front of the fixture origin, and
    "the real upstream" for its tunnels: the same origin over TLS under a CA of its own
    (standing in for the public roots) on a host address of its own, which the
    forwarder behind cachegate gives for every catalogue host.  (Not on loopback: cachegate
    never tunnels a container to the host's loopback.)"""
    from twisted.internet import reactor
    from twisted.web import server

    from tests import netns
    from tests.dns_helpers import FakeUpstream
    from tests.fixtures import build_fixtures
    from tests.origin import PROXY_HOSTS, ByHost, Origin, OriginResource
    from tls.ca import create_ca
    from tls.context import SNIContexts
    from tls.leaf import LeafCache

    need(netns.unavailable() is None, f"namespaces: {netns.unavailable()}")
    tmp = tmp_path_factory.mktemp("world")
    tree = build_fixtures(tmp / "tree", files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    origin = Origin(tree.root, reactor)
    origin.listen()
    public_ca = create_ca(tuple(PROXY_HOSTS), "ecdsa", False, time.time())
    (tmp / "public-ca.crt").write_bytes(public_ca.cert_pem())
    with netns.containers(2) as containers:
        # 10.201.N.3 on the first container's host side: routed from no namespace.
        public_ip = containers[0].host_ip.rsplit(".", 1)[0] + ".3"
        subprocess.run(["ip", "addr", "add", f"{public_ip}/32", "dev", containers[0].host_if],
                       check=True)
        public = reactor.listenSSL(
            443, server.Site(ByHost(OriginResource(origin))),
            SNIContexts(LeafCache(public_ca, reactor, "ecdsa"), lambda name: True).options,
            interface=public_ip)
        upstream = FakeUpstream(reactor, {host: [f"{host}. 60 IN A {public_ip}"]
                                          for host in PROXY_HOSTS}).start()
        gateway = netns.HostGateway(tmp / "gw", containers, origin.url, upstream.address)
        try:
            gateway.wait_ready()
            yield World(*containers, gateway, origin, tree, tmp / "public-ca.crt")
        finally:
            gateway.stop()
            pytest_twisted.blockon(defer.gatherResults([
                defer.maybeDeferred(public.stopListening), origin.stop_serving(),
                upstream.stop()]))


@dataclass(frozen=True)
class World:
    untrusting: Any  # netns.Container: the stock image's
    trusting: Any  # the derived image's
    gateway: Any  # netns.HostGateway
    origin: Any  # tests.origin.Origin, also behind the "real upstream"
    tree: fx.Fixtures
    public_ca: Path


class Chroot:
    """The rootfs entered with ``chroot`` inside one namespace, resolving through
    cachegate; each command gets a fresh HOME (no client cache carries over)."""

    def __init__(self, root: Path, container, env: dict[str, str] | None = None) -> None:  # type: ignore[no-untyped-def]
        self.root, self.container, self.env = root, container, env or {}
        (root / "etc/resolv.conf").write_text(f"nameserver {container.host_ip}\n")

    def __call__(self, *argv: str, cwd: str = "/"):  # type: ignore[no-untyped-def]
        from tests.clients import run
        home = "/" + str(Path(tempfile.mkdtemp(prefix="home", dir=self.root / "tmp"))
                         .relative_to(self.root))
        # /proc in the chroot (the JVM finds its libraries through /proc/self/exe),
        # mounted in the mount namespace `ip netns exec` makes: gone with the command.
        mounted = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
        return run(self.container.argv(["sh", "-c", mounted, str(self.root),
                                        "env", f"--chdir={cwd}", *argv]),
                   env={"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", **self.env})

    def fetch(self, url: str):  # type: ignore[no-untyped-def]
        return self("python3", "-c", FETCH, url)

    def npm_project(self, work: str) -> str:
        """``/tmp/WORK/app``, an empty npm project."""
        project = self.root / "tmp" / work / "app"
        project.mkdir(parents=True)
        (project / "package.json").write_text(
            '{"name": "trust-check", "version": "1.0.0", "private": true}\n')
        return f"/tmp/{work}/app"

    def maven_get(self, *options: str) -> list[str]:
        """``mvn dependency:get`` of the fixture artifact from the super POM's Central,
        the plugin from the image's own /usr/share/maven-repo."""
        found = fx.maven_plugin_repo(self.root / "usr/share/maven-repo")
        assert found is not None, "the rootfs has no maven-dependency-plugin"
        (self.root / "tmp/m2").mkdir(exist_ok=True)
        (self.root / "tmp/m2/settings.xml").write_text(
            fx.plugin_repository_settings("file:///usr/share/maven-repo"))
        return ["mvn", "-B", "-q", "-s", "/tmp/m2/settings.xml", *options,
                "-Dmaven.repo.local=/tmp/m2/repository",
                f"{fx.MAVEN_PLUGIN}:{found[1]}:get", f"-Dartifact={fx.MAVEN_ARTIFACT}"]


def said(done) -> str:  # type: ignore[no-untyped-def]
    return f"{done.args[-6:]} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


@pytest_twisted.ensureDeferred
async def test_a_stock_image_never_fails_for_good_but_nothing_is_cached(world, rootfs):
    """The stock image trusts the public roots (here the stand-in CA, put in its stores
    as they hold the real ones), not ours.  apt's plain http is cached; each HTTPS client's
    first connection to a name fails on our certificate, its next ones are tunnelled to
    the real upstream: pip's and npm's own retries succeed in the same run, curl and mvn
    (which do not retry a certificate failure) on the next run."""
    chroot = Chroot(rootfs, world.untrusting)
    shutil.copy(world.public_ca, rootfs / "tmp/public-ca.crt")
    shutil.copy(SCRIPT, rootfs / "tmp/trust-ca.sh")
    roots = await chroot("sh", "/tmp/trust-ca.sh", "/tmp/public-ca.crt")
    assert roots.returncode == 0, said(roots)
    # Node's bundled roots hold the public ones: here NODE_EXTRA_CA_CERTS stands in.
    chroot.env = {"NODE_EXTRA_CA_CERTS": "/tmp/public-ca.crt"}
    plain = await chroot.fetch("http://deb.debian.org/debian/dists/bookworm/InRelease")
    assert plain.returncode == 0, said(plain)

    # pip and npm retry a failed connection on their own: one run each succeeds.
    pip = await chroot("python3", "-m", "pip", "install", "--disable-pip-version-check",
                       "--target", "/tmp/pip/site", PIP_PROJECT)
    assert pip.returncode == 0 and "CERTIFICATE_VERIFY_FAILED" in pip.stderr, said(pip)
    npm = await chroot("npm", "install", *NPM_OPTIONS, NPM_PACKAGE,
                       cwd=chroot.npm_project("npm"))
    assert npm.returncode == 0, said(npm)
    # curl and Maven do not: their first run fails, the next one goes through.
    curl = ("curl", "-sS", "--fail", "-o", "/dev/null",
            "https://deb.debian.org/debian/dists/bookworm/InRelease")
    for client, argv in (("curl", curl), ("mvn", chroot.maven_get())):
        first = await chroot(*argv)
        assert first.returncode != 0 and CERT_REJECTED.search(first.stdout + first.stderr), \
            f"{client}: {said(first)}"
        second = await chroot(*argv)
        assert second.returncode == 0, f"{client}: {said(second)}\n{world.gateway.log_tail()}"

    for client, work in (("pip", "pip"), ("npm", "npm"), ("mvn", "m2")):
        for path, digest in expected_files(client, world.tree, rootfs / "tmp" / work).items():
            assert path.exists() and (not digest or fx.sha256(path.read_bytes()) == digest)
    log = world.gateway.log_path.read_text()
    for host in ("deb.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org",
                 "repo.maven.apache.org"):
        assert f"{world.untrusting.ip} does not trust the cachegate CA for {host}" in log
    # Only apt's http went through the cache: the rest was tunnelled, stored nowhere.
    served = {s.host for s in world.gateway.served() if s.client == world.untrusting.ip}
    assert served == {"deb.debian.org"}


@pytest_twisted.ensureDeferred
async def test_after_the_script_every_client_installs_from_the_cache(world, rootfs,
                                                                     pip_wheel):
    trusting, gateway, origin, tree = world.trusting, world.gateway, world.origin, world.tree
    origin.reset()  # what the stock image's tunnels fetched, if that test ran first
    node, npm = shutil.which("node"), shutil.which("npm")
    need(node and npm, "no Node.js with npm on this machine")
    npm_home = Path(npm).resolve().parents[1]  # type: ignore[arg-type]  # …/npm/bin/npm-cli.js
    put(rootfs, (gateway.ca_cert, gateway.ca_cert))
    bare = Chroot(rootfs, trusting)  # no ENV: as the derived image's RUN step sees it
    done = await bare("sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt")
    assert done.returncode == 0, said(done)
    assert "/etc/ssl/certs/java/cacerts: imported as cachegate" in done.stderr
    assert dict(line.split("=", 1) for line in done.stdout.split()) == dict(IMAGE_ENV)
    shutil.copy(pip_wheel, rootfs / "tmp" / pip_wheel.name)
    # Node and npm as the official node images lay them out (/usr/local), copied from this
    # machine (NodeSource's build here: Node's own bundled roots); no global npmrc.
    shutil.copy(node, rootfs / "usr/local/bin/node")  # type: ignore[arg-type]
    shutil.copytree(npm_home, rootfs / "usr/local/lib/node_modules/npm", symlinks=True)
    image = Chroot(rootfs, trusting, env=dict(IMAGE_ENV))  # the derived image's ENV

    def pip(chroot: Chroot, work: str, *pip_argv: str):  # type: ignore[no-untyped-def]
        return chroot("python3", *pip_argv, "install", "--disable-pip-version-check",
                      "--target", f"/tmp/{work}/site", PIP_PROJECT)

    def npm_install(work: str, *node_and_npm: str):  # type: ignore[no-untyped-def]
        return image(*node_and_npm, "install", *NPM_OPTIONS, NPM_PACKAGE,
                     cwd=image.npm_project(work))

    pip24 = f"/tmp/{pip_wheel.name}/pip"
    runs = {
        "curl": await image("curl", "-sS", "--fail", "-o", "/dev/null",
                            "https://pypi.org/simple/cachegate-fixture-a/"),
        "pip-debian": await pip(image, "pip-debian", "-m", "pip"),
        "pip24": await pip(image, "pip24", pip24),
        "pip24-bare": await pip(bare, "pip24-bare", pip24),  # truststore: the system store
        "npm-debian": await npm_install("npm-debian", "/usr/bin/node", "/usr/bin/npm"),
        "npm-host": await npm_install("npm-host", "/usr/local/bin/node",
                                        "/usr/local/lib/node_modules/npm/bin/npm-cli.js"),
        "m2": await image(*image.maven_get()),
    }
    failed = {work: said(done) for work, done in runs.items() if done.returncode != 0}
    assert not failed, f"{failed}\n{gateway.log_tail()}"
    for client, works in (("pip", ("pip-debian", "pip24", "pip24-bare")),
                          ("npm", ("npm-debian", "npm-host")), ("mvn", ("m2",))):
        for work in works:
            for path, digest in expected_files(client, tree, rootfs / "tmp" / work).items():
                assert path.exists(), path
                assert not digest or fx.sha256(path.read_bytes()) == digest, path
        # Each package crossed from the origin once, however many clients installed it.
        for path in key_origin_paths(client, tree):
            assert origin.count(path) == 1, path
