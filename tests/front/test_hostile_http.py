"""Hostile input on the HTTP and HTTPS ports: request smuggling shapes, oversized heads,
slowloris, path tricks, foreign hosts and broken TLS.  Each must get a clear error (or a
closed connection), never a crash, never a request to the origin, and the gateway must
serve normally afterwards.

Path tricks (``..``, ``%2e%2e``, NUL) and a Host outside the catalogue are also in
test_cache_http.py; here they are checked on raw sockets against the key space too."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.http_client import fetch
from tests.processes import free_port

OBJECT = "/maven2/org/ex/hostile/1.0/hostile-1.0.jar"


def exchange(port: int, data: bytes, timeout: float = 5.0, pause: float = 0.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes or goes
    quiet for ``timeout``; run in a thread so the in-process gateway keeps serving."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if pause:
            time.sleep(pause)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def status_of(reply: bytes) -> int | None:
    """The status of the first response in ``reply``; None if there was none."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


def responses_in(reply: bytes) -> int:
    return reply.count(b"HTTP/1.1 ")


@pytest.fixture
def hostile(origin, start_gateway):  # type: ignore[no-untyped-def]
    target = origin.root / "maven" / OBJECT.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"the real jar")
    return start_gateway(origin.url)


@pytest_twisted.inlineCallbacks
def still_serves(gw, origin):  # type: ignore[no-untyped-def]
    """The gateway answers a normal request afterwards."""
    reply = yield fetch(gw.port, "repo1.maven.org", OBJECT)
    assert reply.status == 200 and reply.body == b"the real jar"


