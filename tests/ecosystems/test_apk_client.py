"""Alpine's own ``apk`` through cachegate: apk.static 2.14.9, built from the vendored
apk-tools by scripts/build-apk.sh, against the signed fixture repository of
tests/alpine_repo.py, without ``--allow-untrusted``.

Each "image" is an Alpine root filesystem as far as apk is concerned
(``tests.alpine_repo.alpine_root``): ``/sbin/apk``, ``/etc/apk/{repositories,keys}``, an
installed-database, Alpine's CA layout (``/etc/ssl/certs/ca-certificates.crt``,
``/etc/ssl/cert.pem`` a link to it) and busybox.  apk runs in it with ``chroot`` inside a network namespace whose only resolver
and route are cachegate (tests/netns.py), so every path it reads is the image's, as in a
``RUN apk add`` step.

Where apk looks for CAs (apk-tools libfetch/common.c ``fetch_ssl_setup_peer_verification``):
``/etc/apk/ca.pem`` *alone* when that file exists (``CA_CERT_FILE``, with
``/etc/apk/crl.pem``), else OpenSSL's default paths: ``OPENSSLDIR/cert.pem`` and
``OPENSSLDIR/certs``.  Alpine's OpenSSL has ``OPENSSLDIR=/etc/ssl``; this apk.static is
linked against Debian's ``libssl.a`` whose ``OPENSSLDIR`` is ``/usr/lib/ssl``, so each
image links ``/usr/lib/ssl`` to ``/etc/ssl``: the binary then reads exactly the files
Alpine's apk reads.

Root only (namespaces, chroot): skipped elsewhere, a failure under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from gateway.cache.rules import Ecosystem
from tests import alpine_repo as ar
from tests import netns
from tests.clients import need, run
from tests.dns_helpers import FakeUpstream
from tests.origin import PROXY_HOSTS, ByHost, Origin, OriginResource

REPO_ROOT = Path(__file__).resolve().parents[2]
TRUST_CA = REPO_ROOT / "scripts" / "trust-ca.sh"
HTTP_REPO = f"http://{ar.HOST}{ar.REPOSITORY}"
HTTPS_REPO = f"https://{ar.HOST}{ar.REPOSITORY}"
COLD_DELAY = 0.25  # the origin's pause before each answer: three clients' requests overlap
SHORT_TTL = 1  # the outage test's index goes stale this fast
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


# --- apk.static ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def apk() -> Path:
    need(os.geteuid() == 0, "apk in chroots and network namespaces needs root")
    path, why = ar.find_apk()
    need(path, why)
    return path  # type: ignore[return-value]


@dataclass(frozen=True)
class Image:
    """An Alpine root entered with ``chroot`` inside one namespace (``container``), or in
    the host's network with ``env`` (the proxy variables of a build that sets them)."""

    root: Path
    container: netns.Container | None
    env: tuple[tuple[str, str], ...] = ()

    def __call__(self, *argv: str) -> defer.Deferred:
        command = ["chroot", str(self.root), *argv]
        if self.container is not None:
            (self.root / "etc/resolv.conf").write_text(f"nameserver {self.container.host_ip}\n")
            command = self.container.argv(command)
        return run(command, env={"PATH": PATH, "HOME": "/root", **dict(self.env)})

    @defer.inlineCallbacks
    def update_and_add(self, name: str = ar.TOP):  # type: ignore[no-untyped-def]
        """``apk update && apk add name``: the (update, add) results; no add when the
        update failed, as ``&&`` in a RUN step."""
        update = yield self("/sbin/apk", "update")
        if update.returncode != 0:
            return update, None
        add = yield self("/sbin/apk", "add", name)
        return update, add


def said(done: Any) -> str:
    if done is None:
        return "(not run)"
    return f"{done.args[-3:]} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


# --- the world: origin, stand-in real upstream, namespaces, cachegate ------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> ar.AlpineRepo:  # type: ignore[no-untyped-def]
    return ar.publish_alpine(tmp_path_factory.mktemp("alpine-tree"))


@pytest.fixture(scope="module")
def origin(repo):  # type: ignore[no-untyped-def]
    server = Origin(repo.root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())


