"""The registry mirror (gateway/front/registry.py) over real sockets, in front of the
recording fake registry (tests/registry_origin.py): what distribution 2.8 cannot show —
a Bearer realm, a 307 to a CDN host, 429s and 5xx, HEAD vs GET counts, corrupted blobs."""

from __future__ import annotations

import hashlib
import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from gateway.ecosystems.images import object_key
from tests.oci_images import Layout
from tests.registry_gateways import Mirror
from tests.registry_origin import RegistryOrigin


@pytest.fixture
def upstream():  # type: ignore[no-untyped-def]
    origin = RegistryOrigin(reactor)
    layout = Layout()
    single = layout.image("single")
    layout.tag(single, "latest")
    origin.add("library/single", "latest", layout, single)
    multi_layout = Layout()
    multi = multi_layout.index("multi")
    origin.add("owner/multi", "1", multi_layout, multi)
    origin.layouts = {"single": (layout, single), "multi": (multi_layout, multi)}  # type: ignore[attr-defined]
    origin.listen()
    yield origin
    pytest_twisted.blockon(origin.stop())


@pytest.fixture
def mirror(tmp_path, upstream):  # type: ignore[no-untyped-def]
    started = []

    def start(**options):  # type: ignore[no-untyped-def]
        m = Mirror(tmp_path / f"m{len(started)}", upstream.url(), **options)
        started.append(m)
        return m
    yield start
    for m in started:
        pytest_twisted.blockon(m.close())


def _blobs(layout: Layout, manifest_digest: str) -> list[str]:
    manifest = json.loads(layout.blobs[manifest_digest].data)
    return [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]


@pytest_twisted.inlineCallbacks
def test_ping_needs_no_credentials(mirror) -> None:  # type: ignore[no-untyped-def]
    m = mirror()
    reply = yield m.get("/v2/")
    assert reply.status == 200 and "www-authenticate" not in reply.headers
    assert reply.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest_twisted.inlineCallbacks
