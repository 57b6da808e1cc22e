"""Alpine packages checked against the ``C:`` of the index cachegate stored
(gateway/ecosystems/alpine.py): the pure parts on the signed fixture repository of
tests/alpine_repo.py, then a gateway in this process between curl-like clients and the
fixture origin.  Real apk runs the same twin in tests/ecosystems/test_apk_client.py."""

from __future__ import annotations

import base64
import gzip
import hashlib
import random

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from gateway.cache.rules import Ecosystem
from gateway.ecosystems.alpine import (APK_IDENTITY, Alpine, ControlStreamSha1,
                                       control_stream_sha1, parse_apkindex, q1_to_hex,
                                       read_index)
from tests import alpine_repo as ar
from tests.fixtures import _gzip, _tar, put_object
from tests.http_client import fetch, raw_get

# The engine that records an index's digests for later fills (issue 15's integrity
# work: gateway/cache/integrity.py); Alpine plugs into it, it does not check by itself.
ENGINE = hasattr(Ecosystem, "digests_in")
needs_engine = pytest.mark.xfail(not ENGINE, strict=True, reason="the integrity engine "
                                 "(Ecosystem.digests_in, gateway/cache/integrity.py) is not in")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> ar.AlpineRepo:  # type: ignore[no-untyped-def]
    return ar.publish_alpine(tmp_path_factory.mktemp("alpine"))


def control_sha1(data: bytes, pieces: int = 1, seed: int = 0) -> str:
    hasher = ControlStreamSha1()
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), pieces - 1))
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        hasher.update(data[start:end])
    return hasher.hexdigest()


def test_q1_checksums() -> None:
    digest = hashlib.sha1(b"x").digest()
    assert q1_to_hex("Q1" + base64.b64encode(digest).decode()) == digest.hex()
    for bad in ("", "Q1", "Q1!!!!", "Q2" + "A" * 28, "Q1" + "A" * 8, "deadbeef"):
        assert q1_to_hex(bad) is None, bad


def test_the_index_gives_each_package_its_control_stream_sha1(repo) -> None:
    known = read_index(repo.index.file.read_bytes())
    assert known == {p.filename: hashlib.sha1(p.control_stream).hexdigest()
                     for p in repo.packages.values()}
    assert read_index(b"not gzip at all") == {}
    assert read_index(gzip.compress(b"\0" * 1024)) == {}
    assert parse_apkindex("C:Q1broken\nP:x\nV:1\n\nP:y\nV:2\n") == {}


@pytest.mark.parametrize("pieces", [1, 2, 7, 300])
def test_the_hasher_finds_the_control_stream_however_the_body_arrives(repo, pieces) -> None:
    for package in repo.packages.values():
        expected = hashlib.sha1(package.control_stream).hexdigest()
        assert control_sha1(package.data, pieces, seed=pieces) == expected


def test_unsigned_packages_and_garbage() -> None:
    """As tests/fixtures.py's v3.19 packages: no signature stream, control first."""
    control = _gzip(_tar([(".PKGINFO", b"pkgname = x\n")], end=False))
    data = _gzip(_tar([("usr/x", b"x")]))
    assert control_sha1(control + data, 3) == hashlib.sha1(control).hexdigest()
    assert control_sha1(b"garbage, not gzip") != hashlib.sha1(b"").hexdigest()
    truncated = ControlStreamSha1()
    truncated.update(control[:10])
    assert truncated.hexdigest() == "not an apk package"


@needs_engine
def test_the_ecosystem_learns_from_indexes_and_checks_packages(repo) -> None:
    alpine = Alpine()
    assert alpine.learns_from(ar.INDEX) and not alpine.learns_from(repo.packages[ar.TOP].path)
    assert alpine.publishes_digests(repo.packages[ar.TOP].path)
    assert not alpine.publishes_digests(ar.INDEX)
    promised = dict(alpine.digests_in(ar.INDEX, repo.index.file.read_bytes()))
    assert {p: (d.algorithm, d.hex, d.source) for p, d in promised.items()} == {
        p.path: (APK_IDENTITY, hashlib.sha1(p.control_stream).hexdigest(), ar.INDEX)
        for p in repo.packages.values()}
    check = alpine.file_digest(APK_IDENTITY, repo.packages[ar.TOP].path)
    assert check is control_stream_sha1 and alpine.file_digest("sha256", ar.INDEX) is None
    for name, package in repo.packages.items():
        assert check(str(repo.object(name).file)) == promised[package.path].hex


@needs_engine
@pytest_twisted.inlineCallbacks
def test_a_package_disagreeing_with_the_stored_index_is_never_stored(origin, repo,
                                                                     start_gateway):
    """The index through the gateway first, as ``apk update`` does; then a package whose
    bytes disagree with its ``C:``: the client's body is cut short and nothing is stored;
    the right bytes later are stored and served."""
    for obj in repo.objects:
        put_object(origin.root, ar.ECOSYSTEM, obj.path, obj.file.read_bytes())
    gw = start_gateway(origin.url)
    index = yield fetch(gw.port, ar.HOST, ar.INDEX)
    assert index.status == 200 and index.body == repo.index.file.read_bytes()
    package = repo.packages["cachegate-lib"]
    bad = ar.tampered(repo, "cachegate-lib")
    put_object(origin.root, ar.ECOSYSTEM, package.path, bad)
    _, body, _ = yield raw_get(gw.port, ar.HOST, package.path)
    assert len(body) < len(bad), "the client must not receive a complete-looking bad body"
    yield task.deferLater(reactor, 0.1, lambda: None)
    assert [e.key for e in gw.store.entries() if e.key.endswith(".apk")] == []
    put_object(origin.root, ar.ECOSYSTEM, package.path, package.data)
    reply = yield fetch(gw.port, ar.HOST, package.path)
    assert reply.body == package.data
    again = yield fetch(gw.port, ar.HOST, package.path)
    assert again.headers["x-cache"] == "HIT" and again.body == package.data
