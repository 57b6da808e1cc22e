"""Integrity on fill (issue 15): each artifact is checked against the digest its own index
published, once the gateway has stored that index; a body that disagrees is refused like a
truncated one; an immutable URL whose bytes change is drift.  Real sockets, the fixture
origin, a real client (twisted's Agent) that must see an aborted transfer."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.web.client import ResponseFailed

from gateway.cache.verify import find_problems
from tests.fixtures import NPM_CORGI_ACCEPT, counter_bytes
from tests.http_client import fetch

# (ecosystem = origin folder, index host, index path, index headers, artifact host, path)
CASES = {
    "npm": ("npm", "registry.npmjs.org", "/cachegate-fixture", {"accept": NPM_CORGI_ACCEPT,
                                                                 "accept-encoding": "gzip"},
            "registry.npmjs.org", "/cachegate-fixture/-/cachegate-fixture-1.0.0.tgz"),
    "crates": ("crates", "index.crates.io", "/ca/ch/cachegate-fixture", {},
               "static.crates.io", "/crates/cachegate-fixture/1.0.0/download"),
    "maven": ("maven", "repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar.sha1",
              {}, "repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar"),
    "debian": ("debian", "deb.debian.org", "/debian/dists/bookworm/main/binary-amd64/Packages.xz",
               {}, "deb.debian.org",
               "/debian/pool/main/h/hello-cachegate/hello-cachegate_1.0_all.deb"),
    "rubygems": ("rubygems", "rubygems.org", "/info/cachegate-fixture", {},
                 "rubygems.org", "/gems/cachegate-fixture-1.0.0.gem"),
}


def _case(fixtures, name):  # type: ignore[no-untyped-def]
    eco, index_host, index_path, headers, host, path = CASES[name]
    try:
        artifact = fixtures.get(eco, path)
    except KeyError:
        pytest.skip(f"the fixture tree has no {eco} tree here (its builder is missing)")
    return eco, index_host, index_path, headers, host, path, artifact


def _stored(gw, host, path):  # type: ignore[no-untyped-def]
    return [e for e in gw.store.entries() if e.meta.url == host + path]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest_twisted.inlineCallbacks
def test_an_artifact_is_checked_against_the_index_the_gateway_stored(name, origin, fixtures,
                                                                      start_gateway):
    eco, index_host, index_path, headers, host, path, artifact = _case(fixtures, name)
    gw = start_gateway(origin.url)
    index = yield fetch(gw.port, index_host, index_path, headers)
    assert index.status == 200
    reply = yield fetch(gw.port, host, path)
    assert reply.status == 200 and reply.sha256 == artifact.sha256
    [entry] = _stored(gw, host, path)
    assert entry.meta.extra["verified"] and entry.meta.extra["verified"] != "unverified", \
        entry.meta.extra
    assert doctor_integrity(gw).ok is True
    assert [e.key for e in gw.store.find_sha256(artifact.sha256)] == [entry.key]
    assert origin.count(f"/{eco}{path}") == 1


@pytest.mark.parametrize("name", sorted(CASES))
@pytest_twisted.inlineCallbacks
def test_bytes_that_disagree_with_the_index_are_aborted_and_never_stored(name, origin, fixtures,
                                                                          start_gateway):
    eco, index_host, index_path, headers, host, path, artifact = _case(fixtures, name)
    gw = start_gateway(origin.url)
    yield fetch(gw.port, index_host, index_path, headers)
    origin.behave(f"/{eco}{path}", body=counter_bytes(artifact.size, b"tampered"))
    with pytest.raises(ResponseFailed):  # the client's transfer is cut, never complete
        yield fetch(gw.port, host, path)
    assert _stored(gw, host, path) == []
    integrity = gw.service.gateway.flights.integrity
    assert integrity.counts["mismatch"] == 1
    [event] = integrity.events
    assert event.kind == "mismatch" and event.url == host + path and event.refused
    assert find_problems(list(gw.store.entries()))[2] == []  # cache verify stays clean
    check = doctor_integrity(gw)
    assert check.ok is False and "1 mismatch" in check.detail and host + path in check.detail


def doctor_integrity(gw):  # type: ignore[no-untyped-def]
    """doctor's integrity check, judged on the running gateway's /healthz document."""
    from pathlib import Path

    from gateway.ops.admin import AdminService
    from gateway.ops.doctor import Situation, check_integrity
    api = next(child for child in gw.service if isinstance(child, AdminService)).api
    return check_integrity(Situation(gw.config, [], api.health(), None, Path("/nonexistent"),
                                     None, "example.com", 1.0))


@pytest_twisted.inlineCallbacks
def test_without_its_index_an_artifact_is_stored_unverified(origin, fixtures, start_gateway):
    path = "/cachegate-fixture/-/cachegate-fixture-1.0.0.tgz"
    gw = start_gateway(origin.url)
    reply = yield fetch(gw.port, "registry.npmjs.org", path)
    assert reply.status == 200
    [entry] = _stored(gw, "registry.npmjs.org", path)
    assert entry.meta.extra["verified"] == "unverified"


@pytest_twisted.inlineCallbacks
def test_drift_new_bytes_for_an_immutable_url_are_refused_unless_accepted(origin, fixtures,
                                                                          start_gateway):
    host, path = "registry.npmjs.org", "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz"
    first = fixtures.get("npm", path)
    gw = start_gateway(origin.url)
    yield fetch(gw.port, host, path)
    [entry] = _stored(gw, host, path)
    gw.store.delete(entry.key)  # evicted, or cleared
    swapped = counter_bytes(first.size + 100, b"republished")
    origin.behave(f"/npm{path}", body=swapped)
    with pytest.raises(ResponseFailed):
        yield fetch(gw.port, host, path)
    integrity = gw.service.gateway.flights.integrity
    assert _stored(gw, host, path) == [] and integrity.counts["drift"] == 1
    assert integrity.events[-1].kind == "drift" and integrity.events[-1].refused
    assert gw.service.gateway.flights.events.drift["npm"] == 1  # the metrics' counter

    integrity.on_drift = "accept"
    reply = yield fetch(gw.port, host, path)
    assert reply.status == 200 and reply.body == swapped
    [entry] = _stored(gw, host, path)
    assert entry.meta.sha256 == hashlib.sha256(swapped).hexdigest()
    assert integrity.counts["drift_accepted"] == 1 and not integrity.events[-1].refused


def test_on_drift_is_read_from_the_config_and_a_bad_value_named(tmp_path):
    from gateway.config import ConfigError, load_config
    good = tmp_path / "good.toml"
    good.write_text('[cache]\non_drift = "accept"\n')
    assert load_config(good).cache.on_drift == "accept"
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\non_drift = "maybe"\n')
    with pytest.raises(ConfigError, match="cache.on_drift"):
        load_config(bad)


@pytest.mark.parametrize("client", ["apt", "npm"])
@pytest_twisted.inlineCallbacks
def test_real_clients_fills_are_verified_against_the_index_they_read(client, origin, fixtures,
                                                                     start_gateway, tmp_path):
    """apt (Packages by-hash, as apt asks for it) and npm (the corgi packument, gzipped):
    every package they fetched is stored verified against its index."""
    from tests.clients import ok, run, through_proxy
    gw = start_gateway(origin.url)
    for argv, kwargs in through_proxy(client, fixtures, f"http://127.0.0.1:{gw.port}", gw.port,
                                      tmp_path):
        ok((yield run(argv, **kwargs)))
    suffix = ".deb" if client == "apt" else ".tgz"
    artifacts = [e for e in gw.store.entries() if e.meta.url.endswith(suffix)]
    assert artifacts
    for entry in artifacts:
        assert entry.meta.extra.get("verified") not in (None, "unverified"), \
            (entry.meta.url, entry.meta.extra)


@pytest_twisted.inlineCallbacks
def test_a_maven_miss_fetches_its_sidecar_first_and_is_checked(origin, fixtures,
                                                               start_gateway):
    """Maven asks for the jar, then its .sha1: the gateway asks for the .sha1 first, so the
    jar is verified, and the client's own .sha1 request costs the origin nothing."""
    host, jar = "repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar"
    gw = start_gateway(origin.url)
    reply = yield fetch(gw.port, host, jar)
    assert reply.status == 200 and reply.sha256 == fixtures.get("maven", jar).sha256
    [entry] = _stored(gw, host, jar)
    assert entry.meta.extra["verified"] == ["sha1 (sidecar)"]
    sidecar = yield fetch(gw.port, host, jar + ".sha1")
    assert sidecar.status == 200 and sidecar.headers["x-cache"] == "HIT"
    assert origin.count(f"/maven{jar}") == origin.count(f"/maven{jar}.sha1") == 1
    assert [r.path for r in origin.requests] == [f"/maven{jar}.sha1", f"/maven{jar}"]

    other = "/maven2/org/cachegate/fixture-dep/1.0/fixture-dep-1.0.jar"
    origin.behave(f"/maven{other}", body=counter_bytes(4096, b"tampered"))
    with pytest.raises(ResponseFailed):
        yield fetch(gw.port, host, other)
    assert _stored(gw, host, other) == []