def test_pull_through_token_and_cdn_then_zero_upstream_gets(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    m = mirror()
    head = yield m.get("/v2/single/manifests/latest", "HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["docker-content-digest"] == top.digest
    assert head.headers["content-length"] == str(len(top.data))
    assert head.headers["content-type"] == top.media_type
    assert upstream.count("GET", "/manifests/") == 0  # a client's HEAD is never a GET
    got = yield m.get(f"/v2/library/single/manifests/{top.digest}")
    assert got.body == top.data and got.headers["docker-content-digest"] == top.digest
    for digest in _blobs(layout, top.digest):
        blob = yield m.get(f"/v2/library/single/blobs/{digest}")
        assert blob.status == 200 and "sha256:" + blob.sha256 == digest
        assert blob.headers["x-cache"] == "MISS"
    # One token for the repository, reused; the CDN never saw a token.
    assert upstream.count("GET", where="token") == 1
    assert upstream.count(where="cdn") == len(_blobs(layout, top.digest))
    assert all("authorization" not in s.headers for s in upstream.seen if s.where == "cdn")
    upstream.reset()
    for digest in [top.digest, *_blobs(layout, top.digest)]:
        kind = "manifests" if digest == top.digest else "blobs"
        again = yield m.get(f"/v2/library/single/{kind}/{digest}")
        assert again.status == 200 and again.headers["x-cache"] == "HIT"
    assert upstream.seen == []


@pytest_twisted.inlineCallbacks
def test_tag_revalidated_by_head_after_ttl(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    m = mirror(tag_ttl=0)
    first = yield m.get("/v2/library/single/manifests/latest")
    assert first.body == top.data and first.headers["x-cache"] == "MISS"
    assert upstream.count("GET", "/manifests/") == 1  # by digest, after the HEAD
    upstream.reset()
    second = yield m.get("/v2/library/single/manifests/latest")
    assert second.body == top.data and second.headers["x-cache"] == "REVALIDATED"
    assert upstream.count("HEAD", "/manifests/latest") == 1
    assert upstream.count("GET") == 0


@pytest_twisted.inlineCallbacks
def test_tag_fresh_within_ttl_costs_nothing(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    m = mirror(tag_ttl=3600)
    yield m.get("/v2/library/single/manifests/latest")
    upstream.reset()
    again = yield m.get("/v2/library/single/manifests/latest")
    assert again.headers["x-cache"] == "HIT" and upstream.seen == []


@pytest_twisted.inlineCallbacks
def test_new_digest_behind_a_tag_is_fetched_once(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    m = mirror(tag_ttl=0)
    yield m.get("/v2/library/single/manifests/latest")
    newer = Layout()
    top = newer.image("single-v2")
    upstream.add("library/single", "latest", newer, top)
    got = yield m.get("/v2/library/single/manifests/latest")
    assert got.body == top.data and got.headers["x-cache"] == "MISS"


@pytest_twisted.inlineCallbacks
def test_stale_if_error_and_404_when_nothing_to_serve(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    _, top = upstream.layouts["single"]
    m = mirror(tag_ttl=0)
    yield m.get("/v2/library/single/manifests/latest")
    for status in (429, 503):
        upstream.fail("/v2/library/", status)
        stale = yield m.get("/v2/library/single/manifests/latest")
        assert stale.status == 200 and stale.body == top.data
        assert stale.headers["x-cache"] == "STALE" and "Stale" in stale.headers["warning"]
        head = yield m.get("/v2/library/single/manifests/latest", "HEAD")
        assert head.status == 200 and head.headers["docker-content-digest"] == top.digest
        unknown = yield m.get("/v2/library/other/manifests/latest")
        assert unknown.status == 404  # never a 502: the daemon falls back
        upstream.heal()
    yield upstream.stop()  # the upstream gone altogether
    yield m.fetcher.close()  # (and the connections to it)
    stale = yield m.get("/v2/library/single/manifests/latest")
    assert stale.status == 200 and stale.headers["x-cache"] == "STALE"
    missing = yield m.get("/v2/library/other/manifests/1")
    assert missing.status == 404
    blob = yield m.get("/v2/library/other/blobs/sha256:" + "0" * 64)
    assert blob.status == 404


@pytest_twisted.inlineCallbacks
def test_offline_serves_what_is_stored(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    _, top = upstream.layouts["single"]
    warm = mirror()
    yield warm.get("/v2/library/single/manifests/latest")
    yield warm.close()
    upstream.reset()
    offline = Mirror(warm.store.directory.parent, upstream.url(), offline=True, tag_ttl=0)
    try:
        got = yield offline.get("/v2/library/single/manifests/latest")
        assert got.body == top.data
        missing = yield offline.get("/v2/library/nope/manifests/latest")
        assert missing.status == 404
    finally:
        yield offline.close()
    assert upstream.seen == []


@pytest_twisted.inlineCallbacks
def test_corrupted_blob_is_never_stored(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    layer = _blobs(layout, top.digest)[-1]
    upstream.corrupt.add(layer)
    m = mirror()
    with pytest.raises(Exception):  # the transfer is aborted, never a complete-looking body
        yield m.get(f"/v2/library/single/blobs/{layer}")
    assert m.store.get(object_key("blobs", layer)) is None
    upstream.corrupt.clear()
    good = yield m.get(f"/v2/library/single/blobs/{layer}")
    assert "sha256:" + good.sha256 == layer
    assert m.store.get(object_key("blobs", layer)) is not None


@pytest_twisted.inlineCallbacks
def test_concurrent_pulls_make_one_get_per_blob(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    m = mirror()
    digests = _blobs(layout, top.digest)
    replies = yield defer.gatherResults([m.get(f"/v2/library/single/blobs/{d}")
                                         for d in digests for _ in range(10)])
    assert all("sha256:" + r.sha256 == d for r, d in
               zip(replies, [d for d in digests for _ in range(10)]))
    for d in digests:
        assert upstream.count("GET", d, where="cdn") == 1
    labels = sorted(r.headers["x-cache"] for r in replies)
    assert labels.count("MISS") == len(digests)


@pytest_twisted.inlineCallbacks
def test_range_on_blobs(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    digest = _blobs(layout, top.digest)[-1]
    data = layout.blobs[digest].data
    m = mirror()
    part = yield m.get(f"/v2/library/single/blobs/{digest}", range="bytes=100-")
    assert part.status == 206 and part.body == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    part = yield m.get(f"/v2/library/single/blobs/{digest}", range="bytes=5-9")
    assert part.status == 206 and part.body == data[5:10]
    bad = yield m.get(f"/v2/library/single/blobs/{digest}", range=f"bytes={len(data)}-")
    assert bad.status == 416


@pytest_twisted.inlineCallbacks
def test_blob_head_is_answered_without_a_get(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    digest = _blobs(layout, top.digest)[-1]
    m = mirror()
    head = yield m.get(f"/v2/library/single/blobs/{digest}", "HEAD")
    assert head.status == 200 and head.headers["docker-content-digest"] == digest
    assert head.headers["content-length"] == str(len(layout.blobs[digest].data))
    assert upstream.count("GET", "/blobs/") == 0 and upstream.count("GET", where="cdn") == 0


@pytest_twisted.inlineCallbacks
def test_index_and_children_by_ns_and_host_routes(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout, index = upstream.layouts["multi"]
    m = mirror()
    by_ns = yield m.get("/v2/owner/multi/manifests/1?ns=ghcr.io")
    assert by_ns.body == index.data and by_ns.headers["docker-content-digest"] == index.digest
    children = [d["digest"] for d in json.loads(index.data)["manifests"]]
    for child in children:
        got = yield m.get(f"/v2/ghcr.io/owner/multi/manifests/{child}")
        assert hashlib.sha256(got.body).hexdigest() == child[7:]
        assert got.headers["content-type"] == layout.blobs[child].media_type
    # Stored once by digest, whatever the route.
    upstream.reset()
    again = yield m.get(f"/v2/owner/multi/manifests/{index.digest}?ns=ghcr.io")
    assert again.headers["x-cache"] == "HIT" and upstream.seen == []


@pytest_twisted.inlineCallbacks
def test_unknown_registry_and_other_apis_are_404(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    m = mirror()
    for path in ("/v2/x/manifests/1?ns=registry.example.com", "/v2/_catalog",
                 "/v2/library/single/tags/list"):
        reply = yield m.get(path)
        assert reply.status == 404, path
    push = yield m.get("/v2/library/single/manifests/latest", "PUT")
    assert push.status == 405
    assert upstream.seen == []


@pytest_twisted.inlineCallbacks
def test_refusals_pass_on_and_credentials_are_relayed_uncached(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    _, top = upstream.layouts["single"]
    m = mirror()
    upstream.fail("/token", 403)  # no anonymous token: the 401 is passed on
    refused = yield m.get("/v2/library/single/manifests/latest")
    assert refused.status == 401
    upstream.heal()
    upstream.auth = False
    relayed = yield m.get(f"/v2/library/single/manifests/{top.digest}",
                          authorization="Bearer client-token")
    assert relayed.status == 200 and relayed.headers["x-cache"] == "PASS"
    assert any(s.headers.get("authorization") == "Bearer client-token" for s in upstream.seen)
    assert m.store.get(object_key("manifests", top.digest)) is None


@pytest_twisted.inlineCallbacks
def test_service_wires_the_mirror(tmp_path, upstream) -> None:  # type: ignore[no-untyped-def]
    """``[images] listen`` in make_service: the gateway's store and stats, and a port
    already taken is an error in the log, not a failed start."""
    from dataclasses import replace as _replace

    from gateway.config import ImagesConfig
    from gateway.ecosystems.images import REGISTRIES
    from tests.gateways import RunningGateway, gateway_config
    from tests.http_client import fetch
    from tests.oci_images import ACCEPT_ALL
    _, top = upstream.layouts["single"]
    registries = tuple(_replace(r, origin=upstream.url()) if r.name == "dockerhub" else r
                       for r in REGISTRIES)
    config = _replace(gateway_config(tmp_path / "state", "http://127.0.0.1:9"),
                      images=ImagesConfig(("127.0.0.1", 0), 60, registries))
    gw = RunningGateway(config)
    try:
        port = gw.service.ports("images")[0]
        reply = yield fetch(port, "127.0.0.1", "/v2/library/single/manifests/latest",
                            {"accept": ACCEPT_ALL})
        assert reply.status == 200 and reply.body == top.data
        assert gw.service.stats.by_ecosystem["dockerhub"].requests["MISS"] == 1
        assert gw.store.get(object_key("manifests", top.digest)) is not None
        admin = gw.service.ports("admin")[0]
        stats = yield fetch(admin, "127.0.0.1", "/api/stats")
        stats = json.loads(stats.body)
        assert stats["listeners"]["images"] == [port]
        assert stats["images"]["registries"]["dockerhub"]["pulls"] == 1
        assert stats["gateway"]["ecosystems"]["dockerhub"]["requests"] == {"MISS": 1}
        metrics = yield fetch(admin, "127.0.0.1", "/metrics")
        assert b'cachegate_registry_upstream_requests_total{registry="dockerhub",' \
               b'request="GET manifests"} 1.0' in metrics.body
        assert b'cachegate_registry_tag_checks_total{outcome="new",registry="dockerhub"} 1.0' \
            in metrics.body or b'registry="dockerhub",outcome="new"' in metrics.body
        taken = _replace(config, images=ImagesConfig(("127.0.0.1", port), 60, registries),
                         server=_replace(config.server, state_dir=tmp_path / "other"))
        second = RunningGateway(taken)  # starts; its mirror port is taken
        try:
            assert second.service.ports("images") == [] and second.port > 0
        finally:
            yield second.service.stopService()
    finally:
        yield gw.service.stopService()


@pytest_twisted.inlineCallbacks
def test_summary_counts_pulls_and_tag_checks(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    m = mirror(tag_ttl=0)
    yield m.get("/v2/library/single/manifests/latest")
    yield m.get("/v2/library/single/manifests/latest")
    hub = m.mirror.summary()["registries"]["dockerhub"]
    assert hub["pulls"] == 1  # one manifest GET upstream; the rest were HEADs
    assert hub["upstream"]["HEAD manifests"] >= 2
    assert hub["tag_checks"] == {"new": 1, "same": 1}


@pytest_twisted.inlineCallbacks
def test_stored_objects_are_listed_as_images(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    _, top = upstream.layouts["single"]
    m = mirror()
    yield m.get("/v2/library/single/manifests/latest")
    entry = m.store.get(object_key("manifests", top.digest))
    assert entry is not None and entry.meta.ecosystem == "images"
    assert entry.meta.extra == {"registry": "dockerhub", "repository": "library/single"}
    assert entry.meta.sha256 == top.digest[7:]
    assert entry.meta.url == f"docker.io/library/single/manifests/{top.digest}"
    from gateway.ops.admin import clear_cache, select_entries
    assert [e.key for e in select_entries(m.store, "images", "docker.io/library/single")] == \
        [entry.key]
    assert select_entries(m.store, "images", "docker.io/library/other") == []
    assert clear_cache(m.store, "images", "docker.io/library/single")["deleted"] == 1
    assert m.store.get(object_key("manifests", top.digest)) is None


@pytest_twisted.inlineCallbacks
def test_range_while_the_blob_fills_and_one_token_for_a_herd(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    layout = Layout()
    top = layout.image("filling", layer_sizes=(400_000,))
    upstream.add("library/filling", "latest", layout, top)
    digests = _blobs(layout, top.digest)
    layer = digests[-1]
    data = layout.blobs[layer].data
    upstream.stall[layer] = 200_000
    m = mirror()
    whole = m.get(f"/v2/library/filling/blobs/{layer}")  # starts the fill, which stalls
    herd = [m.get(f"/v2/library/filling/blobs/{d}") for d in digests[:-1] for _ in range(3)]
    part = yield m.get(f"/v2/library/filling/blobs/{layer}", range="bytes=1000-1999")
    assert part.status == 206 and part.body == data[1000:2000]  # from the partial file
    yield defer.gatherResults(herd)
    assert upstream.count("GET", where="token") == 1
    whole.addErrback(lambda _: None)
    yield m.close()  # the stalled fill is abandoned


@pytest_twisted.inlineCallbacks
def test_a_tls_hello_is_refused_at_once(mirror) -> None:  # type: ignore[no-untyped-def]
    """podman and skopeo try https on an ``insecure`` mirror first: they must not wait for
    a handshake timeout before falling back to http."""
    import socket
    m = mirror()

    def hello() -> bytes:
        with socket.create_connection(("127.0.0.1", m.port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""
    from twisted.internet import threads
    assert (yield threads.deferToThread(hello)) == b""
    ping = yield m.get("/v2/")
    assert ping.status == 200


@pytest_twisted.inlineCallbacks
def test_credentials_file_goes_to_the_token_realm_only(tmp_path, upstream, capsys) -> None:  # type: ignore[no-untyped-def]
    import base64
    secret = tmp_path / "hub.cred"
    secret.write_text("robot:s3cret-passw0rd\n")
    m = Mirror(tmp_path / "m", upstream.url(), credentials={"dockerhub": str(secret)})
    try:
        reply = yield m.get("/v2/library/single/manifests/latest")
        assert reply.status == 200
    finally:
        yield m.close()
    basic = "Basic " + base64.b64encode(b"robot:s3cret-passw0rd").decode()
    token_requests = [s for s in upstream.seen if s.where == "token"]
    assert token_requests and all(s.headers.get("authorization") == basic
                                  for s in token_requests)
    to_registry = [s for s in upstream.seen if s.where == "registry"]
    assert "authorization" not in to_registry[0].headers  # met the challenge
    assert all(s.headers["authorization"].startswith("Bearer ") for s in to_registry[1:])
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err


@pytest_twisted.inlineCallbacks
def test_a_registry_whose_head_names_no_digest(mirror, upstream) -> None:  # type: ignore[no-untyped-def]
    _, top = upstream.layouts["single"]
    upstream.head_digest = False
    m = mirror(tag_ttl=0)
    first = yield m.get("/v2/library/single/manifests/latest")
    assert first.body == top.data and first.headers["docker-content-digest"] == top.digest
    assert m.store.get(object_key("manifests", top.digest)) is not None
    head = yield m.get("/v2/library/single/manifests/latest", "HEAD")
    assert head.headers["docker-content-digest"] == top.digest


@pytest_twisted.inlineCallbacks
def test_bytes_damaged_on_disk_are_caught_on_the_first_serve(mirror, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    layer = _blobs(layout, top.digest)[-1]
    warm = Mirror(tmp_path / "shared", upstream.url())
    yield warm.get(f"/v2/library/single/blobs/{layer}")
    entry = warm.store.get(object_key("blobs", layer))
    yield warm.close()
    with open(entry.path, "r+b") as body:  # type: ignore[union-attr]
        body.seek(100)
        body.write(b"\0")
    upstream.reset()
    again = Mirror(tmp_path / "shared", upstream.url())  # a new process over the same store
    try:
        reply = yield again.get(f"/v2/library/single/blobs/{layer}")
        assert "sha256:" + reply.sha256 == layer and reply.headers["x-cache"] == "MISS"
        assert upstream.count("GET", layer, where="cdn") == 1
        hit = yield again.get(f"/v2/library/single/blobs/{layer}")
        assert hit.headers["x-cache"] == "HIT" and "sha256:" + hit.sha256 == layer
    finally:
        yield again.close()