SMUGGLING = {
    "cl-and-te": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: 4\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                  b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "te-and-cl": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 40\r\n\r\n0\r\n\r\n"
                  b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "double-cl": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: 0\r\n"
                  b"Content-Length: 44\r\n\r\n"
                  b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "cl-list": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: 0, 44\r\n\r\n"
                b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "te-obfuscated": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n"
                      b"Transfer-Encoding: xchunked\r\n\r\n"
                      b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "te-space-before-colon": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n"
                              b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
                              b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "obs-fold": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nX-A: one\r\n"
                 b" Transfer-Encoding: chunked\r\n\r\n"
                 b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "negative-cl": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: -1\r\n\r\n"
                    b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "plus-cl": (b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: +44\r\n\r\n"
                b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "bare-lf": (b"GET /simple/a/ HTTP/1.1\nHost: pypi.org\nContent-Length: 44\n\n"
                b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
    "chunk-size-garbage": (b"POST /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0x10\r\n\r\n"
                           b"GET /simple/smuggled/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
@pytest_twisted.inlineCallbacks
def test_request_smuggling_shapes_are_refused_without_a_fetch(hostile, origin, shape):
    reply = yield threads.deferToThread(exchange, hostile.port, SMUGGLING[shape], 3.0)
    assert status_of(reply) in (400, None), reply[:200]
    assert responses_in(reply) <= 1, "a second, smuggled request was answered"
    assert origin.requests == [], [r.path for r in origin.requests]
    yield still_serves(hostile, origin)


@pytest.mark.parametrize("what", ["url", "one-header", "many-headers", "total-head"])
@pytest_twisted.inlineCallbacks
def test_oversized_heads_are_refused_without_a_fetch(hostile, origin, what):
    head = {
        "url": b"GET /simple/" + b"a" * 70_000 + b"/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
        "one-header": b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\nX-Big: " +
                      b"b" * 70_000 + b"\r\n\r\n",
        "many-headers": b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n" +
                        b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n",
        "total-head": b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n" +
                      b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(40)) + b"\r\n",
    }[what]
    reply = yield threads.deferToThread(exchange, hostile.port, head, 3.0)
    assert status_of(reply) in (400, 414, 431, None), reply[:200]
    assert origin.requests == []
    yield still_serves(hostile, origin)


@pytest_twisted.inlineCallbacks
def test_slowloris_head_is_cut_off_by_the_header_timeout(hostile, origin, monkeypatch):
    from gateway.front import fast_path
    monkeypatch.setattr(fast_path, "HEADER_TIMEOUT", 1.0)

    def trickle() -> tuple[float, bytes]:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", hostile.port), timeout=10) as s:
            s.sendall(b"GET /simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n")
            try:
                for i in range(40):  # one header line every 0.2 s: never idle, never done
                    s.sendall(b"X-%d: v\r\n" % i)
                    time.sleep(0.2)
                    s.setblocking(False)
                    try:
                        if s.recv(1024) == b"":
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        s.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return time.monotonic() - start, b""

    elapsed, _ = yield threads.deferToThread(trickle)
    assert elapsed < 3.5, f"a trickled head kept the connection {elapsed:.1f} s"
    assert origin.requests == []
    yield still_serves(hostile, origin)


@pytest_twisted.inlineCallbacks
def test_a_slow_but_complete_head_within_the_timeout_is_served(hostile, origin, monkeypatch):
    from gateway.front import fast_path
    monkeypatch.setattr(fast_path, "HEADER_TIMEOUT", 2.0)
    request = f"GET {OBJECT} HTTP/1.1\r\nHost: repo1.maven.org\r\nConnection: close\r\n\r\n"

    def dribble() -> bytes:
        with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as s:
            for part in (request[:20], request[20:40], request[40:]):
                s.sendall(part.encode())
                time.sleep(0.3)
            return s.makefile("rb").read()

    reply = yield threads.deferToThread(dribble)
    assert status_of(reply) == 200 and reply.endswith(b"the real jar")


@pytest_twisted.inlineCallbacks
def test_keep_alive_connection_idle_between_requests_is_not_a_slowloris(hostile, origin,
                                                                       monkeypatch):
    """The header timeout runs from a request's first byte, not from the last response."""
    from gateway.front import fast_path
    monkeypatch.setattr(fast_path, "HEADER_TIMEOUT", 0.5)
    request = f"GET {OBJECT} HTTP/1.1\r\nHost: repo1.maven.org\r\n\r\n".encode()

    def two_requests() -> list[bytes]:
        replies = []
        with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as s:
            for _ in range(2):
                s.sendall(request)
                time.sleep(1.0)
                replies.append(s.recv(65536))
        return replies

    first, second = yield threads.deferToThread(two_requests)
    assert status_of(first) == 200 and status_of(second) == 200


PATH_TRICKS = [
    "/simple/../../etc/passwd", "/simple/%2e%2e/%2e%2e/x", "/simple/%2E%2E%2Fx",
    "/a%00b", "/simple/a\x00b/", "//evil.example.org/simple/", "/simple/..%2fx",
    "/simple/.%2e/x", "/%2e%2e/npm/x", "/simple/%252e%252e/x",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
@pytest_twisted.inlineCallbacks
def test_path_tricks_stay_inside_the_key_space_and_the_upstream(hostile, origin, path):
    raw = f"GET {path} HTTP/1.1\r\nHost: pypi.org\r\nConnection: close\r\n\r\n".encode("latin-1")
    reply = yield threads.deferToThread(exchange, hostile.port, raw, 3.0)
    status = status_of(reply)
    assert status is not None, reply[:200]
    for request in origin.requests:  # whatever was fetched stayed under pypi's upstream
        assert request.path.startswith("/pypi/"), request.path
        assert "/../" not in request.path and "\x00" not in request.path
    for entry in hostile.store.entries():
        assert entry.meta.url.startswith("pypi.org/"), entry.meta.url
    yield still_serves(hostile, origin)


@pytest.mark.parametrize("host", ["evil.example.org", "pypi.org.evil.example.org",
                                  "pypi.org@evil.example.org", "127.0.0.1", "localhost",
                                  "pypi.org:80@evil", "", "pypi .org"])
@pytest_twisted.inlineCallbacks
def test_hosts_outside_the_catalogue_are_refused_without_a_fetch(hostile, origin, host):
    raw = f"GET /simple/a/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    reply = yield threads.deferToThread(exchange, hostile.port, raw, 3.0)
    assert status_of(reply) in (400, 403), reply[:200]
    assert origin.requests == []
    absolute = (f"GET http://{host}/simple/a/ HTTP/1.1\r\nHost: pypi.org\r\n"
                f"Connection: close\r\n\r\n").encode()
    reply = yield threads.deferToThread(exchange, hostile.port, absolute, 3.0)
    assert status_of(reply) in (400, 403), reply[:200]
    assert origin.requests == []
    yield still_serves(hostile, origin)


TLS_GARBAGE = {
    "not-tls": b"GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
    "truncated-record": bytes.fromhex("160301") + b"\xff\xff" + b"\x01" * 10,
    "bad-handshake-length": bytes.fromhex("1603010010") + b"\x01\xff\xff\xff" + b"\x00" * 12,
    "ssl2-hello": bytes.fromhex("802e0103010015000000100000030000010700c0"),
    "random": bytes(range(256)) * 4,
    "zero-length-record": bytes.fromhex("1603010000"),
}


@pytest.mark.parametrize("shape", sorted(TLS_GARBAGE))
@pytest_twisted.inlineCallbacks
def test_malformed_tls_client_hello_is_dropped(origin, start_gateway, shape):
    https = free_port()
    gw = start_gateway(origin.url, https_port=https)
    reply = yield threads.deferToThread(exchange, https, TLS_GARBAGE[shape], 3.0)
    assert b"HTTP/1.1 200" not in reply
    assert origin.requests == []

    def handshake() -> str:
        context = ssl.create_default_context(cafile=str(gw.config.server.state_dir / "ca" /
                                                        "ca.crt"))
        with socket.create_connection(("127.0.0.1", https), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="pypi.org") as tls:
                return tls.version() or ""

    assert (yield threads.deferToThread(handshake)).startswith("TLS")


@pytest_twisted.inlineCallbacks
def test_a_pipelined_head_waiting_behind_a_long_response_is_not_timed_out(hostile, origin,
                                                                         monkeypatch):
    """apt pipelines: the next head sits in the buffer while a slow body is sent; the
    header timeout starts only when that head is read."""
    from gateway.front import fast_path
    monkeypatch.setattr(fast_path, "HEADER_TIMEOUT", 0.5)
    slow = "/maven2/org/ex/hostile/1.0/slow-1.0.jar"
    target = origin.root / "maven" / slow.lstrip("/")
    target.write_bytes(b"s" * 300_000)
    origin.behave("/maven" + slow, slow_bytes_per_s=200_000)  # ~1.5 s
    heads = (f"GET {slow} HTTP/1.1\r\nHost: repo1.maven.org\r\n\r\n"
             f"GET {OBJECT} HTTP/1.1\r\nHost: repo1.maven.org\r\nConnection: close\r\n\r\n")
    reply = yield threads.deferToThread(exchange, hostile.port, heads.encode(), 10.0)
    assert responses_in(reply) == 2 and reply.endswith(b"the real jar"), reply[-200:]
