"""The test origin and its fixture tree: real clients accept the fixtures (apt-get, pip,
npm, mvn straight against the origin), and every programmable behaviour does what the
gateway tests rely on (304, Range, negotiation, cut and lying bodies, slowness, outages)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests import fixtures as fx
from tests.clients import PROXIED_FETCHES, need, ok, run, through_proxy
from tests.origin import PROXY_HOSTS, Origin, choose_variant, not_modified, parse_range

REPO = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def served(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(origin, fixtures): the tree built with links back to the origin itself, as real
    clients talking to it directly need."""
    origin = Origin(tmp_path_factory.mktemp("tree"), reactor)
    origin.listen()
    tree = fx.build_fixtures(origin.root, f"{origin.url}/pypi", f"{origin.url}/npm")
    yield origin, tree
    pytest_twisted.blockon(origin.stop_serving())


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(origin, fixtures) with the tree's links naming the real hosts, as behind cachegate;
    clients reach it with the origin as their HTTP proxy."""
    origin = Origin(tmp_path_factory.mktemp("proxied"), reactor)
    origin.listen()
    yield origin, fx.build_fixtures(origin.root)
    pytest_twisted.blockon(origin.stop_serving())


@pytest.fixture
def origin(served):  # type: ignore[no-untyped-def]
    origin, _ = served
    origin.reset()
    origin.clear_behaviours()
    origin.down = False
    yield origin
    origin.clear_behaviours()
    origin.down = False
    origin.resume()


@pytest.fixture
def tree(served):  # type: ignore[no-untyped-def]
    return served[1]


# --- a raw client: sees exactly what went over the wire -----------------------------

@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    clean_close: bool  # FIN (ConnectionDone) rather than a reset
    first_byte_after: float
    elapsed: float

    @property
    def complete(self) -> bool:
        return "content-length" in self.headers and \
            len(self.body) == int(self.headers["content-length"])


class _Collect(protocol.Protocol):
    def __init__(self, request: bytes, rate: int | None) -> None:
        self.request, self.rate = request, rate
        self.data: list[bytes] = []
        self.started = reactor.seconds()
        self.first: float | None = None
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.first = self.first or reactor.seconds()
        self.data.append(data)
        if self.rate:
            self.transport.pauseProducing()
            reactor.callLater(len(data) / self.rate, self.transport.resumeProducing)

    def connectionLost(self, reason) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self.done.callback(reason.check(error.ConnectionDone) is not None)


@defer.inlineCallbacks
def raw(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        rate: int | None = None):  # type: ignore[no-untyped-def]
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    proto = _Collect(("\r\n".join(lines) + "\r\n\r\n").encode(), rate)
    factory = protocol.Factory.forProtocol(lambda: proto)
    factory.noisy = False
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    clean = yield proto.done
    head, _, body = b"".join(proto.data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    now = reactor.seconds()
    return Raw(int(status_line.split()[1]), parsed, body, clean,
               (proto.first or now) - proto.started, now - proto.started)








# --- pure parts ---------------------------------------------------------------------

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
              "q=0.1, text/html; q=0.01")
NPM_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
SIMPLE = [("index.html", "text/html"), ("index.pypi.json", "application/vnd.pypi.simple.v1+json")]
PACKUMENT = [("index.json", "application/json"),
             ("index.corgi.json", "application/vnd.npm.install-v1+json")]


@pytest.mark.parametrize("accept,available,chosen", [
    (PIP_ACCEPT, SIMPLE, "index.pypi.json"),
    ("text/html", SIMPLE, "index.html"),
    ("*/*", SIMPLE, "index.html"),
    (None, SIMPLE, "index.html"),
    (NPM_ACCEPT, PACKUMENT, "index.corgi.json"),
    ("application/json", PACKUMENT, "index.json"),
    ("*/*", PACKUMENT, "index.json"),
    ("image/png", SIMPLE, None),
    ("text/html;q=0, */*", SIMPLE, "index.pypi.json"),
])
def test_choose_variant(accept, available, chosen):
    assert choose_variant(accept, available) == chosen


@pytest.mark.parametrize("header,expected", [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=10-", (10, 99)), ("bytes=-10", (90, 99)),
    ("bytes=90-200", (90, 99)), ("bytes=100-", "unsatisfiable"), ("bytes=-0", "unsatisfiable"),
    ("bytes=5-1", None), ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=x-y", None),
])
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


def test_not_modified_prefers_etag_over_date():
    assert not_modified({"if-none-match": '"a", W/"b"'}, '"b"', 100)
    assert not_modified({"if-none-match": "*"}, '"b"', 100)
    assert not not_modified({"if-none-match": '"a"', "if-modified-since":
                             "Thu, 01 Jan 2099 00:00:00 GMT"}, '"b"', 100)
    assert not_modified({"if-modified-since": "Thu, 01 Jan 1970 00:01:40 GMT"}, '"b"', 100)
    assert not not_modified({"if-modified-since": "Thu, 01 Jan 1970 00:01:39 GMT"}, '"b"', 100)
    assert not not_modified({"if-modified-since": "garbage"}, '"b"', 100)


def test_make_blob_streams_a_non_repeating_payload(tmp_path):
    size = 3 * fx.CHUNK + 17
    digest = fx.make_blob(tmp_path / "blob", size, seed="s")
    data = (tmp_path / "blob").read_bytes()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    assert data == fx.payload("s", size)
    blocks = [data[i:i + 64] for i in range(0, size - 64, 64)]
    assert len(set(blocks)) == len(blocks)  # not even a 64-byte block repeats
    assert fx.make_blob(tmp_path / "other", 1000, seed="t") != hashlib.sha256(data[:1000]).hexdigest()


# --- the fixture tree is internally consistent --------------------------------------

def test_every_object_is_on_disk_with_its_digest(tree):
    ecosystems = {o.ecosystem for o in tree.objects}
    gems = {"rubygems"} if shutil.which("gem") else set()  # built by `gem build`
    assert ecosystems == {"debian", "alpine", "pypi", "npm", "maven", "go", "crates"} | gems
    for obj in tree.objects:
        data = obj.file.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (obj.size, obj.sha256), obj.path


def test_pypi_files_live_under_their_blake2b(tree):
    files = [o for o in tree.of("pypi") if o.path.startswith("/packages/")]
    assert any(o.path.endswith(".whl") for o in files) and any(o.path.endswith(".tar.gz") for o in files)
    for obj in files:
        _, _, xx, yy, rest, name = obj.path.split("/")
        if name.endswith(".metadata"):  # PEP 658: beside the wheel, under the wheel's digest
            obj = next(o for o in files if o.path == obj.path.removesuffix(".metadata"))
        digest = hashlib.blake2b(obj.file.read_bytes(), digest_size=32).hexdigest()
        assert xx + yy + rest == digest


def test_npm_integrity_and_shasum_match_the_tarballs(tree):
    corgi = json.loads(tree.get("npm", "/@cachegate%2ffixture", fx.NPM_CORGI_ACCEPT).file.read_bytes())
    plain = json.loads(tree.get("npm", "/cachegate-fixture", fx.NPM_FULL_ACCEPT).file.read_bytes())
    for doc in (corgi, plain):
        for manifest in doc["versions"].values():
            dist = manifest["dist"]
            path = dist["tarball"].split("/npm", 1)[1]
            data = tree.get("npm", path).file.read_bytes()
            assert dist["integrity"] == "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
            assert dist["shasum"] == hashlib.sha1(data).hexdigest()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                package = json.load(tar.extractfile("package/package.json"))
            assert (package["name"], package["version"]) == (manifest["name"], manifest["version"])


def test_apt_release_lists_the_indexes_and_by_hash_copies(tree):
    release = tree.get("debian", "/debian/dists/bookworm/Release").file.read_text()
    assert "Acquire-By-Hash: yes" in release
    listed = re.findall(r"^ ([0-9a-f]{64}) +(\d+) (\S+)$", release, re.M)
    assert len(listed) == 4
    for digest, size, name in listed:
        data = tree.get("debian", f"/debian/dists/bookworm/{name}").file.read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (digest, int(size))
        if "Packages" in name:
            tree.get("debian", f"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}")


def test_apt_generation_two_is_a_new_inrelease_keeping_old_files(tmp_path):
    need(shutil.which("dpkg-deb"), "dpkg-deb not installed (package dpkg)")
    one = fx.build_fixtures(tmp_path)
    two = fx.publish_debian(tmp_path, generation=2)
    release = "/debian/dists/bookworm/Release"
    assert one.get("debian", release).sha256 != next(o for o in two if o.path == release).sha256
    assert all(o.file.exists() for o in one.of("debian"))  # old pool and by-hash files stay
    packages = next(o for o in two if o.path.endswith("binary-amd64/Packages")).file.read_text()
    assert "Version: 1.1" in packages and "hello-cachegate_1.0_all.deb" not in packages


def test_apkindex_checksums_name_the_control_segments(tree):
    index = tree.find("/APKINDEX.tar.gz").file.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(index)) as tar:
        text = tar.extractfile("APKINDEX").read().decode()
    stanzas = [dict(line.split(":", 1) for line in s.splitlines()) for s in text.strip().split("\n\n")]
    assert {s["P"] for s in stanzas} == set(fx.ALPINE_PACKAGES)
    for s in stanzas:
        apk = tree.find(f"/{s['P']}-{s['V']}.apk").file.read_bytes()
        control = _first_gzip_member(apk)
        assert s["C"] == "Q1" + base64.b64encode(hashlib.sha1(control).digest()).decode()
        assert int(s["S"]) == len(apk)
        assert b"pkgname = " + s["P"].encode() in gzip.decompress(control)


def _first_gzip_member(data: bytes) -> bytes:
    """The bytes of the first gzip stream of a concatenation (apk's control segment)."""
    import zlib
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    d.decompress(data)
    return data[:len(data) - len(d.unused_data)]


def test_maven_checksums_match(tree):
    for obj in tree.of("maven"):
        for algo in ("sha1", "md5"):
            if obj.path.endswith("." + algo):
                target = tree.get("maven", obj.path.removesuffix("." + algo)).file.read_bytes()
                assert obj.file.read_text() == hashlib.new(algo, target).hexdigest()


# --- serving ------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_every_fixture_object_is_served_whole_with_validators(origin, tree):
    for obj in tree.objects:
        reply = yield raw(origin.port, obj.origin_path, {"Accept": obj.accept} if obj.accept else {})
        assert reply.status == 200, obj.origin_path
        assert hashlib.sha256(reply.body).hexdigest() == obj.sha256, obj.origin_path
        assert int(reply.headers["content-length"]) == obj.size
        assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["etag"])
        assert "last-modified" in reply.headers
    assert len(origin.requests) == len(tree.objects)


