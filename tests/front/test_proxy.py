"""The explicit proxy port (gateway/proxy.py): the pure head parsing and routing, the
protocol against Twisted fakes for time and garbage, and real clients through a real
gateway on loopback (curl, pip, npm, mvn trusting only its CA; tunnels; refusals)."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from OpenSSL import SSL
from zope.interface import implementer

from dns.access import AccessPolicy
from gateway.addresses import forwarding_guard
from gateway.front.proxy import (HEAD_TIMEOUT, MAX_HEAD, BadRequest, HeadReader, Intercept,
                           ProxyContext, ProxyFactory, RequestLine, Serve, Tunnel, UntrustedMemo,
                           parse_authority, parse_request_line, rejects_certificate, route,
                           tunnel_refusal)
from tests import fixtures as fx
from tls.ca import create_ca
from tests.dns_helpers import FakeUpstream
from tests.http_client import fetch
from tests.clients import need
from tests.tls_gateways import SIMPLE_A, TlsGateway, clean_env, curl_head, need_binary, ok, run

ECHO_HOST = "127.0.0.2"  # a loopback address the gateway does not listen on


# --- pure core ----------------------------------------------------------------------

def test_request_lines() -> None:
    assert parse_request_line(b"CONNECT pypi.org:443 HTTP/1.1") == \
        RequestLine("CONNECT", "pypi.org:443", "HTTP/1.1")
    assert parse_request_line(b"GET http://pypi.org/simple/ HTTP/1.0").method == "GET"
    for bad in (b"", b"GET", b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/2.0",
                b"G\x00T / HTTP/1.1", b"GET /\x01 HTTP/1.1", b"\x16\x03\x01\x02\x00 x y"):
        with pytest.raises(BadRequest):
            parse_request_line(bad)


def feed_in_pieces(data: bytes, size: int):  # type: ignore[no-untyped-def]
    """What a HeadReader says once it can, fed ``size`` bytes at a time; bytes it was not
    fed yet are added to its ``rest`` (the protocol gets them later, as they come)."""
    reader = HeadReader()
    for i in range(0, len(data), size):
        found = reader.feed(data[i:i + size])
        if found is not None:
            return found[0], found[1] + data[i + size:]
    return None


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_head_reader_whatever_the_pieces(size: int) -> None:
    connect = b"\r\nCONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n\x16\x03"
    line, rest = feed_in_pieces(connect, size)
    assert line.target == "pypi.org:443" and rest == b"\x16\x03"
    bare = b"CONNECT pypi.org:443 HTTP/1.0\n\n"
    assert feed_in_pieces(bare, size) == (RequestLine("CONNECT", "pypi.org:443", "HTTP/1.0"), b"")
    get = b"GET http://pypi.org/simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"
    line, rest = feed_in_pieces(get, size)  # handed over from the end of the request line
    assert line.method == "GET" and rest == get
    assert feed_in_pieces(b"CONNECT x:1 HTTP/1.1\r\n", size) is None


@pytest.mark.parametrize("target, expected", [
    ("pypi.org:443", ("pypi.org", 443)),
    ("PyPI.org.:443", ("pypi.org", 443)),
    ("127.0.0.2:8080", ("127.0.0.2", 8080)),
    ("[::1]:22", ("::1", 22)),
    ("my_host.internal:8081", ("my_host.internal", 8081)),
])
def test_authority(target: str, expected: tuple[str, int]) -> None:
    assert parse_authority(target) == expected


@pytest.mark.parametrize("target", ["pypi.org", "pypi.org:", "pypi.org:0", "pypi.org:65536",
                                    "pypi.org:x", ":443", "[::1:443", "[zz]:443", "a b:443",
                                    "http://pypi.org:443", "-x.org:443"])
def test_bad_authority(target: str) -> None:
    with pytest.raises(BadRequest):
        parse_authority(target)


def test_route() -> None:
    served = {"pypi.org"}.__contains__
    connect = lambda target: RequestLine("CONNECT", target, "HTTP/1.1")  # noqa: E731
    assert route(connect("pypi.org:443"), served) == Intercept("pypi.org", 443, tls=True)
    assert route(connect("pypi.org:80"), served) == Intercept("pypi.org", 80, tls=False)
    assert route(connect("pypi.org:8443"), served) == Tunnel("pypi.org", 8443)
    assert route(connect("github.com:443"), served) == Tunnel("github.com", 443)
    assert route(connect("pypi.org:443"), served, lambda host: True) == Tunnel("pypi.org", 443)
    assert route(RequestLine("GET", "http://pypi.org/", "HTTP/1.1"), served) == Serve()


def test_tunnel_refusals() -> None:
    own = lambda ip, port: (ip, port) == ("127.0.0.1", 3128)  # noqa: E731
    assert tunnel_refusal("127.0.0.1", 3128, "127.0.0.1", own) == "that is this gateway"
    assert tunnel_refusal("0.0.0.0", 3128, "127.0.0.1", own) == "that is this gateway"
    assert tunnel_refusal("::ffff:127.0.0.1", 3128, "127.0.0.1", own) == "that is this gateway"
    assert tunnel_refusal("127.0.0.1", 5432, "127.0.0.1", own) is None  # loopback for loopback
    assert "loopback" in tunnel_refusal("127.0.0.1", 5432, "172.17.0.2", own)
    assert "loopback" in tunnel_refusal("::1", 5432, "::ffff:172.17.0.2", own)
    assert tunnel_refusal("140.82.121.3", 443, "172.17.0.2", own) is None


def test_untrusted_memo_expires_and_is_bounded() -> None:
    clock = Clock()
    memo = UntrustedMemo(clock.seconds, seconds=10, entries=2)
    memo.add("10.0.0.1", "pypi.org")
    assert ("10.0.0.1", "pypi.org") in memo and ("10.0.0.2", "pypi.org") not in memo
    clock.advance(10)
    assert ("10.0.0.1", "pypi.org") not in memo
    for host in ("a.org", "b.org", "c.org"):
        memo.add("10.0.0.1", host)
    assert ("10.0.0.1", "a.org") not in memo and ("10.0.0.1", "c.org") in memo


def test_only_a_rejecting_alert_counts_as_distrust() -> None:
    def ssl_error(text: str) -> Failure:
        return Failure(SSL.Error([("SSL routines", "", text)]))
    assert rejects_certificate(ssl_error("tlsv1 alert unknown ca"))
    assert rejects_certificate(ssl_error("sslv3 alert certificate unknown"))
    assert not rejects_certificate(ssl_error("no shared cipher"))
    assert not rejects_certificate(Failure(ConnectionResetError()))


# --- the protocol against fakes: time, garbage, bugs ---------------------------------

def fake_proxy(client: str = "127.0.0.1", clock: Any = None,
               **overrides: Any):  # type: ignore[no-untyped-def]
    clock = clock or Clock()
    context = ProxyContext(site=None, tls_options=None, serves=lambda host: False,  # type: ignore[arg-type]
                           resolve=lambda host: defer.Deferred(), is_own=lambda ip, p: False,
                           access=AccessPolicy([ipaddress.ip_network("127.0.0.0/8")]),
                           connect_timeout=1.0, untrusted=UntrustedMemo(clock.seconds))
    for name, value in overrides.items():
        setattr(context, name, value)
    proto = ProxyFactory(clock, context).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
    proto.makeConnection(transport)
    return proto, transport, clock


def status_of(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


@pytest.mark.parametrize("data, status", [
    (b"hello\r\n", 400),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n", 400),  # TLS to a plain proxy
    (b"CONNECT pypi.org HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT pypi.org:443 HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"CONNECT pypi.org:443 HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"CONNECT x:1 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    (b"G" * (MAX_HEAD + 1), 431),
])
def test_bad_heads_are_answered_and_closed(data: bytes, status: int) -> None:
    proto, transport, _ = fake_proxy()
    for i in range(0, len(data), 7):  # byte dribbles must not change the verdict
        proto.dataReceived(data[i:i + 7])
    assert status_of(transport) == status
    assert transport.disconnecting


def test_silent_client_gets_408_after_the_head_timeout() -> None:
    proto, transport, clock = fake_proxy()
    proto.dataReceived(b"CONNECT pypi.org:443 HTTP/1.1\r\n")  # never finished
    clock.advance(HEAD_TIMEOUT - 1)
    assert transport.value() == b""
    clock.advance(1)
    assert status_of(transport) == 408 and transport.disconnecting


def test_disallowed_client_is_refused_before_reading() -> None:
    proto, transport, clock = fake_proxy(client="203.0.113.9")
    assert status_of(transport) == 403 and transport.disconnecting
    assert not clock.getDelayedCalls()


def test_a_bug_aborts_only_that_connection() -> None:
    def broken(host: str) -> bool:
        raise RuntimeError("bug")
    proto, transport, _ = fake_proxy(serves=broken)
    proto.dataReceived(b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")  # does not raise
    assert transport.disconnected or transport.disconnecting


def test_client_leaving_while_the_tunnel_resolves_cancels_it() -> None:
    pending = defer.Deferred()
    proto, transport, _ = fake_proxy(resolve=lambda host: pending)
    proto.dataReceived(b"CONNECT example.org:443 HTTP/1.1\r\n\r\nearly bytes")
    assert transport.producerState == "paused" and proto.buffer == b"early bytes"
    proto.connectionLost(Failure(ConnectionResetError()))
    assert pending.called  # cancelled: nothing connects later
    assert transport.value() == b""


def test_upstream_connect_timeout_is_504() -> None:
    fake = MemoryReactorClock()
    proto, transport, _ = fake_proxy(clock=fake, resolve=lambda h: defer.succeed(["192.0.2.1"]))
    proto.dataReceived(b"CONNECT example.org:443 HTTP/1.1\r\n\r\n")
    host, port, factory, timeout, _ = fake.tcpClients[0]
    assert (host, port, timeout) == ("192.0.2.1", 443, 1.0)
    factory.clientConnectionFailed(None, Failure(error.TimeoutError()))
    assert status_of(transport) == 504 and transport.disconnecting


# --- real clients through a real gateway -------------------------------------------

@pytest.fixture
def proxy_gateway(start_tls_gateway, https_origin) -> TlsGateway:  # type: ignore[no-untyped-def]
    return start_tls_gateway(https_origin.url, proxy=True)


def curl_proxy(gw: TlsGateway, url: str, *extra: str):  # type: ignore[no-untyped-def]
    return run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "20",
                "-x", gw.proxy_url, *extra, url])


def raw_exchange(port: int, data: bytes, then: bytes = b"") -> bytes:
    """Send ``data``, read the answer to it; send ``then`` and read until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = s.recv(65536)
        if then:
            s.sendall(then)
            while chunk := s.recv(65536):
                answer += chunk
        return answer


