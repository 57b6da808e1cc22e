"""Cache integrity, privacy and secrets: what one client sends or receives privately never
reaches another, a variant never reaches the wrong Accept, and the CA key stays where it is.

Already covered elsewhere (the report links them): Authorization and Set-Cookie never
stored (test_cache_http.py), variants kept apart (test_cache_http.py), ``cache verify``
drops a corrupt body (test_admin.py), CA files 0600 in 0700 (test_tls_ca.py), admin
mutations need the token beyond loopback (test_admin.py)."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.logger import formatEvent, globalLogPublisher

from tests.fixtures import put_object
from tests.http_client import fetch, raw_get

JAR = "/maven2/org/ex/private/1.0/private-1.0.jar"


@pytest.fixture
def log_text():  # type: ignore[no-untyped-def]
    """All log output (every level, with the event's fields) while the test runs."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(formatEvent(event) or "")
        lines.append(repr({k: v for k, v in event.items() if not k.startswith("log_")}))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.inlineCallbacks
def test_a_credentialed_request_in_flight_is_never_shared(origin, start_gateway):
    """An authenticated request and a plain one for the same key at the same moment: two
    upstream requests, and only the authenticated one carries the credentials."""
    put_object(origin.root, "maven", JAR, b"jar bytes")
    origin.behave("/maven" + JAR, delay_headers=0.3)
    gw = start_gateway(origin.url)
    authed, plain, cookie = yield defer.gatherResults([
        fetch(gw.port, "repo1.maven.org", JAR, {"Authorization": "Basic dXNlcjpwdw=="}),
        fetch(gw.port, "repo1.maven.org", JAR),
        fetch(gw.port, "repo1.maven.org", JAR, {"Cookie": "session=s3cret"})])
    assert authed.headers["x-cache"] == "PASS" and cookie.headers["x-cache"] == "PASS"
    assert plain.headers["x-cache"] == "MISS"
    assert origin.count("/maven" + JAR) == 3
    sent = [r.headers for r in origin.requests]
    assert sum("authorization" in h for h in sent) == 1
    assert sum("session=s3cret" in h.get("cookie", "") for h in sent) == 1


@pytest_twisted.inlineCallbacks
def test_cookie_requests_are_neither_stored_nor_served_from_the_store(origin, start_gateway):
    put_object(origin.root, "maven", JAR, b"jar bytes")
    gw = start_gateway(origin.url)
    for _ in range(2):
        reply = yield fetch(gw.port, "repo1.maven.org", JAR, {"Cookie": "session=s3cret"})
        assert reply.headers["x-cache"] == "PASS"
    assert list(gw.store.entries()) == []
    yield fetch(gw.port, "repo1.maven.org", JAR)  # stored now
    reply = yield fetch(gw.port, "repo1.maven.org", JAR, {"Cookie": "session=s3cret"})
    assert reply.headers["x-cache"] == "PASS", "a cookie request must reach the origin"


@pytest_twisted.inlineCallbacks
def test_a_set_cookie_response_is_not_handed_to_a_joined_client(origin, start_gateway):
    """Two clients of one key while the upstream answers with Set-Cookie: nobody receives
    that session (Set-Cookie is never replayed: package clients do not need one, and a
    shared download must not hand one client's session to another)."""
    put_object(origin.root, "maven", JAR, b"jar bytes")
    origin.behave("/maven" + JAR, delay_headers=0.3, headers={"Set-Cookie": "session=first"},
                  times=1)
    gw = start_gateway(origin.url)
    first, second = yield defer.gatherResults([fetch(gw.port, "repo1.maven.org", JAR),
                                               fetch(gw.port, "repo1.maven.org", JAR)])
    cookies = [r.headers.get("set-cookie") for r in (first, second)]
    assert cookies == [None, None], cookies
    assert first.body == second.body == b"jar bytes"
    assert list(gw.store.entries()) == [] or all(
        "set-cookie" not in dict((k.lower(), v) for k, v in e.meta.headers)
        for e in gw.store.entries())


@pytest_twisted.inlineCallbacks
def test_a_stored_variant_is_never_served_to_another_accept(origin, fixtures, start_gateway):
    gw = start_gateway(origin.url)
    corgi = {"Accept": "application/vnd.npm.install-v1+json"}
    stored = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture", corgi)
    for accept in ("application/json", "*/*", "application/vnd.npm.install-v1+json; q=0",
                   "text/html"):
        reply = yield fetch(gw.port, "registry.npmjs.org", "/cachegate-fixture",
                            {"Accept": accept})
        if reply.status == 200:
            assert reply.headers["x-cache"] == "MISS", accept
            if "vnd.npm.install-v1" not in reply.headers.get("content-type", ""):
                assert reply.body != stored.body, accept


@pytest_twisted.inlineCallbacks
def test_the_ca_key_is_never_served_and_never_logged(origin, start_gateway, log_text):
    gw = start_gateway(origin.url)
    key_path = gw.config.server.state_dir / "ca" / "ca.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.parent.stat().st_mode & 0o777 == 0o700
    key = key_path.read_bytes()
    secret_lines = [line for line in key.decode().splitlines() if "-----" not in line]
    for host in ("cachegate.internal", "pypi.org", "repo1.maven.org"):
        for path in ("/ca.key", "/ca/ca.key", "/../ca/ca.key", "/%2e%2e/ca/ca.key",
                     "/ca.crt/../ca.key", "/ca.crt?../ca.key", "/state/ca/ca.key"):
            head, body, _ = yield raw_get(gw.port, host, path)
            assert b"PRIVATE KEY" not in body and not any(s.encode() in body
                                                          for s in secret_lines[:3])
    admin = gw.service.ports("admin")[0]

    def admin_get(path: str) -> bytes:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
                return r.read()
        except Exception as e:  # 4xx: read the error body too
            return getattr(e, "read", lambda: b"")()

    for path in ("/ca.crt", "/ca.key", "/api/stats", "/metrics", "/api/cache", "/"):
        body = yield threads.deferToThread(admin_get, path)
        assert b"PRIVATE KEY" not in body, path
    crt = yield threads.deferToThread(admin_get, "/ca.crt")
    assert b"BEGIN CERTIFICATE" in crt
    text = "\n".join(log_text)
    assert "PRIVATE KEY" not in text
    assert not any(line in text for line in secret_lines if len(line) > 20)


@pytest_twisted.inlineCallbacks
def test_credentials_are_never_logged(origin, start_gateway, log_text):
    put_object(origin.root, "maven", JAR, b"jar bytes")
    gw = start_gateway(origin.url)
    yield fetch(gw.port, "repo1.maven.org", JAR, {"Authorization": "Bearer tok-3b1f9",
                                                  "Cookie": "session=ck-77a2"})
    yield fetch(gw.port, "repo1.maven.org", JAR + "?token=q-91c4")  # may be logged: a URL
    text = "\n".join(log_text)
    assert "tok-3b1f9" not in text and "ck-77a2" not in text


@pytest_twisted.inlineCallbacks
def test_a_body_corrupted_on_disk_is_caught_by_cache_verify(origin, start_gateway):
    """``cache verify`` finds the bytes changed under a stored object (sha256 in Meta)."""
    data = b"wheel bytes " * 1000
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    path = f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/pkg-1.0-py3-none-any.whl"
    put_object(origin.root, "pypi", path, data)
    gw = start_gateway(origin.url)
    yield fetch(gw.port, "files.pythonhosted.org", path)
    (entry,) = list(gw.store.entries())
    with open(entry.path, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    admin = gw.service.ports("admin")[0]

    def verify() -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/api/cache/verify",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    report = yield threads.deferToThread(verify)
    assert "files.pythonhosted.org" + path in json.dumps(report)
    reply = yield fetch(gw.port, "files.pythonhosted.org", path)
    assert reply.body == data and reply.headers["x-cache"] == "MISS"


@pytest_twisted.inlineCallbacks
def test_a_digest_named_body_corrupted_on_disk_is_caught_on_read(origin, start_gateway):
    """Where the URL names the digest (PyPI files), a stored body is re-hashed before this
    process first serves it: damaged bytes are dropped and fetched again, never served."""
    data = b"another wheel " * 5000
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    path = f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/pkg-2.0-py3-none-any.whl"
    small = b"small wheel " * 100
    small_digest = hashlib.blake2b(small, digest_size=32).hexdigest()
    small_path = (f"/packages/{small_digest[:2]}/{small_digest[2:4]}/{small_digest[4:]}/"
                  "small-1.0-py3-none-any.whl")
    put_object(origin.root, "pypi", path, data)
    put_object(origin.root, "pypi", small_path, small)
    gw = start_gateway(origin.url)
    for p in (path, small_path):
        yield fetch(gw.port, "files.pythonhosted.org", p)
    for entry in gw.store.entries():
        with open(entry.path, "r+b") as f:
            f.seek(10)
            f.write(b"X")
    for p, body in ((path, data), (small_path, small)):  # a big one and a fast-path one
        reply = yield fetch(gw.port, "files.pythonhosted.org", p)
        assert reply.body == body and reply.headers["x-cache"] == "MISS", p
        again = yield fetch(gw.port, "files.pythonhosted.org", p)
        assert again.body == body and again.headers["x-cache"] == "HIT", p
    assert origin.count("/pypi" + path) == 2