@pytest_twisted.inlineCallbacks
def test_conditional_requests_and_head(origin, tree):
    obj = tree.find("hello-cachegate_1.0_all.deb")
    first = yield raw(origin.port, obj.origin_path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = yield raw(origin.port, obj.origin_path, {"If-None-Match": etag})
    assert (again.status, again.body, again.headers["etag"]) == (304, b"", etag)
    since = yield raw(origin.port, obj.origin_path, {"If-Modified-Since": modified})
    assert since.status == 304
    old = yield raw(origin.port, obj.origin_path, {"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"})
    assert old.status == 200 and len(old.body) == obj.size
    other = yield raw(origin.port, obj.origin_path, {"If-None-Match": '"other"'})
    assert other.status == 200
    head = yield raw(origin.port, obj.origin_path, method="HEAD")
    assert (head.status, head.body, int(head.headers["content-length"])) == (200, b"", obj.size)
    assert [r.method for r in origin.requests].count("HEAD") == 1


@pytest_twisted.inlineCallbacks
def test_range_requests(origin, tree):
    obj = tree.find("fixture-1.0.jar")
    data = obj.file.read_bytes()
    part = yield raw(origin.port, obj.origin_path, {"Range": "bytes=100-1099"})
    assert (part.status, part.body) == (206, data[100:1100])
    assert part.headers["content-range"] == f"bytes 100-1099/{obj.size}"
    tail = yield raw(origin.port, obj.origin_path, {"Range": "bytes=-10"})
    assert tail.body == data[-10:]
    beyond = yield raw(origin.port, obj.origin_path, {"Range": f"bytes={obj.size}-"})
    assert (beyond.status, beyond.headers["content-range"]) == (416, f"bytes */{obj.size}")
    stale = yield raw(origin.port, obj.origin_path, {"Range": "bytes=0-9", "If-Range": '"old"'})
    assert (stale.status, len(stale.body)) == (200, obj.size)
    fresh = yield raw(origin.port, obj.origin_path,
                      {"Range": "bytes=0-9", "If-Range": part.headers["etag"]})
    assert (fresh.status, fresh.body) == (206, data[:10])


@pytest_twisted.inlineCallbacks
def test_negotiated_documents_vary_on_accept(origin, tree):
    html = yield raw(origin.port, "/pypi/simple/cachegate-fixture-a/", {"Accept": "text/html"})
    pep691 = yield raw(origin.port, "/pypi/simple/cachegate-fixture-a/", {"Accept": PIP_ACCEPT})
    assert html.headers["content-type"] == "text/html" and b"<a href=" in html.body
    assert pep691.headers["content-type"] == "application/vnd.pypi.simple.v1+json"
    assert json.loads(pep691.body)["name"] == "cachegate-fixture-a"
    assert html.headers["vary"] == pep691.headers["vary"] == "Accept, Accept-Encoding"
    assert html.headers["etag"] != pep691.headers["etag"]
    corgi = yield raw(origin.port, "/npm/@cachegate%2ffixture", {"Accept": NPM_ACCEPT})
    full = yield raw(origin.port, "/npm/@cachegate/fixture", {"Accept": "application/json"})
    assert corgi.headers["content-type"] == "application/vnd.npm.install-v1+json"
    assert "time" in json.loads(full.body) and "time" not in json.loads(corgi.body)
    refused = yield raw(origin.port, "/pypi/simple/cachegate-fixture-a/", {"Accept": "image/png"})
    assert refused.status == 406
    assert origin.count("/npm/@cachegate/fixture") == 2  # both spellings
    assert origin.count("/npm/@cachegate%2ffixture") == 1


@pytest_twisted.inlineCallbacks
def test_negotiated_documents_are_gzipped_for_clients_that_accept_it(origin, tree):
    obj = tree.get("npm", "/cachegate-fixture", fx.NPM_CORGI_ACCEPT)
    zipped = yield raw(origin.port, obj.origin_path, {"Accept": obj.accept, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert hashlib.sha256(gzip.decompress(zipped.body)).hexdigest() == obj.sha256
    assert zipped.headers["etag"].endswith('-gzip"')
    plain = yield raw(origin.port, obj.origin_path, {"Accept": obj.accept,
                                                      "Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in plain.headers and plain.headers["etag"] != zipped.headers["etag"]
    files = yield raw(origin.port, tree.find(".tgz").origin_path, {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in files.headers  # only documents, never artifacts


@pytest_twisted.inlineCallbacks
def test_fail_after_sends_full_length_then_cuts(origin, tree):
    obj = tree.find("hello-cachegate_1.0_all.deb")
    origin.behave(obj.origin_path, fail_after=5000, times=1)
    cut = yield raw(origin.port, obj.origin_path)
    assert (cut.status, int(cut.headers["content-length"])) == (200, obj.size)
    assert cut.body == obj.file.read_bytes()[:5000] and not cut.complete
    whole = yield raw(origin.port, obj.origin_path)  # times=1: served normally again
    assert whole.complete and hashlib.sha256(whole.body).hexdigest() == obj.sha256
    origin.behave(obj.origin_path, fail_after=0)
    nothing = yield raw(origin.port, obj.origin_path)
    assert (nothing.status, nothing.body) == (200, b"")
    assert origin.count(obj.origin_path) == 3


@pytest_twisted.inlineCallbacks
def test_lie_length(origin, tree):
    obj = tree.find("cachegate_fixture_b-1.0-py3-none-any.whl")
    origin.behave(obj.origin_path, lie_length=obj.size + 1000)
    longer = yield raw(origin.port, obj.origin_path)
    assert int(longer.headers["content-length"]) == obj.size + 1000
    assert len(longer.body) == obj.size and not longer.complete and longer.clean_close
    origin.behave(obj.origin_path, lie_length=100)
    shorter = yield raw(origin.port, obj.origin_path)
    assert int(shorter.headers["content-length"]) == 100 and len(shorter.body) == obj.size


@pytest_twisted.inlineCallbacks
def test_slow_body_and_late_headers(origin, tree):
    obj = tree.find("cachegate-fixture-1.1.0.tgz")  # ~29 KB
    origin.behave(obj.origin_path, slow_bytes_per_s=100_000)
    slow = yield raw(origin.port, obj.origin_path)
    assert slow.complete and hashlib.sha256(slow.body).hexdigest() == obj.sha256
    assert 0.2 <= slow.elapsed < 2.0
    origin.behave(obj.origin_path, delay_headers=0.3)
    late = yield raw(origin.port, obj.origin_path)
    assert late.first_byte_after >= 0.29 and late.complete


@pytest_twisted.inlineCallbacks
def test_status_body_and_header_behaviours(origin, tree):
    obj = tree.find("fixture/maven-metadata.xml")
    origin.behave(obj.origin_path, status=500)
    failed = yield raw(origin.port, obj.origin_path)
    assert failed.status == 500 and failed.complete
    origin.behave(obj.origin_path, status=404, headers={"Cache-Control": "max-age=60"})
    missing = yield raw(origin.port, obj.origin_path)
    assert (missing.status, missing.headers["cache-control"]) == (404, "max-age=60")
    origin.behave(obj.origin_path, status=304)
    same = yield raw(origin.port, obj.origin_path)
    assert (same.status, same.body) == (304, b"") and "etag" in same.headers
    origin.behave(obj.origin_path, body=b"<metadata/>\n", headers={"ETag": None, "Vary": "Accept"})
    changed = yield raw(origin.port, obj.origin_path)
    assert (changed.body, changed.headers["vary"]) == (b"<metadata/>\n", "Accept")
    assert "etag" not in changed.headers
    origin.behave("/maven/maven2/org/cachegate/*", status=503)
    prefixed = yield raw(origin.port, tree.find("fixture-1.0.pom").origin_path)
    assert prefixed.status == 503
    unknown = yield raw(origin.port, "/maven/maven2/none/../../.signing/secret.asc")
    assert unknown.status == 404


@pytest_twisted.inlineCallbacks
def test_outages(origin, tree):
    obj = tree.find("cachegate-hello-1.0-r0.apk")
    origin.down = True
    down = yield raw(origin.port, obj.origin_path)
    assert down.status == 500
    origin.down = False
    port = origin.port
    yield origin.stop_serving()
    with pytest.raises(error.ConnectionRefusedError):
        yield raw(port, obj.origin_path)
    assert origin.resume() == port
    back = yield raw(port, obj.origin_path)
    assert back.status == 200 and back.complete


@pytest_twisted.inlineCallbacks
def test_stop_serving_drops_a_download_in_progress(origin, tree):
    obj = tree.find("hello-cachegate_1.0_all.deb")
    origin.behave(obj.origin_path, slow_bytes_per_s=20_000)
    pending = raw(origin.port, obj.origin_path)
    yield deferLater(0.3)
    yield origin.stop_serving()
    reply = yield pending
    assert 0 < len(reply.body) < obj.size and not reply.clean_close


def deferLater(seconds: float) -> defer.Deferred:  # noqa: N802
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.mark.filterwarnings("ignore:Using readBody")
@pytest_twisted.inlineCallbacks
def test_keep_alive_connections_are_reused(origin, tree):
    yield deferLater(0.05)  # connections of earlier tests have closed
    assert origin.site.open_connections() == 0
    pool = HTTPConnectionPool(reactor, persistent=True)
    agent = Agent(reactor, pool=pool)
    for obj in tree.of("alpine"):
        response = yield agent.request(b"GET", f"{origin.url}{obj.origin_path}".encode(),
                                       Headers({}))
        body = yield readBody(response)
        assert hashlib.sha256(body).hexdigest() == obj.sha256
    assert origin.site.open_connections() == 1
    yield pool.closeCachedConnections()


@pytest.mark.filterwarnings("ignore:Using readBody")
@pytest_twisted.inlineCallbacks
def test_standalone_process(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.origin", "--root", str(tmp_path), "--build-fixtures"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int((yield threads.deferToThread(process.stdout.readline)))
        deb = "/debian/debian/pool/main/h/hello-cachegate/hello-cachegate_1.0_all.deb"
        served = yield raw(port, deb)
        assert served.complete
        log = yield raw(port, "/__origin__/requests")
        assert [r["path"] for r in json.loads(log.body)] == [deb]
        yield _post(port, "/__origin__/behave", {"path": deb, "status": 502})
        assert (yield raw(port, deb)).status == 502
        yield _post(port, "/__origin__/reset", {})
        assert json.loads((yield raw(port, "/__origin__/requests")).body) == []
        simple = (tmp_path / "pypi/simple/cachegate-fixture-a/index.html").read_text()
        assert 'href="http://files.pythonhosted.org/packages/' in simple
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert stderr == ""  # no log spam


def _post(port: int, path: str, doc: dict) -> defer.Deferred:
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    from twisted.web.client import FileBodyProducer
    d = agent.request(b"POST", f"http://127.0.0.1:{port}{path}".encode(), Headers({}),
                      FileBodyProducer(io.BytesIO(json.dumps(doc).encode())))
    return d.addCallback(readBody)


# --- real clients, straight against the origin --------------------------------------

@pytest_twisted.inlineCallbacks
def test_apt_get_update_and_download(origin, tree, tmp_path):
    need(shutil.which("apt-get"), "apt-get not installed")
    options = fx.apt_options(tmp_path / "apt", f"{origin.url}/debian/debian", tree.apt_keyring)
    env = fx.apt_env(tmp_path / "apt")
    ok((yield run(["apt-get", *options, "update"], env=env)))
    (tmp_path / "debs").mkdir()
    ok((yield run(["apt-get", *options, "download", *fx.DEBIAN_PACKAGES], env=env,
                  cwd=tmp_path / "debs")))
    for name in fx.DEBIAN_PACKAGES:
        deb = tree.find(f"/{name}_1.0_all.deb")
        assert hashlib.sha256((tmp_path / "debs" / Path(deb.path).name).read_bytes()).hexdigest() == deb.sha256
    paths = [r.path for r in origin.requests]
    if tree.apt_keyring:  # signed: apt takes InRelease and verifies it against our key
        assert "/debian/debian/dists/bookworm/InRelease" in paths
    assert any("/by-hash/SHA256/" in p for p in paths)  # Acquire-By-Hash is honoured


@pytest_twisted.inlineCallbacks
def test_apt_rejects_a_tampered_index(origin, tree, tmp_path):
    """The failure twin: the fixtures' checksums are what apt checks, not decoration."""
    need(shutil.which("apt-get"), "apt-get not installed")
    options = fx.apt_options(tmp_path / "apt", f"{origin.url}/debian/debian", tree.apt_keyring)
    origin.behave("/debian/debian/dists/bookworm/main/binary-amd64/by-hash/*", body=b"Package: x\n")
    origin.behave("/debian/debian/dists/bookworm/main/binary-amd64/Packages*", body=b"Package: x\n")
    done = yield run(["apt-get", *options, "update"], env=fx.apt_env(tmp_path / "apt"))
    assert done.returncode != 0
    assert re.search(r"Hash Sum mismatch|unexpected size", done.stderr), done.stderr


@pytest_twisted.inlineCallbacks
def test_pip_download(origin, tree, tmp_path):
    argv = fx.pip_download_args(f"{origin.url}/pypi/simple", tmp_path / "dl", ["cachegate-fixture-a"])
    ok((yield run(argv)))
    got = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert got == ["cachegate_fixture_a-1.0-py3-none-any.whl", "cachegate_fixture_b-1.0-py3-none-any.whl"]
    simple = [r for r in origin.requests if r.path.startswith("/pypi/simple/")]
    assert simple and all("application/vnd.pypi.simple.v1+json" in r.headers["accept"] for r in simple)


@pytest_twisted.inlineCallbacks
def test_npm_install(origin, tree, tmp_path):
    need(shutil.which("npm"), "npm not installed")
    project = tmp_path / "project"
    ok((yield run(fx.npm_install_args(project, f"{origin.url}/npm/", ["@cachegate/fixture"]))))
    modules = project / "node_modules"
    assert json.loads((modules / "@cachegate/fixture/package.json").read_text())["version"] == "1.0.0"
    assert json.loads((modules / "cachegate-fixture/package.json").read_text())["version"] == "1.1.0"
    assert origin.count("/npm/@cachegate%2ffixture") == 1  # npm's own spelling
    assert origin.count("/npm/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz") == 1


@pytest_twisted.inlineCallbacks
def test_mvn_dependency_get(origin, tree, tmp_path):
    need(shutil.which("mvn"), "mvn not installed (package maven)")
    need(fx.maven_plugin_repo(), "no maven-dependency-plugin in /usr/share/maven-repo "
                                 "(packages libmaven-dependency-plugin-java junit4)")
    repo = f"{origin.url}/maven/maven2"
    ok((yield run(fx.mvn_get_args(tmp_path / "m2", repo, fx.MAVEN_ARTIFACT), env=fx.mvn_env())))
    local = tmp_path / "m2/repository/org/cachegate"
    for path in ("fixture/1.0/fixture-1.0.jar", "fixture-dep/1.0/fixture-dep-1.0.jar"):
        obj = tree.find("/" + path.rsplit("/", 1)[1])
        assert hashlib.sha256((local / path).read_bytes()).hexdigest() == obj.sha256
    assert origin.count("/maven/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar.sha1") == 1


# --- the same recipes through an HTTP proxy, with the real hosts' URLs ------------------







@pytest.mark.parametrize("client", sorted(PROXIED_FETCHES))
@pytest_twisted.inlineCallbacks
def test_recipe_through_a_proxy(proxied, tmp_path, client):
    """What the gateway tests do, with the origin standing in for the proxy: the client
    asks for the real hosts' URLs in absolute form and gets the fixtures."""
    origin, tree = proxied
    origin.reset()
    for argv, kwargs in through_proxy(client, tree, origin.url, origin.port, tmp_path):
        ok((yield run(argv, **kwargs)))
    host, prefix = PROXIED_FETCHES[client]
    assert any(r.path.startswith(prefix) and r.headers["host"] == host for r in origin.requests)
    assert all(r.headers["host"] in PROXY_HOSTS for r in origin.requests)
