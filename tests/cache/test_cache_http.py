"""The caching HTTP core end to end on loopback: gateway in this process, fixture origin
recording every request.  Every success has its failure twin: a hit is zero origin
requests; a failed download is an aborted client and nothing stored."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted
from twisted.internet import defer, reactor, task

from gateway.cache.rules import Policy, Rule
from tests.fixtures import counter_bytes, put_object
from tests.http_client import fetch, raw_get

def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)






@pytest_twisted.inlineCallbacks
def test_every_fixture_object_is_a_hit_the_second_time(origin, fixtures, start_gateway):
    gw = start_gateway(origin.url)
    assert fixtures.objects, "the fixture tree is empty"
    for obj in fixtures.objects:
        headers = {"Accept": obj.accept} if obj.accept else {}
        first = yield fetch(gw.port, obj.host, obj.path, headers)
        assert first.status == 200, (obj.host, obj.path, first.body[:200])
        assert first.sha256 == obj.sha256, (obj.host, obj.path, obj.accept)
        before = len(origin.requests)
        second = yield fetch(gw.port, obj.host, obj.path, headers)
        assert second.sha256 == obj.sha256
        assert second.headers["x-cache"] == "HIT", (obj.host, obj.path)
        assert len(origin.requests) == before, f"{obj.path}: a hit went to the origin"


@pytest_twisted.inlineCallbacks
def test_absolute_form_requests_are_served_like_redirected_ones(origin, start_gateway):
    put_object(origin.root, "alpine", "/alpine/v3.19/main/x86_64/a-1.0-r0.apk", counter_bytes(5000))
    gw = start_gateway(origin.url)
    path = "/alpine/v3.19/main/x86_64/a-1.0-r0.apk"
    via_proxy = yield fetch(gw.port, "dl-cdn.alpinelinux.org", path, proxy=True)
    via_dns = yield fetch(gw.port, "dl-cdn.alpinelinux.org", path)
    assert via_proxy.status == 200 and via_proxy.headers["x-cache"] == "MISS"
    assert via_dns.headers["x-cache"] == "HIT" and via_dns.body == via_proxy.body
    assert origin.count("/alpine" + path) == 1


@pytest_twisted.inlineCallbacks
def test_host_outside_catalogue_is_refused_without_a_fetch(origin, start_gateway):
    gw = start_gateway(origin.url)
    for proxy in (False, True):
        reply = yield fetch(gw.port, "example.com", "/pypi/simple/", proxy=proxy)
        assert reply.status == 403
        assert b"not a repository cachegate serves" in reply.body
    assert origin.requests == []


@pytest_twisted.inlineCallbacks
def test_path_tricks_are_refused(origin, start_gateway):
    gw = start_gateway(origin.url)
    for path in ("/simple/../../etc/passwd", "/simple/%2e%2e/x", "/a%00b"):
        head, _, _ = yield raw_get(gw.port, "pypi.org", path)
        assert head.startswith("HTTP/1.1 400"), (path, head)
    assert origin.requests == []


@pytest_twisted.inlineCallbacks
def test_origin_dies_mid_body_nothing_is_stored_and_next_request_refetches(origin,
                                                                           start_gateway):
    path = "/maven2/org/ex/broken/1.0/broken-1.0.jar"
    data = counter_bytes(2_000_000)
    put_object(origin.root, "maven", path, data)
    origin.behave("/maven" + path, fail_after=300_000)
    gw = start_gateway(origin.url)
    head, body, _ = yield raw_get(gw.port, "repo1.maven.org", path)
    assert "Content-Length: 2000000" in head
    assert len(body) < len(data), "a truncated download must reach the client truncated"
    assert body == data[:len(body)]
    yield sleep(0.1)
    assert artifacts(gw) == []  # (its .sha1, fetched first, may be stored)
    assert os.listdir(gw.store.partial_dir) == []
    origin.behave("/maven" + path)  # healthy again
    reply = yield fetch(gw.port, "repo1.maven.org", path)
    assert reply.body == data and reply.headers["x-cache"] == "MISS"
    assert origin.count("/maven" + path) == 2


@pytest_twisted.inlineCallbacks
def test_blake2b_mismatch_is_never_stored_nor_served_whole(origin, start_gateway):
    good = counter_bytes(300_000, b"good")
    digest = hashlib.blake2b(good, digest_size=32).hexdigest()
    path = f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/pkg-1.0-py3-none-any.whl"
    put_object(origin.root, "pypi", path, counter_bytes(300_000, b"evil"))  # same size, other bytes
    gw = start_gateway(origin.url)
    head, body, _ = yield raw_get(gw.port, "files.pythonhosted.org", path)
    assert len(body) < 300_000, "the client must not receive a complete-looking bad body"
    yield sleep(0.1)
    assert list(gw.store.entries()) == []
    put_object(origin.root, "pypi", path, good)
    reply = yield fetch(gw.port, "files.pythonhosted.org", path)
    assert reply.body == good
    again = yield fetch(gw.port, "files.pythonhosted.org", path)
    assert again.headers["x-cache"] == "HIT"


@pytest_twisted.inlineCallbacks
def test_range_on_hit_and_on_miss(origin, start_gateway):
    path = "/debian/pool/main/r/range/range_1.0_all.deb"
    data = counter_bytes(1_000_000)
    put_object(origin.root, "debian", path, data)
    gw = start_gateway(origin.url)
    miss = yield fetch(gw.port, "deb.debian.org", path, {"Range": "bytes=1000-1999"})
    assert miss.status == 206 and miss.body == data[1000:2000]
    assert miss.headers["content-range"] == "bytes 1000-1999/1000000"
    yield sleep(0.2)
    hit = yield fetch(gw.port, "deb.debian.org", path, {"Range": "bytes=-10"})
    assert hit.status == 206 and hit.body == data[-10:] and hit.headers["x-cache"] == "HIT"
    big = yield fetch(gw.port, "deb.debian.org", path, {"Range": "bytes=500000-"})
    assert big.body == data[500000:]
    bad = yield fetch(gw.port, "deb.debian.org", path, {"Range": "bytes=2000000-"})
    assert bad.status == 416 and bad.headers["content-range"] == "bytes */1000000"
    assert origin.count("/debian" + path) == 1
    # a range request never reaches the origin as a range: the whole object is fetched
    assert "range" not in {k.lower() for k in origin.requests[0].headers}


@pytest_twisted.inlineCallbacks
def test_conditional_requests_get_304_from_the_cache(origin, start_gateway):
    path = "/maven2/org/ex/cond/1.0/cond-1.0.pom"
    put_object(origin.root, "maven", path, b"<project/>")
    gw = start_gateway(origin.url)
    first = yield fetch(gw.port, "repo1.maven.org", path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = yield fetch(gw.port, "repo1.maven.org", path, {"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    since = yield fetch(gw.port, "repo1.maven.org", path, {"If-Modified-Since": modified})
    assert since.status == 304
    changed = yield fetch(gw.port, "repo1.maven.org", path, {"If-None-Match": '"other"'})
    assert changed.status == 200 and changed.body == b"<project/>"
    assert origin.count("/maven" + path) == 1


@pytest_twisted.inlineCallbacks
def test_stale_copy_is_revalidated_then_served_when_origin_fails(origin, start_gateway):
    path = "/simple/stale-demo/"
    put_object(origin.root, "pypi", path + "index.html", b"<a href='x'>x</a>")
    gw = start_gateway(origin.url, rules={"pypi": (Rule("^/simple/", Policy.REVALIDATE, 0),)})
    first = yield fetch(gw.port, "pypi.org", path)
    assert first.headers["x-cache"] == "MISS"
    second = yield fetch(gw.port, "pypi.org", path)
    assert second.headers["x-cache"] == "REVALIDATED" and second.body == first.body
    assert origin.requests[-1].headers.get("if-none-match") == first.headers["etag"]
    origin.behave("/pypi" + path, status=503)
    third = yield fetch(gw.port, "pypi.org", path)
    assert third.status == 200 and third.body == first.body
    assert third.headers["x-cache"] == "STALE" and "111" in third.headers["warning"]
    origin.down = True
    fourth = yield fetch(gw.port, "pypi.org", path)
    assert fourth.headers["x-cache"] == "STALE" and fourth.body == first.body


@pytest_twisted.inlineCallbacks
def test_without_a_stale_copy_origin_failures_reach_the_client_unstored(origin, start_gateway):
    gw = start_gateway(origin.url)
    origin.down = True
    reply = yield fetch(gw.port, "pypi.org", "/simple/never-seen/")
    assert reply.status == 500, "the origin's own error is passed on"
    yield origin.stop_serving()
    reply = yield fetch(gw.port, "pypi.org", "/simple/never-seen/")
    assert reply.status == 502 and reply.headers["cache-control"] == "no-store"
    assert b"upstream unreachable" in reply.body
    assert list(gw.store.entries()) == []


@pytest_twisted.inlineCallbacks
def test_404_is_cached_briefly(origin, start_gateway):
    gw = start_gateway(origin.url, negative_ttl=60)
    path = "/maven2/org/ex/missing/1.0/missing-1.0.pom"
    first = yield fetch(gw.port, "repo1.maven.org", path)
    second = yield fetch(gw.port, "repo1.maven.org", path)
    assert first.status == second.status == 404
    assert second.headers["x-cache"] == "HIT"
    assert origin.count("/maven" + path) == 1
    gw0 = start_gateway(origin.url, state_dir=gw.config.server.state_dir.parent / "s0",
                        negative_ttl=0)
    yield fetch(gw0.port, "repo1.maven.org", path)
    yield fetch(gw0.port, "repo1.maven.org", path)
    assert origin.count("/maven" + path) == 3


@pytest_twisted.inlineCallbacks
def test_vary_accept_variants_are_kept_apart(origin, fixtures, start_gateway):
    gw = start_gateway(origin.url)
    corgi = {"Accept": "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"}
    full = {"Accept": "application/json"}
    a = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", corgi)
    b = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", full)
    assert a.body != b.body, "corgi and full packuments must differ in the fixture"
    assert "vnd.npm.install-v1" in a.headers.get("content-type", "")
    a2 = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", corgi)
    b2 = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", full)
    assert (a2.body, b2.body) == (a.body, b.body)
    assert a2.headers["x-cache"] == b2.headers["x-cache"] == "HIT"
    assert origin.count("/npm/cachegate-fixture") == 2


@pytest_twisted.inlineCallbacks
def test_concurrent_clients_of_different_variants_each_get_their_own(origin, fixtures,
                                                                     start_gateway):
    gw = start_gateway(origin.url)
    corgi = {"Accept": "application/vnd.npm.install-v1+json"}
    full = {"Accept": "application/json"}
    origin.behave("/npm/cachegate-fixture", delay_headers=0.2)
    a, b = yield defer.gatherResults([
        fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", corgi),
        fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", full)])
    assert "vnd.npm.install-v1" in a.headers["content-type"]
    assert "vnd.npm.install-v1" not in b.headers["content-type"]


@pytest_twisted.inlineCallbacks
def test_credentials_and_cookies_are_never_stored(origin, start_gateway):
    path = "/maven2/org/ex/secret/1.0/secret-1.0.jar"
    put_object(origin.root, "maven", path, counter_bytes(1000))
    gw = start_gateway(origin.url)
    for _ in range(2):
        reply = yield fetch(gw.port, "repo1.maven.org", path, {"Authorization": "Bearer t0ken"})
        assert reply.headers["x-cache"] == "PASS"
    assert origin.count("/maven" + path) == 2
    assert origin.requests[-1].headers.get("authorization") == "Bearer t0ken"
    plain = yield fetch(gw.port, "repo1.maven.org", path)
    assert plain.headers["x-cache"] == "MISS", "an authenticated response must not be served"
    cookie = "/maven2/org/ex/cookie/1.0/cookie-1.0.jar"
    put_object(origin.root, "maven", cookie, counter_bytes(1000))
    origin.behave("/maven" + cookie, headers={"Set-Cookie": "session=abc"})
    yield fetch(gw.port, "repo1.maven.org", cookie)
    again = yield fetch(gw.port, "repo1.maven.org", cookie)
    assert again.headers["x-cache"] == "MISS" and origin.count("/maven" + cookie) == 2


@pytest_twisted.inlineCallbacks
def test_private_and_no_store_responses_are_not_stored(origin, start_gateway):
    gw = start_gateway(origin.url)
    for name, cc in (("private", "private, max-age=600"), ("nostore", "no-store")):
        path = f"/maven2/org/ex/{name}/1.0/{name}-1.0.jar"
        put_object(origin.root, "maven", path, counter_bytes(100))
        origin.behave("/maven" + path, headers={"Cache-Control": cc})
        yield fetch(gw.port, "repo1.maven.org", path)
        yield fetch(gw.port, "repo1.maven.org", path)
        assert origin.count("/maven" + path) == 2, name


@pytest_twisted.inlineCallbacks
def test_head_on_miss_and_hit(origin, start_gateway):
    path = "/debian/pool/main/h/head/head_1.0_all.deb"
    put_object(origin.root, "debian", path, counter_bytes(4096))
    gw = start_gateway(origin.url)
    head = yield fetch(gw.port, "deb.debian.org", path, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "4096"
    yield sleep(0.1)
    get = yield fetch(gw.port, "deb.debian.org", path)
    assert get.body == counter_bytes(4096) and get.headers["x-cache"] == "HIT"
    assert origin.count("/debian" + path) == 1


@pytest_twisted.inlineCallbacks
def test_unsafe_method_passes_through_and_invalidates(origin, start_gateway):
    path = "/maven2/org/ex/put/1.0/put-1.0.jar"
    put_object(origin.root, "maven", path, counter_bytes(100))
    gw = start_gateway(origin.url)
    yield fetch(gw.port, "repo1.maven.org", path)
    origin.behave("/maven" + path, status=201, times=1)
    post = yield fetch(gw.port, "repo1.maven.org", path, method="POST")
    assert post.headers["x-cache"] == "PASS"
    assert origin.requests[-1].method == "POST"
    after = yield fetch(gw.port, "repo1.maven.org", path)
    assert after.headers["x-cache"] == "MISS"


@pytest_twisted.inlineCallbacks
def test_npm_audit_is_passed_through_unstored(origin, start_gateway):
    gw = start_gateway(origin.url)
    path = "/-/npm/v1/security/advisories/bulk"
    for _ in range(2):
        reply = yield fetch(gw.port, "registry.npmjs.org", path)
        assert reply.headers["x-cache"] == "PASS"
    assert origin.count("/npm" + path) == 2


@pytest_twisted.inlineCallbacks
def test_a_small_relayed_body_never_touches_the_disk_and_a_big_one_is_spooled(
        origin, start_gateway):
    small, big = counter_bytes(200_000, b"s"), counter_bytes(300_000, b"b")
    put_object(origin.root, "npm", "/-/npm/v1/security/small", small)
    put_object(origin.root, "npm", "/-/npm/v1/security/big", big)
    gw = start_gateway(origin.url)
    partial = gw.store.partial_dir
    before = partial.stat().st_mtime_ns  # a file made or removed there changes it
    reply = yield fetch(gw.port, "registry.npmjs.org", "/-/npm/v1/security/small")
    assert reply.headers["x-cache"] == "PASS" and reply.body == small
    assert partial.stat().st_mtime_ns == before, "a partial file for a small relayed body"
    reply = yield fetch(gw.port, "registry.npmjs.org", "/-/npm/v1/security/big")
    assert reply.headers["x-cache"] == "PASS" and reply.body == big
    assert partial.stat().st_mtime_ns != before  # followed from a file, not held in memory
    assert os.listdir(partial) == []


@pytest_twisted.inlineCallbacks
def test_lru_eviction_at_the_size_limit(origin, start_gateway):
    names = [f"/maven2/org/ex/lru/1.0/lru-{i}.jar" for i in range(4)]
    for i, name in enumerate(names):
        put_object(origin.root, "maven", name, counter_bytes(1_000_000, bytes([i])))
    gw = start_gateway(origin.url, size_limit=3_200_000)  # 3 bodies + the database
    for name in names[:3]:
        yield fetch(gw.port, "repo1.maven.org", name)
    yield fetch(gw.port, "repo1.maven.org", names[0])  # 0 is now the most recently used
    yield fetch(gw.port, "repo1.maven.org", names[3])  # over the limit: evicts 1, the LRU
    yield sleep(0.1)
    counts = [origin.count("/maven" + n) for n in names]
    assert counts == [1, 1, 1, 1]
    for name in (names[0], names[3]):
        reply = yield fetch(gw.port, "repo1.maven.org", name)
        assert reply.headers["x-cache"] == "HIT", name
    reply = yield fetch(gw.port, "repo1.maven.org", names[1])
    assert reply.headers["x-cache"] == "MISS"
    assert gw.store.volume() <= 3_200_000 + 1_000_000 + 200_000  # the limit, one object, sqlite


@pytest_twisted.inlineCallbacks
def test_apt_indexes_follow_their_suites_inrelease(origin, start_gateway):
    suite = "/debian/dists/demo/"
    put_object(origin.root, "debian", suite + "InRelease", b"generation 1")
    put_object(origin.root, "debian", suite + "main/binary-amd64/Packages", b"packages 1")
    gw = start_gateway(origin.url,
                       rules={"debian": (Rule("/InRelease$", Policy.REVALIDATE, 0),)})
    yield fetch(gw.port, "deb.debian.org", suite + "InRelease")
    yield fetch(gw.port, "deb.debian.org", suite + "main/binary-amd64/Packages")
    hit = yield fetch(gw.port, "deb.debian.org", suite + "main/binary-amd64/Packages")
    assert hit.headers["x-cache"] == "HIT"
    yield sleep(1.1)  # Last-Modified has one-second resolution
    put_object(origin.root, "debian", suite + "InRelease", b"generation 2")
    put_object(origin.root, "debian", suite + "main/binary-amd64/Packages", b"packages 2")
    release = yield fetch(gw.port, "deb.debian.org", suite + "InRelease")
    assert release.body == b"generation 2"
    packages = yield fetch(gw.port, "deb.debian.org", suite + "main/binary-amd64/Packages")
    assert packages.body == b"packages 2", "an index of the old generation was served"


@pytest_twisted.inlineCallbacks
def test_an_origin_that_is_the_gateway_itself_is_refused_not_looped(start_gateway):
    from tests.processes import free_port
    port = free_port()
    gw = start_gateway(f"http://127.0.0.1:{port}", http_port=port)
    reply = yield fetch(gw.port, "pypi.org", "/simple/loop/")
    assert reply.status == 502 and b"resolves to this gateway" in reply.body
    assert gw.service.stats.total.requests["ERROR"] == 1, "the gateway fetched from itself"


@pytest_twisted.inlineCallbacks
def test_upstream_silence_times_out(origin, start_gateway):
    path = "/maven2/org/ex/stall/1.0/stall-1.0.jar"
    put_object(origin.root, "maven", path, counter_bytes(3_000_000))
    gw = start_gateway(origin.url, idle_timeout=0.5, connect_timeout=0.5)
    origin.behave("/maven" + path, delay_headers=5, times=1)
    reply = yield fetch(gw.port, "repo1.maven.org", path)
    assert reply.status == 504
    origin.behave("/maven" + path, slow_bytes_per_s=1, times=1)  # a byte a second: stalled
    head, body, _ = yield raw_get(gw.port, "repo1.maven.org", path)
    assert head.startswith("HTTP/1.1 200") and len(body) < 3_000_000
    yield sleep(0.1)
    assert artifacts(gw) == []  # (its .sha1, fetched first, may be stored)


def artifacts(gw):  # type: ignore[no-untyped-def]
    """Stored objects but Maven checksum sidecars (a release file's miss fetches its .sha1
    first, to check the file against it)."""
    return [e for e in gw.store.entries() if not e.key.endswith(".sha1")]