@pytest_twisted.inlineCallbacks
def test_real_mvn_release_jars_are_verified_against_their_sidecars(origin, fixtures,
                                                                   start_gateway, tmp_path):
    import shutil

    from tests import fixtures as fx
    from tests.clients import need, ok, run
    need(shutil.which("mvn"), "mvn not installed (package maven)")
    need(fx.maven_plugin_repo(), "no maven-dependency-plugin in /usr/share/maven-repo")
    gw = start_gateway(origin.url)
    ok((yield run(fx.mvn_get_args(tmp_path / "m2", "http://repo1.maven.org/maven2",
                                  fx.MAVEN_ARTIFACT, proxy=("127.0.0.1", gw.port)),
                  env=fx.mvn_env())))
    jars = [e for e in gw.store.entries() if e.meta.url.endswith((".jar", ".pom"))]
    assert len(jars) == 4  # fixture and fixture-dep, jar and pom each
    assert all(e.meta.extra.get("verified") == ["sha1 (sidecar)"] for e in jars), \
        [(e.meta.url, e.meta.extra) for e in jars]
    for entry in jars:  # one request each for the file and its .sha1, whoever asked first
        path = "/maven" + entry.meta.url[len("repo1.maven.org"):]
        assert origin.count(path) == origin.count(path + ".sha1") == 1


