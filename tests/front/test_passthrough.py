"""The HTTPS port never breaks a build: a client that rejects our CA is tunnelled to the
real upstream on its next connections (``gateway/passthrough.py``).

"The real upstream" here is the fixture origin behind TLS under a separate test CA, which
stands in for the public roots: the clients trust that CA only, never ours."""

from __future__ import annotations

import socket
import ssl
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet import task
from twisted.internet.task import Clock
from twisted.web import server

from gateway.front.passthrough import NEED_MORE, PassthroughStats, advice, client_hello_sni
from gateway.front.proxy import UntrustedMemo
from tests.fixtures import PYPI_HOST
from tests.origin import PROXY_HOSTS, ByHost, OriginResource
from tests.tls_gateways import SIMPLE_A, need_binary, ok, run
from tls.ca import create_ca
from tls.context import SNIContexts
from tls.leaf import LeafCache


# --- the ClientHello parser ---------------------------------------------------------------

def real_client_hello(name: str | None) -> bytes:
    """The first flight Python's ssl module (OpenSSL) sends for ``name``."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    if name is None:
        context.check_hostname = False
        tls = context.wrap_bio(incoming, outgoing, server_hostname=None)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_of_a_real_client_hello():
    hello = real_client_hello("PyPI.org")
    assert client_hello_sni(hello) == "pypi.org"
    assert client_hello_sni(hello + b"more") == "pypi.org"


def test_incomplete_hello_asks_for_more_at_every_cut():
    hello = real_client_hello("files.pythonhosted.org")
    for cut in range(len(hello)):
        assert client_hello_sni(hello[:cut]) is NEED_MORE, cut


def test_no_sni_and_garbage_are_none():
    assert client_hello_sni(real_client_hello(None)) is None
    assert client_hello_sni(b"GET / HTTP/1.1\r\n\r\n") is None
    hello = bytearray(real_client_hello("pypi.org"))
    hello[5] = 2  # not a client_hello
    assert client_hello_sni(bytes(hello)) is None
    # A record whose ClientHello claims more extensions than it has: no crash.
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00\x00\x02\x13\x01\x01\x00\xff\xff"
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    short = b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello
    assert client_hello_sni(short) is None


def test_untrusted_memo_expires():
    clock = Clock()
    memo = UntrustedMemo(clock.seconds, seconds=10)
    memo.add("172.17.0.5", "pypi.org")
    assert ("172.17.0.5", "pypi.org") in memo and ("172.17.0.6", "pypi.org") not in memo
    clock.advance(10)
    assert ("172.17.0.5", "pypi.org") not in memo


def test_stats_document():
    stats = PassthroughStats()
    stats.rejected[("172.17.0.5", "pypi.org")] += 1
    stats.tunnelled[("172.17.0.5", "pypi.org")] += 2
    assert stats.as_dict() == {"untrusting_clients": [
        {"client": "172.17.0.5", "host": "pypi.org", "rejected": 1, "tunnelled": 2,
         "tunnel_failures": 0}], "rejected": 1, "tunnelled": 2}
    assert advice(stats.as_dict()) == [
        "client 172.17.0.5 does not trust the CA for pypi.org (1 rejected, 2 tunnelled "
        "uncached): run `cachegate trust image IMAGE` for its base image"]
    assert advice(PassthroughStats().as_dict()) == []


# --- end to end -----------------------------------------------------------------------

@pytest.fixture
def public_origin(https_origin, tmp_path):  # noqa: F811
    """The fixture origin over TLS under its own "public" CA: (port, cafile)."""
    public_ca = create_ca(tuple(PROXY_HOSTS), "ecdsa", False, time.time())
    contexts = SNIContexts(LeafCache(public_ca, reactor, "ecdsa"), lambda name: True)
    site = server.Site(ByHost(OriginResource(https_origin)))
    port = reactor.listenSSL(0, site, contexts.options, interface="127.0.0.1")
    cafile = tmp_path / "public-ca.pem"
    cafile.write_bytes(public_ca.cert_pem())
    yield port.getHost().port, cafile
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def point_tunnels_at(gateway, port: int) -> None:  # type: ignore[no-untyped-def]
    gateway.service.passthrough.locate = lambda name: defer.succeed([("127.0.0.1", port)])


def curl_public(gateway, cafile, url_path: str, *extra: str):  # type: ignore[no-untyped-def]
    port = gateway.https_port
    return run(["curl", "-sS", "--fail", "--cacert", str(cafile),
                "--resolve", f"{PYPI_HOST}:{port}:127.0.0.1",
                f"https://{PYPI_HOST}:{port}{url_path}", *extra])


@pytest_twisted.ensureDeferred
async def test_untrusting_client_fails_once_then_retry_is_tunnelled(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])
    done = await curl_public(gateway, public_origin[1], SIMPLE_A, "--retry", "2",
                             "--retry-all-errors", "--retry-delay", "0")
    ok(done)
    assert "cachegate-fixture-a" in done.stdout
    assert "certificate" in done.stderr.lower()  # the first attempt failed, then the retry
    stats = gateway.service.passthrough.stats.as_dict()
    assert stats["rejected"] == 1 and stats["tunnelled"] == 1
    assert stats["untrusting_clients"][0]["host"] == PYPI_HOST
    await until(lambda: gateway.service.stats.total.requests)  # counted at the tunnel's end
    tally = gateway.service.stats.as_dict()
    assert tally["total"]["requests"] == {"PASSTHROUGH": 1}
    assert tally["ecosystems"]["pypi"]["bytes_from_upstream"] > 0
    # Byte for byte: the origin saw the client's own request, nothing went into the cache.
    assert https_origin.count(f"/pypi{SIMPLE_A}") == 1


@pytest_twisted.ensureDeferred
async def test_without_retry_the_first_attempt_fails_and_nothing_is_tunnelled(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])
    done = await curl_public(gateway, public_origin[1], SIMPLE_A)
    assert done.returncode == 60, done.stderr  # curl: peer certificate cannot be verified
    # curl may exit before the reactor has read its alert.
    await until(lambda: gateway.service.passthrough.stats.rejected)
    stats = gateway.service.passthrough.stats.as_dict()
    assert (stats["rejected"], stats["tunnelled"]) == (1, 0)
    assert https_origin.count(f"/pypi{SIMPLE_A}") == 0


@pytest_twisted.ensureDeferred
async def test_a_client_trusting_our_ca_is_served_from_the_cache(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    """The twin: a trusting client is never marked, so it is cached as before."""
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])
    for _ in range(2):
        ok(await curl_public(gateway, gateway.cafile, SIMPLE_A))
    assert https_origin.count(f"/pypi{SIMPLE_A}") == 1
    assert gateway.service.passthrough.stats.as_dict()["rejected"] == 0


@pytest_twisted.ensureDeferred
async def test_close_right_after_our_certificate_counts_as_rejection(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])

    def hello_then_close() -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.https_port)) as s:
            s.sendall(real_client_hello(PYPI_HOST))
            s.settimeout(5)
            return s.recv(65536)

    from twisted.internet.threads import deferToThread
    answer = await deferToThread(hello_then_close)
    assert answer[:1] == b"\x16"  # our ServerHello (and, encrypted, the Certificate)
    await until(lambda: gateway.service.passthrough.stats.rejected)
    assert gateway.service.passthrough.stats.as_dict()["rejected"] == 1


@pytest_twisted.ensureDeferred
async def test_a_close_from_a_client_that_trusted_us_lately_is_not_a_rejection(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    """go abandons the dials it no longer needs when it exits, mid-handshake: after its
    other connections to the name completed, that close is not a rejection (it was, and
    the next build from that address went through the tunnel, uncached).  A distrust
    alert still is."""
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])
    ok(await curl_public(gateway, gateway.cafile, SIMPLE_A))  # trusts our CA

    def hello_then_close() -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.https_port)) as s:
            s.sendall(real_client_hello(PYPI_HOST))
            s.settimeout(5)
            return s.recv(65536)

    from twisted.internet.threads import deferToThread
    assert (await deferToThread(hello_then_close))[:1] == b"\x16"
    ok(await curl_public(gateway, gateway.cafile, SIMPLE_A))  # closes after a handshake
    assert gateway.service.passthrough.stats.as_dict()["rejected"] == 0
    assert https_origin.count(f"/pypi{SIMPLE_A}") == 1  # both served from the cache

    done = await curl_public(gateway, public_origin[1], SIMPLE_A)  # an alert: rejected
    assert done.returncode == 60, done.stderr
    await until(lambda: gateway.service.passthrough.stats.rejected)


@pytest_twisted.ensureDeferred
async def test_tunnel_to_an_unreachable_upstream_is_closed_and_counted(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    point_tunnels_at(gateway, closed.getsockname()[1])  # nothing listens there
    closed.close()
    done = await curl_public(gateway, public_origin[1], SIMPLE_A, "--retry", "1",
                             "--retry-all-errors", "--retry-delay", "0")
    assert done.returncode != 0
    stats = gateway.service.passthrough.stats.as_dict()
    assert stats["untrusting_clients"][0]["tunnel_failures"] == 1
    # ...and the gateway still serves (here over plain HTTP: the same client address is
    # tunnelled on :443 for a while, whatever it trusts).
    ok(await run(["curl", "-sS", "--fail", "-H", f"Host: {PYPI_HOST}",
                  f"http://127.0.0.1:{gateway.port}{SIMPLE_A}"]))


async def until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Let the reactor run until ``condition()`` holds (what a client's exit set off)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)


# pip resolving pypi.org to the gateway, as a container's DNS (cachegate) would have it.
PIP_AT_GATEWAY = """
import socket, sys
real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: real(
    "127.0.0.1" if host == "pypi.org" else host, *a, **k)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest_twisted.ensureDeferred
async def test_pip_own_retries_get_through_the_tunnel(
        start_tls_gateway, https_origin, public_origin):  # noqa: F811
    gateway = start_tls_gateway(https_origin.url)
    point_tunnels_at(gateway, public_origin[0])
    done = await run([sys.executable, "-c", PIP_AT_GATEWAY, "index", "versions",
                      "cachegate-fixture-a", "--disable-pip-version-check", "--retries", "3",
                      "--timeout", "10", "--cert", str(public_origin[1]),
                      "--index-url", f"https://pypi.org:{gateway.https_port}/simple/"])
    ok(done)
    assert "cachegate-fixture-a" in done.stdout
    assert "Retrying" in done.stderr and "CERTIFICATE_VERIFY_FAILED" in done.stderr
    stats = gateway.service.passthrough.stats.as_dict()
    assert stats["rejected"] == 1 and stats["tunnelled"] >= 1