@pytest_twisted.inlineCallbacks
def test_curl_connect_to_a_catalogue_host_is_served_from_the_cache(proxy_gateway, https_origin,
                                                                   https_tree):
    need_binary("curl", "curl")
    wheel = https_tree.find("cachegate_fixture_a-1.0-py3-none-any.whl")
    url = f"https://{fx.FILES_HOST}{wheel.path}"
    cacert = ("--cacert", str(proxy_gateway.cafile))
    first = ok((yield curl_proxy(proxy_gateway, url, *cacert)))
    second = ok((yield curl_proxy(proxy_gateway, url, *cacert)))
    assert curl_head(first)[0] == 200 and curl_head(first)[1]["x-cache"] == "MISS"
    assert curl_head(second)[0] == 200 and curl_head(second)[1]["x-cache"] == "HIT"
    assert https_origin.count(wheel.origin_path) == 1
    mismatch = ok((yield curl_proxy(proxy_gateway, url, *cacert, "-H", "Host: pypi.org")))
    assert curl_head(mismatch)[0] == 421


@pytest_twisted.inlineCallbacks
def test_absolute_form_and_plain_connect_reach_the_same_cache(proxy_gateway, https_origin):
    first = yield fetch(proxy_gateway.proxy_port, fx.PYPI_HOST, SIMPLE_A, proxy=True)
    assert (first.status, first.headers["x-cache"]) == (200, "MISS")
    answer = yield deferToThread(
        raw_exchange, proxy_gateway.proxy_port, b"CONNECT pypi.org:80 HTTP/1.1\r\n\r\n",
        f"GET {SIMPLE_A} HTTP/1.1\r\nHost: pypi.org\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    assert b"X-Cache: HIT" in answer
    assert https_origin.count("/pypi" + SIMPLE_A) == 1


@pytest_twisted.inlineCallbacks
def test_pip_download_through_the_proxy(proxy_gateway, https_origin, https_tree, tmp_path):
    def pip(dest: Path) -> list[str]:
        return fx.pip_download_args("https://pypi.org/simple", dest, ["cachegate-fixture-a"],
                                    proxy=proxy_gateway.proxy_url) + \
            ["--cert", str(proxy_gateway.cafile)]
    ok((yield run(pip(tmp_path / "one"))))
    got = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert got == ["cachegate_fixture_a-1.0-py3-none-any.whl",
                   "cachegate_fixture_b-1.0-py3-none-any.whl"]
    wheel = https_tree.find("cachegate_fixture_a-1.0-py3-none-any.whl")
    assert hashlib.sha256((tmp_path / "one" / got[0]).read_bytes()).hexdigest() == wheel.sha256
    asked = len(https_origin.requests)
    assert https_origin.count(wheel.origin_path) == 1
    ok((yield run(pip(tmp_path / "two"))))
    assert len(https_origin.requests) == asked  # all from the cache


@pytest_twisted.inlineCallbacks
def test_npm_install_through_the_proxy(proxy_gateway, https_origin, tmp_path):
    need_binary("npm", "npm")

    def npm(project: Path) -> list[str]:
        url = proxy_gateway.proxy_url
        return fx.npm_install_args(project, "https://registry.npmjs.org/",
                                   ["@cachegate/fixture"], proxy=url) + \
            ["--https-proxy", url, "--cafile", str(proxy_gateway.cafile)]
    ok((yield run(npm(tmp_path / "one"))))
    installed = tmp_path / "one/node_modules/cachegate-fixture/package.json"
    assert '"version": "1.1.0"' in installed.read_text()
    asked = len(https_origin.requests)
    assert https_origin.count("/npm/@cachegate/fixture/-/fixture-1.0.0.tgz") == 1
    ok((yield run(npm(tmp_path / "two"))))
    assert len(https_origin.requests) == asked


def proxy_https_too(settings: Path) -> None:
    """Maven uses a ``<proxy>`` only for repositories of its ``<protocol>``; the recipe's
    settings name ``http`` alone, so add the same proxy for ``https``."""
    text = settings.read_text()
    start, end = text.index("<proxy>"), text.index("</proxy>") + len("</proxy>")
    https = text[start:end].replace("<id>gateway</id>", "<id>gateway-https</id>") \
        .replace("<protocol>http</protocol>", "<protocol>https</protocol>")
    settings.write_text(text[:end] + https + text[end:])


@pytest_twisted.inlineCallbacks
def test_mvn_through_the_proxy_with_a_truststore(proxy_gateway, https_origin, https_tree,
                                                tmp_path):
    need_binary("mvn", "maven")
    need_binary("keytool", "openjdk-17-jre-headless")
    need(fx.maven_plugin_repo(), "no maven-dependency-plugin in /usr/share/maven-repo "
                                 "(packages libmaven-dependency-plugin-java junit4)")
    store = tmp_path / "trust.p12"
    ok((yield run(["keytool", "-importcert", "-noprompt", "-alias", "cachegate", "-file",
                   str(proxy_gateway.cafile), "-keystore", str(store), "-storetype", "PKCS12",
                   "-storepass", "changeit"])))
    env = fx.mvn_env()
    env["MAVEN_OPTS"] += (f" -Djavax.net.ssl.trustStore={store}"
                          " -Djavax.net.ssl.trustStorePassword=changeit"
                          " -Djavax.net.ssl.trustStoreType=PKCS12")

    def mvn(where: Path) -> list[str]:
        argv = fx.mvn_get_args(where, "https://repo1.maven.org/maven2", fx.MAVEN_ARTIFACT,
                               proxy=("127.0.0.1", proxy_gateway.proxy_port))
        proxy_https_too(where / "settings.xml")
        return argv
    ok((yield run(mvn(tmp_path / "one"), env=clean_env(**env))))
    jar = https_tree.find("/fixture-1.0.jar")
    local = tmp_path / "one/repository/org/cachegate/fixture/1.0/fixture-1.0.jar"
    assert hashlib.sha256(local.read_bytes()).hexdigest() == jar.sha256
    asked = len(https_origin.requests)
    assert https_origin.count(jar.origin_path) == 1
    ok((yield run(mvn(tmp_path / "two"), env=clean_env(**env))))
    assert len(https_origin.requests) == asked


# --- tunnels ------------------------------------------------------------------------

class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)


