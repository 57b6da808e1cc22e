"""``scripts/trust-ca.sh`` inside a real Debian bookworm root filesystem (debootstrap),
entered with ``chroot``.  Offline: before it, OpenSSL and Python's certifi reject a
certificate from our CA; after it, both accept it, and a later ``update-ca-certificates``
keeps it.  In network namespaces whose only resolver and route are cachegate: a stock
image fetches apt over http but its curl, pip, npm and mvn reject the gateway's HTTPS;
after the script, with the derived image's ENV and no certificate option, curl, Debian's
pip, pip 24 from its wheel (also with no ENV at all), npm on Debian's node and on
this machine's (Node 20), and Maven on a keytool-trusted JRE all install from the cache.

The rootfs is built once and cached as a tarball under ``/var/cache/cachegate-tests/``
(rebuilt only when missing or when its recipe changes), with the pinned pip wheel beside
it; each test unpacks a fresh copy.  Needs root (chroot, namespaces), debootstrap, the
Debian mirror and PyPI for the first build (about 130 MB downloaded, three minutes here)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_twisted

from gateway.trust import IMAGE_ENV
from tests import fixtures as fx
from tests.clients import need
from tests.netns import NPM_PACKAGE, PIP_PROJECT, expected_files, key_origin_paths
from tests.test_trust_ca_script import SCRIPT, make_ca

CACHE = Path(os.environ.get("CACHEGATE_TEST_CACHE", "/var/cache/cachegate-tests"))
MIRROR = os.environ.get("CACHEGATE_TEST_MIRROR", "http://deb.debian.org/debian")
# What the image holds: Debian's curl, pip (certifi, which Debian points at the system
# bundle), node and npm, a JRE (keytool) with Maven and the dependency plugin (Maven
# Central is a fixture, the plugin comes from Debian's /usr/share/maven-repo);
# ca-certificates for update-ca-certificates.  debootstrap makes the base, apt-get inside
# it adds the rest (its dependency resolution handles the JRE's virtual packages).
BASE = ("ca-certificates", "openssl", "python3-certifi", "python3-pip", "curl")
EXTRA = ("nodejs", "npm", "openjdk-17-jre-headless", "maven",
         "libmaven-dependency-plugin-java", "junit4")
RECIPE = f"bookworm minbase {MIRROR} {' '.join(BASE)} + {' '.join(EXTRA)}"
TARBALL = CACHE / f"bookworm-{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}.tar"
# A pip recent enough to trust the system store by itself (truststore, pip >= 24.2), run
# from its wheel as `python3 pip.whl/pip`: its vendored certifi stays inside the zip.
PIP_WHEEL = CACHE / "pip-24.3.1-py3-none-any.whl"
BUILD_SECONDS = 1200
# Left out of the tarball: downloaded .debs, apt's lists, documentation.
TAR_EXCLUDES = ("./var/cache/apt/archives/*.deb", "./var/cache/apt/*.bin",
                "./var/lib/apt/lists/*", "./usr/share/doc/*", "./usr/share/man/*")


def build_tarball() -> Path:
    """The cached rootfs tarball, built under a lock if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if TARBALL.exists():
            return TARBALL
        for old in CACHE.glob("bookworm-*.tar"):  # another recipe's
            old.unlink()
        work = CACHE / "bookworm.partial"
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}",
                        "bookworm", str(work), MIRROR], check=True, capture_output=True,
                       timeout=BUILD_SECONDS)
        _install_extra(work)
        partial = TARBALL.with_suffix(".tar.partial")
        subprocess.run(["tar", "-C", str(work), *(f"--exclude={x}" for x in TAR_EXCLUDES),
                        "-cf", str(partial), "."], check=True)
        os.replace(partial, TARBALL)
        shutil.rmtree(work, ignore_errors=True)
        return TARBALL


def _install_extra(root: Path) -> None:
    """``apt-get install EXTRA`` inside ``root`` (the JRE's scripts need /proc)."""
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--no-install-recommends", *EXTRA]):
            done = subprocess.run(["chroot", str(root), *argv], capture_output=True,
                                  text=True, env=env, timeout=BUILD_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} in {root}: {done.stdout[-2000:]}"
                                   f"{done.stderr[-2000:]}")
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)