@dataclass
class World:
    containers: list[netns.Container]
    gateway: netns.HostGateway
    public_ca: Path  # the stand-in public roots: what a stock image trusts
    public: Any  # the stand-in real upstream's listening port

    @property
    def admin(self) -> str:
        port = re.search(r'admin = "127\.0\.0\.1:(\d+)"', self.gateway.config.read_text())
        return f"http://127.0.0.1:{port[1]}"  # type: ignore[index]

    def stored(self, path: str) -> list[dict]:
        """The gateway's stored objects whose URL contains ``path``."""
        with urllib.request.urlopen(f"{self.admin}/api/cache?ecosystem=alpine&limit=0",
                                    timeout=10) as reply:
            listing = json.load(reply)
        return [e for e in listing["entries"] if path in e.get("url", e.get("key", ""))]


def make_world(work: Path, origin: Origin, count: int,
               short_ttl: int | None = None) -> Iterator[World]:
    """``count`` namespaces with cachegate on their host side, the fixture origin behind
    it, and "the real upstream" its tunnels reach: the same origin over TLS under a CA of
    its own (standing in for the public roots) on a host address no namespace routes to,
    which cachegate's forwarder gives for every catalogue name."""
    from tls.ca import create_ca
    from tls.context import SNIContexts
    from tls.leaf import LeafCache
    from twisted.web import server

    need(netns.unavailable() is None, f"namespaces: {netns.unavailable()}")
    public_ca = create_ca(tuple(PROXY_HOSTS), "ecdsa", False, time.time())
    (work / "public-ca.crt").parent.mkdir(parents=True, exist_ok=True)
    (work / "public-ca.crt").write_bytes(public_ca.cert_pem())
    with netns.containers(count) as containers:
        public_ip = containers[0].host_ip.rsplit(".", 1)[0] + ".3"
        subprocess.run(["ip", "addr", "add", f"{public_ip}/32", "dev", containers[0].host_if],
                       check=True)
        public = reactor.listenSSL(
            443, server.Site(ByHost(OriginResource(origin))),
            SNIContexts(LeafCache(public_ca, reactor, "ecdsa"), lambda name: True).options,
            interface=public_ip)
        upstream = FakeUpstream(reactor, {host: [f"{host}. 60 IN A {public_ip}"]
                                          for host in PROXY_HOSTS}).start()
        gateway = netns.HostGateway(work / "gw", containers, origin.url, upstream.address,
                                    short_ttl)
        try:
            gateway.wait_ready()
            yield World(containers, gateway, work / "public-ca.crt", public)
        finally:
            gateway.stop()
            pytest_twisted.blockon(defer.gatherResults([
                defer.maybeDeferred(public.stopListening), upstream.stop()]))


@pytest.fixture
def world(apk, origin, tmp_path):  # type: ignore[no-untyped-def]
    origin.reset()
    yield from make_world(tmp_path / "world", origin, 3)


@pytest.fixture
def outage_world(apk, origin, tmp_path):  # type: ignore[no-untyped-def]
    origin.reset()
    yield from make_world(tmp_path / "world", origin, 1, SHORT_TTL)


def repeated(requests) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts = Counter(r.path for r in requests)
    return {path: n for path, n in counts.items() if n > 1}


