"""``scripts/trust-ca.sh`` inside a real Debian bookworm root filesystem (debootstrap),
entered with ``chroot``: before it, OpenSSL and Python's certifi reject a certificate
from our CA; after it, both accept it, and Debian's own ``update-ca-certificates`` run
later keeps it.

The rootfs is built once and cached as a tarball under ``/var/cache/cachegate-tests/``
(rebuilt only when missing or when its recipe changes); each test unpacks a fresh copy.
Needs root (chroot), debootstrap and the Debian mirror (scripts/test.sh installs
debootstrap; the first build downloads about 60 MB and takes a few minutes)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from tests.clients import need
from tests.netns import PIP_PROJECT
from tests.test_trust_ca_script import SCRIPT, make_ca

CACHE = Path(os.environ.get("CACHEGATE_TEST_CACHE", "/var/cache/cachegate-tests"))
MIRROR = os.environ.get("CACHEGATE_TEST_MIRROR", "http://deb.debian.org/debian")
# What the image holds: Debian's curl and pip (certifi, which Debian points at the system
# bundle), ca-certificates for update-ca-certificates.  No JDK or Node: too big to cache
# for their one check each (keytool and NODE_EXTRA_CA_CERTS are tested elsewhere).
PACKAGES = ("ca-certificates", "openssl", "python3-certifi", "python3-pip", "curl")
RECIPE = f"bookworm minbase {MIRROR} {' '.join(PACKAGES)}"
TARBALL = CACHE / f"bookworm-{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}.tar"
BUILD_SECONDS = 1200


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
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                        "bookworm", str(work), MIRROR], check=True, capture_output=True,
                       timeout=BUILD_SECONDS)
        partial = TARBALL.with_suffix(".tar.partial")
        subprocess.run(["tar", "-C", str(work), "--exclude=./var/cache/apt/archives/*.deb",
                        "-cf", str(partial), "."], check=True)
        os.replace(partial, TARBALL)
        shutil.rmtree(work, ignore_errors=True)
        return TARBALL


@pytest.fixture(scope="module")
def tarball() -> Path:
    need(os.geteuid() == 0, "chroot needs root")
    need(shutil.which("debootstrap"), "debootstrap not installed")
    return build_tarball()


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


# --- in a network namespace whose only resolver and route are cachegate ----------------

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=20) as reply:
        sys.stdout.buffer.write(reply.read())
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""


@pytest.fixture
def world(tarball, tmp_path):  # type: ignore[no-untyped-def]
    """One namespace, cachegate on its host side in front of the fixture origin (an
    NXDOMAIN-only forwarder behind it), and a rootfs whose resolv.conf names cachegate."""
    from twisted.internet import reactor

    from tests import netns
    from tests.dns_helpers import FakeUpstream
    from tests.fixtures import build_fixtures
    from tests.origin import Origin

    need(netns.unavailable() is None, f"namespaces: {netns.unavailable()}")
    tree = build_fixtures(tmp_path / "tree", files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    origin = Origin(tree.root, reactor)
    origin.listen()
    upstream = FakeUpstream(reactor).start()
    try:
        with netns.containers(1) as (container,):
            gateway = netns.HostGateway(tmp_path / "gw", [container], origin.url,
                                        upstream.address)
            try:
                gateway.wait_ready()
                yield container, gateway, origin
            finally:
                gateway.stop()
    finally:
        pytest_twisted.blockon(origin.stop_serving())
        pytest_twisted.blockon(upstream.stop())


def fetch_in(root: Path, container, url: str):  # type: ignore[no-untyped-def]
    from tests.clients import run
    return run(container.argv(["chroot", str(root), "python3", "-c", FETCH, url]),
               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest_twisted.ensureDeferred
async def test_https_from_the_cache_after_the_script_in_a_chroot(world, rootfs):
    container, gateway, origin = world
    (rootfs / "etc/resolv.conf").write_text(f"nameserver {container.host_ip}\n")
    put(rootfs, (gateway.ca_cert, gateway.ca_cert))

    # apt's plain http works untouched; https does not (another name than the one tried
    # after: a rejected name is tunnelled for this client for a while).
    plain = await fetch_in(rootfs, container,
                           "http://deb.debian.org/debian/dists/bookworm/InRelease")
    assert plain.returncode == 0, plain.stderr
    before = await fetch_in(rootfs, container, "https://registry.npmjs.org/@cachegate%2ffixture")
    assert before.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in before.stderr
    done = inside(rootfs, "sh", "/tmp/trust/trust-ca.sh", "/tmp/trust/ca.crt")
    assert done.returncode == 0, done.stderr
    for _ in range(2):
        after = await fetch_in(rootfs, container, "https://pypi.org/simple/cachegate-fixture-a/")
        assert after.returncode == 0, after.stderr + gateway.log_tail()
        assert "cachegate-fixture-a" in after.stdout
    assert origin.count("/pypi/simple/cachegate-fixture-a/") == 1  # the second from cache
    # Debian's curl and pip, no flags: the same store.
    curl = await in_namespace(rootfs, container, "curl", "-sS", "--fail",
                              "https://pypi.org/simple/cachegate-fixture-a/")
    assert curl.returncode == 0 and "cachegate-fixture-a" in curl.stdout, curl.stderr
    pip = await in_namespace(rootfs, container, "python3", "-m", "pip", "download",
                             "--no-deps", "--disable-pip-version-check", "-d", "/tmp/dl",
                             PIP_PROJECT)
    assert pip.returncode == 0, pip.stdout + pip.stderr + gateway.log_tail()
    assert any((rootfs / "tmp/dl").iterdir())


def in_namespace(root: Path, container, *argv: str):  # type: ignore[no-untyped-def]
    from tests.clients import run
    return run(container.argv(["chroot", str(root), *argv]),
               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"})