def fetch_pip_wheel() -> Path:
    """The pinned pip wheel, downloaded once from PyPI (by this machine's pip)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not PIP_WHEEL.exists():
            version = PIP_WHEEL.name.split("-")[1]
            with tempfile.TemporaryDirectory(dir=CACHE) as partial:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--only-binary=:all:", "--disable-pip-version-check",
                                "-d", partial, f"pip=={version}"], check=True,
                               capture_output=True, timeout=300)
                os.replace(Path(partial) / PIP_WHEEL.name, PIP_WHEEL)
        return PIP_WHEEL


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
# Two containers: one sees the stock image reject the gateway (each rejection marks that
# client and name untrusting, and its retries would be tunnelled to the real upstream,
# unreachable here), the other runs every client after trust-ca.sh with the environment
# the derived image sets (gateway.trust.IMAGE_ENV) and no option about certificates.

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=20) as reply:
        sys.stdout.buffer.write(reply.read())
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Node and npm as the official node images install them (node:20: /usr/local), copied from
# this machine (NodeSource's build here: Node's own bundled roots); no global npmrc.
NPM_OPTIONS = ("--no-audit", "--no-fund", "--no-update-notifier", "--loglevel", "error")
# The rejections each client reports for a certificate it cannot verify.
CERT_REJECTED = re.compile(r"CERTIFICATE_VERIFY_FAILED|SSL certificate problem|"
                           r"SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT|"
                           r"UNABLE_TO_VERIFY_LEAF_SIGNATURE|PKIX path building failed")


@pytest.fixture(scope="module")
def world(tarball, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two namespaces, cachegate on their host side in front of the fixture origin (an
    NXDOMAIN-only forwarder behind it)."""
    from twisted.internet import reactor

    from tests import netns
    from tests.dns_helpers import FakeUpstream
    from tests.fixtures import build_fixtures
    from tests.origin import Origin

    need(netns.unavailable() is None, f"namespaces: {netns.unavailable()}")
    tmp = tmp_path_factory.mktemp("world")
    tree = build_fixtures(tmp / "tree", files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    origin = Origin(tree.root, reactor)
    origin.listen()
    upstream = FakeUpstream(reactor).start()
    try:
        with netns.containers(2) as containers:
            gateway = netns.HostGateway(tmp / "gw", containers, origin.url, upstream.address)
            try:
                gateway.wait_ready()
                yield containers, gateway, origin, tree
            finally:
                gateway.stop()
    finally:
        pytest_twisted.blockon(origin.stop_serving())
        pytest_twisted.blockon(upstream.stop())


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
async def test_a_stock_debian_image_fetches_apt_but_rejects_https(world, rootfs):
    (untrusting, _), gateway, origin, tree = world
    chroot = Chroot(rootfs, untrusting)
    plain = await chroot.fetch("http://deb.debian.org/debian/dists/bookworm/InRelease")
    assert plain.returncode == 0, said(plain)
    # One try each, each to a name of its own: a rejection marks (client, name) untrusting
    # and the next connection is tunnelled to the real upstream, unreachable here.
    rejected = {
        "urllib": await chroot.fetch("https://files.pythonhosted.org/packages/"),
        "curl": await chroot("curl", "-sS", "--fail",
                             "https://deb.debian.org/debian/dists/bookworm/InRelease"),
        # -vv: pip names the certificate failure only at debug level when not retrying.
        "pip": await chroot("python3", "-m", "pip", "download", "-vv", "--retries", "0",
                            "--disable-pip-version-check", "-d", "/tmp/dl", PIP_PROJECT),
        "npm": await chroot("npm", "install", *NPM_OPTIONS, "--fetch-retries", "0",
                            NPM_PACKAGE, cwd=chroot.npm_project("npm-before")),
        "mvn": await chroot(*chroot.maven_get()),
    }
    for client, done in rejected.items():
        assert done.returncode != 0 and CERT_REJECTED.search(done.stdout + done.stderr), \
            f"{client}: {said(done)}"
    assert not any(o.path.endswith((".whl", ".tgz", ".jar")) for o in origin.requests)


@pytest_twisted.ensureDeferred
async def test_after_the_script_every_client_installs_from_the_cache(world, rootfs,
                                                                     pip_wheel):
    (_, trusting), gateway, origin, tree = world
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
