"""A bounded, seeded mutation fuzzer on the plain HTTP port, the proxy port and the HTTPS
port (issue 19): request heads with random bytes, inserted CR/LF/NUL and ``%2f..``, huge
or duplicate framing headers, non-UTF-8 bytes in any field.

Whatever arrives, the gateway must log no ``critical`` line (a traceback), answer a clean
request on every port afterwards, and send the origin only well-formed requests that stay
inside the upstream's tree.  Bounded by ``CASES`` per port and ``SECONDS`` overall (the
loop stops starting cases then; nothing is asserted about the time); the seed is fixed so
a failure replays (``FUZZ_SEED`` picks another).
"""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import time
from urllib.parse import unquote

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.logger import LogLevel, globalLogPublisher

from gateway.front import client_errors
from tests.dns_helpers import FakeUpstream
from tests.http_client import fetch
from tests.tls_gateways import TlsGateway

SEED = int(os.environ.get("FUZZ_SEED", "19"))
CASES = 120  # per port
SECONDS = 30.0  # the whole run stops starting new cases after this long
PARALLEL = 10  # cases in flight at once (the reactor's thread pool holds 10)
READ_TIMEOUT = 0.5  # for a mutated head that leaves the server waiting for more

OBJECT = "/maven2/org/ex/fuzz/1.0/fuzz-1.0.jar"
HOST = "repo1.maven.org"
BODY = b"the fuzz target"

PLAIN_BASE = [
    f"GET {OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    f"HEAD {OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    f"GET /maven2/org/ex/fuzz/ HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n"
    f"Connection: close\r\n\r\n",
    f"POST {OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nConnection: close"
    f"\r\n\r\nbody",
]
PROXY_BASE = [
    f"GET http://{HOST}{OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    f"CONNECT {HOST}:80 HTTP/1.1\r\nHost: {HOST}:80\r\n\r\n"
    f"GET {OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
]
INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b"%2f..", b"/../", b"%2e%2e/", b"\xc9", b"\xff\xfe",
           b" ", b"\t", b":", b"%00", b"%0d%0a", b"\r\n\r\n", b"@", b"?", b"#", b"\\"]
FRAMING = [b"Content-Length: 0", b"Content-Length: 10", b"Content-Length: -1",
           b"Content-Length: 1, 2", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip",
           b"Host: other.example", b"Host: " + HOST.encode() + b"\xc9", b"Expect: 100-continue",
           b"Connection: keep-alive, Upgrade", b"Upgrade: h2c"]


def mutate(rng: random.Random, head: bytes) -> bytes:
    """One to three mutations of ``head``."""
    data = bytearray(head)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a byte to anything
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = rng.choice(INSERTS)
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3:  # a framing header, often a duplicate
            line = rng.choice(FRAMING) + b"\r\n"
            end = data.find(b"\r\n") + 2
            data[end:end] = line * rng.randint(1, 2)
        elif kind == 4:  # a huge header or target
            end = data.find(b"\r\n") + 2
            data[end:end] = b"X-Big: " + b"a" * rng.choice([5000, 17000, 70000]) + b"\r\n"
        elif kind == 5 and data:  # cut
            del data[at:at + rng.randint(1, 20)]
        else:  # truncate
            data = data[:at]
    return bytes(data)


def plain_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as s:
        return _send_read(s, data)


def tls_exchange(port: int, cafile: str, data: bytes) -> bytes:
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as s:
            return _send_read(s, data)


def _send_read(s: socket.socket, data: bytes) -> bytes:
    chunks = []
    try:
        s.sendall(data)
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (OSError, ssl.SSLError):  # timeouts, resets, a refused TLS stream
        pass
    return b"".join(chunks)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/maven/[\x21-\x7e]*")