@defer.inlineCallbacks
def all_of(deferreds):  # type: ignore[no-untyped-def]
    try:
        results = yield defer.gatherResults(deferreds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()
    return results


# --- the tests -------------------------------------------------------------------------

def test_apk_installs_the_signed_fixture_repository_and_rejects_what_it_must(apk, repo,
                                                                            tmp_path):
    """The fixture repository is what apk accepts, and apk checks it: straight from a
    file:// copy of the tree (no network), without --allow-untrusted; an index signed by
    an unknown key and a package disagreeing with the index's C: are refused."""
    url = f"file://{repo.root / ar.ECOSYSTEM}{ar.REPOSITORY}"
    good = ar.alpine_root(tmp_path / "good", apk, repo, url, [])
    for argv in (["update"], ["add", ar.TOP]):
        done = subprocess.run([str(apk), "--root", str(good), *argv], capture_output=True,
                              text=True)
        assert done.returncode == 0, said(done)
    assert ar.installed(good, repo) == []

    keyless = ar.alpine_root(tmp_path / "keyless", apk, repo, url, [])
    for key in (keyless / "etc/apk/keys").iterdir():
        key.unlink()
    done = subprocess.run([str(apk), "--root", str(keyless), "update"], capture_output=True,
                          text=True)
    assert "UNTRUSTED signature" in done.stderr and "OK: 0 distinct packages" in done.stdout, \
        said(done)
    done = subprocess.run([str(apk), "--root", str(keyless), "add", ar.TOP],
                          capture_output=True, text=True)
    assert done.returncode != 0, said(done)

    bad_tree = tmp_path / "bad-tree"
    shutil.copytree(repo.root / ar.ECOSYSTEM, bad_tree)
    bad_package = repo.packages["cachegate-lib"]
    (bad_tree / bad_package.path.lstrip("/")).write_bytes(ar.tampered(repo, "cachegate-lib"))
    bad = ar.alpine_root(tmp_path / "bad", apk, repo, f"file://{bad_tree}{ar.REPOSITORY}", [])
    subprocess.run([str(apk), "--root", str(bad), "update"], check=True, capture_output=True)
    done = subprocess.run([str(apk), "--root", str(bad), "add", ar.TOP], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "cachegate-lib-2.1-r1: BAD signature" in done.stderr, \
        said(done)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.inlineCallbacks
def test_apk_update_and_add_through_cachegate(scheme, world, repo, origin, apk, tmp_path):
    """Three images at once run ``apk update && apk add`` (http: a stock image's
    repositories line changed to http://; https: Alpine's default, after trust-ca.sh
    added cachegate's CA, one image keeping its CAs in /etc/apk/ca.pem): at most one
    origin request per object.  Three fresh images again: no origin request at all."""
    repository = HTTP_REPO if scheme == "http" else HTTPS_REPO

    @defer.inlineCallbacks
    def image(name: str, container: netns.Container, apk_ca_pem: bool = False):  # type: ignore[no-untyped-def]
        root = ar.alpine_root(tmp_path / name, apk, repo, repository, [world.public_ca],
                           apk_ca_pem)
        img = Image(root, container)
        if scheme == "https":
            yield trust_cachegate(img, world.gateway.ca_cert)
        return img

    cold = yield all_of([image(f"cold{i}", c, apk_ca_pem=(i == 2))
                         for i, c in enumerate(world.containers)])
    origin.behave("*", delay_headers=COLD_DELAY)
    try:
        results = yield all_of([img.update_and_add() for img in cold])
    finally:
        origin.behave("*")
    failed = [f"{said(u)}\n{said(a)}" for u, a in results if a is None or a.returncode != 0]
    assert not failed, "\n".join(failed) + "\n" + world.gateway.log_tail()
    for img in cold:
        assert ar.installed(img.root, repo) == [], img.root
    fetched = {r.path for r in origin.requests}
    assert {o.origin_path for o in repo.objects} <= fetched, sorted(fetched)
    assert repeated(origin.requests) == {}
    assert world.gateway.served() and all(s.host == ar.HOST for s in world.gateway.served())

    before, since = len(origin.requests), world.gateway.log_size()
    warm = yield all_of([image(f"warm{i}", c, apk_ca_pem=(i == 2))
                         for i, c in enumerate(world.containers)])
    results = yield all_of([img.update_and_add() for img in warm])
    failed = [f"{said(u)}\n{said(a)}" for u, a in results if a is None or a.returncode != 0]
    assert not failed, "\n".join(failed)
    for img in warm:
        assert ar.installed(img.root, repo) == [], img.root
    assert origin.requests[before:] == []
    served = world.gateway.served(since)
    assert {s.client for s in served} == {c.ip for c in world.containers}
    assert {s.label for s in served} == {"HIT"}, served
    assert len(served) == 3 * len(repo.objects)
    assert "Traceback" not in world.gateway.log_tail(10**6)


def trust_cachegate(img: Image, ca: Path) -> defer.Deferred:
    """scripts/trust-ca.sh run inside the image by its busybox, as a RUN step would."""
    need(ar.BUSYBOX.exists(), "busybox not installed (Debian package busybox-static)")
    shutil.copy(TRUST_CA, img.root / "tmp/trust-ca.sh")
    shutil.copy(ca, img.root / "tmp/cachegate-ca.crt")

    @defer.inlineCallbacks
    def go():  # type: ignore[no-untyped-def]
        done = yield img("/bin/sh", "/tmp/trust-ca.sh", "/tmp/cachegate-ca.crt")
        assert done.returncode == 0, said(done)
        return done
    return go()


@pytest_twisted.inlineCallbacks
def test_a_cached_apk_add_works_while_the_origin_is_down(outage_world, repo, origin, apk,
                                                          tmp_path):
    """The cache warmed by one image; the index goes stale and the origin stops: a fresh
    image's ``apk update && apk add`` is served the stale index and the packages."""
    world = outage_world
    container = world.containers[0]
    first = Image(ar.alpine_root(tmp_path / "first", apk, repo, HTTP_REPO, []), container)
    update, add = yield first.update_and_add()
    assert add is not None and add.returncode == 0, f"{said(update)}\n{said(add)}"
    yield task.deferLater(reactor, SHORT_TTL + 0.5, lambda: None)  # the index is stale now
    yield origin.stop_serving()
    try:
        since = world.gateway.log_size()
        second = Image(ar.alpine_root(tmp_path / "second", apk, repo, HTTP_REPO, []), container)
        update, add = yield second.update_and_add()
    finally:
        origin.resume()
    assert add is not None and add.returncode == 0, \
        f"{said(update)}\n{said(add)}\n{world.gateway.log_tail()}"
    assert ar.installed(second.root, repo) == []
    served = world.gateway.served(since)
    labels = {s.path.rsplit("/", 1)[1]: s.label for s in served}
    assert labels.pop("APKINDEX.tar.gz") == "STALE", served
    assert set(labels.values()) == {"HIT"}, served


@pytest_twisted.inlineCallbacks
def test_a_stock_image_without_the_ca_falls_back_to_the_real_upstream(world, repo, origin,
                                                                       apk, tmp_path):
    """A stock Alpine image trusts the public roots (the stand-in's CA), not cachegate's.
    apk does not retry a connection that failed certificate verification, so its first
    ``apk update`` fails; cachegate then tunnels that client's connections to
    dl-cdn.alpinelinux.org to the real upstream, and the next run succeeds, uncached."""
    container = world.containers[0]
    img = Image(ar.alpine_root(tmp_path / "stock", apk, repo, HTTPS_REPO, [world.public_ca]),
                container)
    update, add = yield img.update_and_add()
    assert update.returncode != 0 and add is None, said(update)
    assert "certificate verify failed" in update.stderr, said(update)
    update, add = yield img.update_and_add()
    assert add is not None and add.returncode == 0, \
        f"{said(update)}\n{said(add)}\n{world.gateway.log_tail()}"
    assert ar.installed(img.root, repo) == []
    log = world.gateway.log_path.read_text()
    assert f"{container.ip} does not trust the cachegate CA for {ar.HOST}" in log
    # Through the tunnel: the stand-in upstream served every object, cachegate stored none.
    assert [s for s in world.gateway.served() if s.client == container.ip] == []
    assert world.stored(ar.REPOSITORY) == []
    for obj in repo.objects:
        assert origin.count(obj.origin_path) == 1, obj.origin_path


@pytest.mark.xfail(not hasattr(Ecosystem, "digests_in"), strict=True,
                   reason="the integrity engine (Ecosystem.digests_in) is not in")
@pytest_twisted.inlineCallbacks
def test_a_package_disagreeing_with_the_index_is_never_stored(world, repo, origin, apk,
                                                              tmp_path):
    """The origin serves a cachegate-lib whose control stream does not match the index's
    ``C:``.  apk refuses it, and cachegate must not keep it: once the origin serves the
    right bytes, the next image installs (a poisoned cache would fail every build)."""
    container = world.containers[0]
    package = repo.packages["cachegate-lib"]
    path = f"/{ar.ECOSYSTEM}{package.path}"
    origin.behave(path, body=ar.tampered(repo, "cachegate-lib"))
    try:
        img = Image(ar.alpine_root(tmp_path / "first", apk, repo, HTTP_REPO, []), container)
        update, add = yield img.update_and_add()
    finally:
        origin.behave(path)
    assert add is not None and add.returncode != 0, said(add)
    assert "cachegate-lib-2.1-r1: BAD signature" in add.stderr, said(add)  # apk checks C: too
    assert world.stored(package.path) == [], world.stored(package.path)
    assert "mismatch: " in world.gateway.log_path.read_text()
    again = Image(ar.alpine_root(tmp_path / "again", apk, repo, HTTP_REPO, []), container)
    update, add = yield again.update_and_add()
    assert add is not None and add.returncode == 0, f"{said(update)}\n{said(add)}"
    assert ar.installed(again.root, repo) == []
    assert origin.count(path) == 2


def test_alpine_root_reads_alpine_paths(tmp_path, apk, repo):
    """The emulation the https tests rely on: this apk.static's OpenSSL default paths
    resolve, in an image, to Alpine's /etc/ssl/cert.pem and /etc/ssl/certs."""
    root = ar.alpine_root(tmp_path / "r", apk, repo, HTTPS_REPO, [])
    assert os.path.realpath(root / "usr/lib/ssl/cert.pem") == \
        str((root / "etc/ssl/certs/ca-certificates.crt").resolve())
    strings = (root / "sbin/apk").read_bytes()
    assert b"/usr/lib/ssl" in strings and b"/etc/apk/ca.pem" in strings


@pytest_twisted.inlineCallbacks
def test_apk_through_the_explicit_proxy(apk, repo, origin, start_tls_gateway, tmp_path):
    """A build that sets ``HTTPS_PROXY``/``HTTP_PROXY``: apk's libfetch sends CONNECT
    (https, the CA trusted by trust-ca.sh) or an absolute-form GET (http) to cachegate's
    proxy port, and both are served from one cache: each object crosses once."""
    need(ar.BUSYBOX.exists(), "busybox not installed (Debian package busybox-static)")
    origin.reset()
    gw = start_tls_gateway(origin.url, proxy=True)
    runs = []
    for name, variable, repository in (("https", "HTTPS_PROXY", HTTPS_REPO),
                                       ("http", "HTTP_PROXY", HTTP_REPO)):
        root = ar.alpine_root(tmp_path / name, apk, repo, repository, [])
        img = Image(root, None, ((variable, gw.proxy_url),))
        if name == "https":
            yield trust_cachegate(img, gw.cafile)
        update, add = yield img.update_and_add()
        assert add is not None and add.returncode == 0, f"{name}: {said(update)}\n{said(add)}"
        assert ar.installed(root, repo) == []
        runs.append(update.stdout)
    assert all(f"fetch {scheme}://{ar.HOST}" in out for scheme, out in zip(("https", "http"), runs))
    for obj in repo.objects:
        assert origin.count(obj.origin_path) == 1, obj.origin_path


def test_build_apk_script(apk):
    """scripts/build-apk.sh is shellcheck-clean, and once built it answers from the cache
    (keyed by the tarball's sha256) without building again."""
    shellcheck = shutil.which("shellcheck")
    need(shellcheck, "shellcheck not installed (Debian package shellcheck)")
    done = subprocess.run([shellcheck, str(ar.BUILD_APK)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    again = subprocess.run([str(ar.BUILD_APK)], capture_output=True, text=True, timeout=600)
    if again.returncode != 0:  # no ../shared here: apk came from $CACHEGATE_APK_STATIC
        need(False, f"scripts/build-apk.sh: {again.stderr.strip()}")
    assert again.stderr == "" and Path(again.stdout.strip()).read_bytes() == apk.read_bytes()
    assert re.search(r"/apk-tools-[0-9a-f]{16}/apk\.static$", again.stdout.strip())