@pytest_twisted.inlineCallbacks
def test_variants_of_one_url_are_not_drift_and_an_encoded_body_is_not_a_mismatch(
        origin, fixtures, start_gateway):
    """A pom served plain and, to a client that takes gzip, gzip-encoded (Vary:
    Accept-Encoding): two bodies of one immutable URL, neither refused; the encoded one is
    not held to its sidecar's sha1 (that digest is of the plain bytes)."""
    import gzip
    host, pom = "repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.pom"
    plain = fixtures.get("maven", pom).file.read_bytes()
    gw = start_gateway(origin.url)
    origin.behave(f"/maven{pom}", body=plain, headers={"Vary": "Accept-Encoding"})
    first = yield fetch(gw.port, host, pom)
    assert first.status == 200 and first.body == plain
    encoded = gzip.compress(plain, mtime=0)
    origin.behave(f"/maven{pom}", body=encoded, headers={"Vary": "Accept-Encoding",
                                                         "Content-Encoding": "gzip"})
    second = yield fetch(gw.port, host, pom, {"accept-encoding": "gzip"})
    assert second.status == 200 and second.body == encoded
    integrity = gw.service.gateway.flights.integrity
    assert integrity.counts["mismatch"] == integrity.counts["drift"] == 0
    assert len(_stored(gw, host, pom)) == 2