@implementer(IPushProducer)
class Flood(protocol.Protocol):
    """Writes a non-repeating stream of ``factory.size`` bytes as fast as the connection
    takes it, counting what it handed over."""

    def connectionMade(self) -> None:  # noqa: N802
        self.chunks = fx.payload_chunks("flood", self.factory.size)
        self.paused = False
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        while not self.paused:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                return
            self.factory.produced += len(chunk)
            self.transport.write(chunk)

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True


@pytest.fixture
def listen_on_echo_host():  # type: ignore[no-untyped-def]
    ports: list[Any] = []

    def listen(factory: protocol.Factory) -> int:
        ports.append(reactor.listenTCP(0, factory, interface=ECHO_HOST))
        return ports[-1].getHost().port

    yield listen
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def tunnel_echo(proxy_port: int, target: str, data: bytes) -> tuple[bytes, bytes]:
    """CONNECT, then send ``data`` (half of it pipelined with the CONNECT) and read as
    many bytes back."""
    half = len(data) // 2
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + data[:half])
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        sender = threading.Thread(target=s.sendall, args=(data[half:],))
        sender.start()
        back = bytearray()
        while len(back) < len(data):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            back += chunk
        sender.join()
        return head, bytes(back)


@pytest_twisted.inlineCallbacks
def test_tunnel_to_a_host_outside_the_catalogue_is_byte_for_byte(start_tls_gateway, https_origin,
                                                                 listen_on_echo_host):
    dns = FakeUpstream(reactor, {"echo.test": ["echo.test. 60 IN A 127.0.0.2"]}).start()
    try:
        gw = start_tls_gateway(https_origin.url, proxy=True, forwarders=(dns.address,))
        port = listen_on_echo_host(protocol.Factory.forProtocol(Echo))
        data = fx.payload("tunnel", 3 * 2**20)
        for target in (f"{ECHO_HOST}:{port}", f"echo.test:{port}"):
            head, back = yield deferToThread(tunnel_echo, gw.proxy_port, target, data)
            assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
            assert back == data
        assert "echo.test" in dns.names()
    finally:
        yield dns.stop()
    assert https_origin.requests == []


