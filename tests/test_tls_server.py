"""Real TLS on loopback: the SNI context factory in this process's reactor, real clients
(Python ``ssl`` in a thread, ``curl`` as a subprocess) trusting only our CA."""

from __future__ import annotations

import shutil
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import LineReceiver
from twisted.web import resource, server

from gateway.cache.rules import find_upstream
from gateway.ecosystems.catalogue import BUILTIN
from tls.ca import create_ca, permitted_domains
from tls.context import SNIContexts, sni_name
from tls.leaf import LeafCache
from tests.clients import need

LOCAL_NAMES = ("cachegate.internal",)


def in_catalogue(name: str) -> bool:
    """What the lead passes as ``allowed``."""
    return find_upstream(BUILTIN, name) is not None or name in LOCAL_NAMES


class Echo(resource.Resource):
    """Answers with the SNI name and Host header it saw."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        host = request.getHeader("host")
        return f"sni={sni_name(request.channel.transport)} host={host}".encode()


@dataclass
class Server:
    port: int
    cafile: Path
    contexts: SNIContexts


def listen(tmp_path: Path, allowed: Any = in_catalogue, max_names: int = 100
           ) -> tuple[Server, Any]:
    ca = create_ca(permitted_domains(BUILTIN, LOCAL_NAMES), "ecdsa", True, reactor.seconds())
    cafile = tmp_path / "ca.crt"
    cafile.write_bytes(ca.cert_pem())
    contexts = SNIContexts(LeafCache(ca, reactor, max_names=max_names), allowed, max_names)
    port = reactor.listenSSL(0, server.Site(Echo()), contexts.options, interface="127.0.0.1")
    return Server(port.getHost().port, cafile, contexts), port


@pytest.fixture
def tls_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv, port = listen(tmp_path)
    yield srv
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def forgetful_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Remembers one name: every other name evicts its leaf and context."""
    srv, port = listen(tmp_path, max_names=1)
    yield srv
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def careless_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A server whose predicate lets every name through: only the CA's constraints stand."""
    srv, port = listen(tmp_path, allowed=lambda name: True)
    yield srv
    pytest_twisted.blockon(port.stopListening())