def malformed(request) -> str | None:  # type: ignore[no-untyped-def]
    """Why a request the origin received is not a well-formed one inside Maven's tree."""
    if not _TOKEN.fullmatch(request.method):
        return f"method {request.method!r}"
    if not _TARGET.fullmatch(request.path):
        return f"target {request.path!r}"
    decoded = unquote(request.path.partition("?")[0])
    if any(c < " " or c == "\x7f" for c in decoded) or "/../" in decoded + "/":
        return f"decoded target {decoded!r}"
    for name, value in request.headers.items():
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
            return f"header {name!r}: {value!r}"
    return None


@pytest_twisted.inlineCallbacks
def test_mutated_request_heads_never_reach_a_traceback_nor_the_origin_malformed(
        origin, start_tls_gateway):
    target = origin.root / "maven" / OBJECT.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(BODY)
    # Mutated hosts get NXDOMAIN at once: no lookup outlives the test to log in the next.
    names = FakeUpstream(reactor).start()
    gw: TlsGateway = start_tls_gateway(origin.url, proxy=True, forwarders=(names.address,))
    events: list[dict] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    started = time.monotonic()
    try:
        ran = yield run_cases(gw)
    finally:
        globalLogPublisher.removeObserver(observer)
        yield names.stop()
    windows = int((time.monotonic() - started) // client_errors.SECONDS) + 2
    warned = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warned) <= client_errors.LINES * windows, "bad input's warn lines are bounded"
    critical = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert critical == [], [(e.get("log_format"), e.get("log_failure")) for e in critical[:3]]
    bad = [(r, why) for r in origin.requests if (why := malformed(r))]
    assert bad == [], bad[:5]
    print("fuzz cases run:", ran, "origin requests:", len(origin.requests),
          "warn lines:", len(warned), sorted({e.get("log_namespace") for e in warned}))
    assert sum(ran.values()) > 0, ran
    yield answers_cleanly(gw)


@defer.inlineCallbacks
def run_cases(gw: TlsGateway):  # type: ignore[no-untyped-def]
    """Send the mutated heads, ``PARALLEL`` at a time; how many ran per port."""
    rng = random.Random(SEED)
    cases = []
    for port_name in ("plain", "proxy", "https"):
        base = PROXY_BASE if port_name == "proxy" else PLAIN_BASE
        for _ in range(CASES):
            cases.append((port_name, mutate(rng, rng.choice(base).encode())))
    rng.shuffle(cases)
    ran = {"plain": 0, "proxy": 0, "https": 0}
    deadline = time.monotonic() + SECONDS
    for start in range(0, len(cases), PARALLEL):
        if time.monotonic() > deadline:
            break
        batch = cases[start:start + PARALLEL]
        yield defer.gatherResults([threads.deferToThread(_one, gw, name, data)
                                   for name, data in batch])
        for name, _ in batch:
            ran[name] += 1
    return ran


def _one(gw: TlsGateway, port_name: str, data: bytes) -> bytes:
    if port_name == "https":
        return tls_exchange(gw.https_port, str(gw.cafile), data)
    return plain_exchange(gw.port if port_name == "plain" else gw.proxy_port, data)


@defer.inlineCallbacks
def answers_cleanly(gw: TlsGateway):  # type: ignore[no-untyped-def]
    plain = yield fetch(gw.port, HOST, OBJECT)
    assert plain.status == 200 and plain.body == BODY
    proxied = yield fetch(gw.proxy_port, HOST, OBJECT, proxy=True)
    assert proxied.status == 200 and proxied.body == BODY
    clean = f"GET {OBJECT} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    reply = yield threads.deferToThread(tls_exchange, gw.https_port, str(gw.cafile), clean)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(BODY), reply[:200]


def test_the_mutator_is_seeded_and_mutates():
    a = [mutate(random.Random(SEED), PLAIN_BASE[0].encode()) for _ in range(3)]
    b = [mutate(random.Random(SEED), PLAIN_BASE[0].encode()) for _ in range(3)]
    assert a == b and all(m != PLAIN_BASE[0].encode() for m in a)