class Recorder(Resource):
    """A plain-HTTP server outside the catalogue: answers with what it was asked."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str, str]] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        body = request.content.read()
        self.seen.append((request.method.decode(), request.uri.decode(),
                          request.getHeader("host"), request.getHeader("authorization") or ""))
        request.setHeader("Cache-Control", "max-age=3600")
        return f"{request.method.decode()} {request.uri.decode()} ".encode() + body


@pytest.fixture
def other_host(start_tls_gateway, https_origin, listen_on_echo_host):  # type: ignore[no-untyped-def]
    """(gateway with a proxy port, recorder, port): other.test names the recorder."""
    dns = FakeUpstream(reactor, {"other.test": [f"other.test. 60 IN A {ECHO_HOST}"]}).start()
    recorder = Recorder()
    port = listen_on_echo_host(server.Site(recorder))
    yield (start_tls_gateway(https_origin.url, proxy=True, forwarders=(dns.address,)),
           recorder, port)
    pytest_twisted.blockon(dns.stop())


@pytest_twisted.inlineCallbacks
def test_plain_http_for_another_host_is_relayed_uncached(other_host, https_origin):
    """An apt source or a download over http_proxy that cachegate does not serve still
    works: each request relayed as it is, never stored (credentials included)."""
    need_binary("curl", "curl")
    gw, recorder, port = other_host
    url = f"http://other.test:{port}/pool/a.deb?x=1"
    for _ in range(2):
        done = yield run(["curl", "-sS", "--fail", "-x", gw.proxy_url, "-u", "me:secret", url])
        ok(done)
        assert done.stdout == "GET /pool/a.deb?x=1 "
    posted = yield run(["curl", "-sS", "--fail", "-x", gw.proxy_url, "--data-binary", "hello",
                        f"http://other.test:{port}/form"])
    ok(posted)
    assert posted.stdout == "POST /form hello"
    assert [s[:3] for s in recorder.seen] == [
        ("GET", "/pool/a.deb?x=1", f"other.test:{port}")] * 2 + [
        ("POST", "/form", f"other.test:{port}")]
    assert recorder.seen[0][3].startswith("Basic ")
    assert gw.service.stats.as_dict()["ecosystems"]["other"]["requests"] == {"PASS": 3}
    assert https_origin.requests == []


@pytest_twisted.inlineCallbacks
def test_plain_http_relay_is_never_an_open_proxy_or_a_loop(other_host):
    gw, recorder, port = other_host
    cases = {  # what a proxy client asks for -> the status it gets
        f"http://127.0.0.1:{gw.port}/": b"502",  # our own HTTP port: a loop
        f"http://127.0.0.1:{gw.proxy_port}/": b"502",
        "http://nowhere.test/": b"502",  # NXDOMAIN
        f"http://user:pw@other.test:{port}/": b"400",
        "http://other.test:99999/": b"400",
    }
    for url, status in cases.items():
        answer = yield deferToThread(raw_exchange, gw.proxy_port,
                                     f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer.split(b" ")[1] == status, (url, answer)
    # The plain HTTP port serves the catalogue only, whatever the request line says.
    answer = yield deferToThread(
        raw_exchange, gw.port,
        f"GET http://other.test:{port}/ HTTP/1.1\r\nHost: other.test\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert recorder.seen == []


def test_forwarding_guard_keeps_remote_clients_off_loopback():
    own = lambda address, port: (address, port) == ("10.0.0.1", 80)  # noqa: E731
    refused = forwarding_guard(own)
    assert refused("127.0.0.1", 8080) and refused("::1", 80) and refused("0.0.0.0", 80)
    assert refused("10.0.0.1", 80) and not refused("10.0.0.1", 8080)
    assert not refused("192.0.2.7", 80)


def slow_reader(proxy_port: int, target: str, watch: Any) -> tuple[int, str]:
    """CONNECT, read nothing for a while (noting how much the upstream produced
    meanwhile), then read everything: (bytes produced while stalled, sha256 of all)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        threading.Event().wait(1.0)
        stalled = watch.produced
        digest = hashlib.sha256()
        while chunk := s.recv(1 << 20):
            digest.update(chunk)
        return stalled, digest.hexdigest()