def client_context(cafile: Path | None, *, check_hostname: bool = True,
                   version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system roots: trusts only our CA
    ctx.check_hostname = check_hostname
    if cafile is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def https_get(port: int, ctx: ssl.SSLContext, name: str | None,
              session: ssl.SSLSession | None = None) -> dict[str, Any]:
    """One blocking request (run it in a thread); the session is read after the body, once
    TLS 1.3 tickets have arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            info = {"version": tls.version(), "alpn": tls.selected_alpn_protocol(),
                    "reused": tls.session_reused,
                    "cert": tls.getpeercert(binary_form=True)}
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                        .encode())
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            info["body"] = response.partition(b"\r\n\r\n")[2].decode()
            info["session"] = tls.session
            return info


def get(srv: Server, name: str | None, **kwargs: Any):  # type: ignore[no-untyped-def]
    ctx = kwargs.pop("ctx", None) or client_context(srv.cafile)
    return deferToThread(https_get, srv.port, ctx, name, **kwargs)


@pytest_twisted.ensureDeferred
async def test_catalogue_name_handshake_alpn_and_sni(tls_server: Server) -> None:
    info = await get(tls_server, "pypi.org")
    assert info["version"] in ("TLSv1.2", "TLSv1.3")
    assert info["alpn"] == "http/1.1"
    assert info["body"] == "sni=pypi.org host=pypi.org"


@pytest_twisted.ensureDeferred
async def test_each_name_gets_its_own_leaf_signed_once(tls_server: Server) -> None:
    names = ("pypi.org", "files.pythonhosted.org", "fr.archive.ubuntu.com",
             "cachegate.internal", "pypi.org", "PyPI.org")
    infos = [await get(tls_server, n) for n in names]
    assert [i["body"].split()[0] for i in infos] == [f"sni={n.lower()}" for n in names]
    assert infos[0]["cert"] == infos[4]["cert"] == infos[5]["cert"]
    assert len({i["cert"] for i in infos}) == 4
    assert tls_server.contexts.leaves.minted == 4


@pytest_twisted.ensureDeferred
async def test_name_outside_the_catalogue_gets_no_certificate(tls_server: Server) -> None:
    # Without verification too: the server has nothing to present, not merely a bad chain.
    for ctx in (client_context(tls_server.cafile), client_context(None, check_hostname=False)):
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
            await get(tls_server, "www.google.com", ctx=ctx)
    assert tls_server.contexts.leaves.minted == 0
    assert tls_server.contexts.refused == 2


@pytest_twisted.ensureDeferred
async def test_no_sni_gets_no_certificate(tls_server: Server) -> None:
    ctx = client_context(None, check_hostname=False)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
        await get(tls_server, None, ctx=ctx)
    assert tls_server.contexts.leaves.minted == 0
    info = await get(tls_server, "pypi.org", ctx=ctx)  # the twin: same client, with SNI
    assert info["body"].startswith("sni=pypi.org")


@pytest_twisted.ensureDeferred
async def test_malformed_sni_is_refused_not_minted(tls_server: Server) -> None:
    ctx = client_context(None, check_hostname=False)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
        await get(tls_server, "bad_name.archive.ubuntu.com", ctx=ctx)  # matches *.archive…
    assert tls_server.contexts.leaves.minted == 0
    assert tls_server.contexts.refused == 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(tls_server: Server) -> None:
    ctx = client_context(tls_server.cafile, version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it; the server must refuse
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        await get(tls_server, "pypi.org", ctx=ctx)
    ctx12 = client_context(tls_server.cafile, version=ssl.TLSVersion.TLSv1_2)
    assert (await get(tls_server, "pypi.org", ctx=ctx12))["version"] == "TLSv1.2"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest_twisted.ensureDeferred
async def test_sessions_resume_across_rebuilt_contexts(forgetful_server: Server,
                                                       version: ssl.TLSVersion) -> None:
    srv = forgetful_server
    ctx = client_context(srv.cafile, version=version)
    first = await get(srv, "registry.npmjs.org", ctx=ctx)
    assert not first["reused"] and first["session"] is not None
    await get(srv, "repo1.maven.org", ctx=ctx)  # evicts npm's leaf and context
    again = await get(srv, "registry.npmjs.org", ctx=ctx, session=first["session"])
    assert again["reused"]
    assert again["body"] == "sni=registry.npmjs.org host=registry.npmjs.org"
    assert srv.contexts.leaves.minted == 3  # npm's context was rebuilt, yet it resumed
    fresh = await get(srv, "registry.npmjs.org", ctx=ctx)  # the twin: no session
    assert not fresh["reused"]


@pytest_twisted.ensureDeferred
async def test_name_constraints_hold_even_if_the_predicate_lets_a_name_through(
        careless_server: Server) -> None:
    info = await get(careless_server, "pypi.org")
    assert info["body"].startswith("sni=pypi.org")
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        await get(careless_server, "www.google.com")
    assert careless_server.contexts.leaves.minted == 2  # it was minted, and still refused


@pytest_twisted.ensureDeferred
async def test_curl_trusting_only_our_ca(tls_server: Server) -> None:
    need(shutil.which("curl") is not None, "curl is not installed")

    def curl(name: str):  # type: ignore[no-untyped-def]
        return getProcessOutputAndValue(shutil.which("curl"), [
            "--silent", "--show-error", "--max-time", "10", "--cacert", str(tls_server.cafile),
            "--resolve", f"{name}:{tls_server.port}:127.0.0.1",
            f"https://{name}:{tls_server.port}/"])

    out, err, code = await curl("pypi.org")
    assert code == 0, err
    assert out == f"sni=pypi.org host=pypi.org:{tls_server.port}".encode()
    out, err, code = await curl("www.google.com")
    assert code == 35, (out, err)  # CURLE_SSL_CONNECT_ERROR: the handshake failed


class StartTLSThenEcho(LineReceiver):
    """A stand-in for the proxy's CONNECT: plain text first, then TLS on the same socket."""

    def lineReceived(self, line: bytes) -> None:
        if line == b"STARTTLS":
            self.sendLine(b"GO")
            self.transport.startTLS(self.factory.options)
        else:
            self.sendLine(f"sni={sni_name(self.transport)}".encode())


def starttls_client(port: int, cafile: Path, name: str) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"hello\r\n")
        plain = raw.recv(100).decode().strip()
        raw.sendall(b"STARTTLS\r\n")
        assert raw.recv(100) == b"GO\r\n"
        with client_context(cafile).wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"which\r\n")
            return plain, tls.recv(100).decode().strip()


@pytest_twisted.ensureDeferred
async def test_start_tls_on_an_open_connection(tls_server: Server) -> None:
    factory = protocol.Factory.forProtocol(StartTLSThenEcho)
    factory.options = tls_server.contexts.options  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        plain, secure = await deferToThread(starttls_client, port.getHost().port,
                                            tls_server.cafile, "dl-cdn.alpinelinux.org")
    finally:
        await port.stopListening()
    assert (plain, secure) == ("sni=None", "sni=dl-cdn.alpinelinux.org")


def test_sni_name_of_non_tls_transports() -> None:
    assert sni_name(object()) is None
    assert sni_name(None) is None