@pytest_twisted.inlineCallbacks
def test_tunnel_pushes_back_on_a_fast_upstream(proxy_gateway, listen_on_echo_host):
    size = 64 * 2**20
    factory = protocol.Factory.forProtocol(Flood)
    factory.size, factory.produced = size, 0
    port = listen_on_echo_host(factory)
    stalled, digest = yield deferToThread(slow_reader, proxy_gateway.proxy_port,
                                          f"{ECHO_HOST}:{port}", factory)
    assert stalled < size // 4, stalled  # the proxy stopped reading: nothing piled up
    assert digest == hashlib.sha256(fx.payload("flood", size)).hexdigest()


@pytest_twisted.inlineCallbacks
def test_connect_refusals(start_tls_gateway, https_origin):
    dns = FakeUpstream(reactor, {"us.test": ["us.test. 60 IN A 127.0.0.1"]}).start()
    try:
        gw = start_tls_gateway(https_origin.url, proxy=True, forwarders=(dns.address,))
        cases = {
            f"127.0.0.1:{gw.port}": (b"403", b"this gateway"),  # our own HTTP port
            f"127.0.0.1:{gw.proxy_port}": (b"403", b"this gateway"),
            f"0.0.0.0:{gw.https_port}": (b"403", b"this gateway"),
            f"us.test:{gw.port}": (b"403", b"this gateway"),  # a name for us
            "nowhere.test:443": (b"502", b"cannot resolve"),  # NXDOMAIN
        }
        for target, (status, reason) in cases.items():
            answer = yield deferToThread(raw_exchange, gw.proxy_port,
                                         f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            assert answer.split(b" ")[1] == status and reason in answer, (target, answer)
    finally:
        yield dns.stop()


@pytest_twisted.inlineCallbacks
def test_connect_to_a_closed_port_is_502(proxy_gateway):
    with socket.socket() as s:  # a port nobody listens on
        s.bind((ECHO_HOST, 0))
        dead = s.getsockname()[1]
    answer = yield deferToThread(raw_exchange, proxy_gateway.proxy_port,
                                 f"CONNECT {ECHO_HOST}:{dead} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502 ") and b"cannot connect" in answer


@pytest_twisted.inlineCallbacks
def test_clients_outside_the_allowed_networks_get_403(start_tls_gateway, https_origin):
    gw = start_tls_gateway(https_origin.url, proxy=True, allow=("10.0.0.0/8",))
    answer = yield deferToThread(raw_exchange, gw.proxy_port,
                                 b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"allowed networks" in answer
    assert https_origin.requests == []


@pytest_twisted.inlineCallbacks
def test_malformed_head_on_a_real_socket_is_400(proxy_gateway):
    answer = yield deferToThread(raw_exchange, proxy_gateway.proxy_port, b"hello there\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


@pytest_twisted.inlineCallbacks
def test_client_that_rejects_our_certificate_is_tunnelled_next_time(start_tls_gateway,
                                                                    https_origin):
    """A client without our CA fails once; its retry is tunnelled to the real host (here
    pypi.org resolves to a loopback address where nothing listens: 502, not a 200 from an
    interception that would fail again)."""
    need_binary("curl", "curl")
    dns = FakeUpstream(reactor, {"pypi.org": ["pypi.org. 60 IN A 127.0.0.2"]}).start()
    try:
        gw = start_tls_gateway(https_origin.url, proxy=True, forwarders=(dns.address,))
        other_ca = gw.cafile.parent / "another-ca.pem"
        other_ca.write_bytes(create_ca(("pypi.org",), "ecdsa", True, reactor.seconds()).cert_pem())
        refused = yield curl_proxy(gw, f"https://pypi.org{SIMPLE_A}", "--cacert", str(other_ca))
        assert refused.returncode == 60, refused.stderr  # peer certificate not verified
        answer = yield deferToThread(raw_exchange, gw.proxy_port,
                                     b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 ") and b"cannot connect" in answer
        assert "pypi.org" in dns.names()
    finally:
        yield dns.stop()
