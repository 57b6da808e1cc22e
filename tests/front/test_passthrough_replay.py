"""The untrusting-client passthrough is refused to a client in a replayed session: a
tunnel would bypass the record.  Its retry meets our certificate again (and fails), the
origin sees nothing; the twin without a replay is tunnelled (tests/front/test_passthrough.py)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web import server

from tests.fixtures import PYPI_HOST
from tests.origin import PROXY_HOSTS, ByHost, OriginResource
from tests.tls_gateways import SIMPLE_A, need_binary, run
from tls.ca import create_ca
from tls.context import SNIContexts
from tls.leaf import LeafCache


@pytest.fixture
def public_origin(https_origin, tmp_path):  # type: ignore[no-untyped-def]
    public_ca = create_ca(tuple(PROXY_HOSTS), "ecdsa", False, time.time())
    contexts = SNIContexts(LeafCache(public_ca, reactor, "ecdsa"), lambda name: True)
    port = reactor.listenSSL(0, server.Site(ByHost(OriginResource(https_origin))),
                             contexts.options, interface="127.0.0.1")
    cafile = tmp_path / "public-ca.pem"
    cafile.write_bytes(public_ca.cert_pem())
    yield port.getHost().port, cafile
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def replaying(gateway) -> None:  # type: ignore[no-untyped-def]
    """An (empty) recorded session, replayed to 127.0.0.0/8."""
    sessions = gateway.service.gateway.sessions
    now = reactor.seconds()
    source = sessions.records.start("empty", ["127.0.0.0/8"], now)
    sessions.records.stop(source.id, now)
    sessions.records.start("replay", ["127.0.0.0/8"], now, source.id)
    sessions.reload()


@pytest_twisted.ensureDeferred
async def test_no_passthrough_tunnel_for_a_client_in_a_replay(
        start_tls_gateway, https_origin, public_origin):
    need_binary("curl", "curl")
    gateway = start_tls_gateway(https_origin.url)
    gateway.service.passthrough.locate = lambda name: defer.succeed(
        [("127.0.0.1", public_origin[0])])
    replaying(gateway)
    port = gateway.https_port
    done = await run(["curl", "-sS", "--fail", "--cacert", str(public_origin[1]),
                      "--resolve", f"{PYPI_HOST}:{port}:127.0.0.1", "--retry", "2",
                      "--retry-all-errors", "--retry-delay", "0",
                      f"https://{PYPI_HOST}:{port}{SIMPLE_A}"])
    assert done.returncode == 60, done.stderr  # our certificate, every time
    for _ in range(50):
        if gateway.service.passthrough.stats.rejected:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    stats = gateway.service.passthrough.stats.as_dict()
    assert stats["rejected"] >= 1 and stats["tunnelled"] == 0
    assert https_origin.count(f"/pypi{SIMPLE_A}") == 0


def connect(port: int, target: str) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


@pytest_twisted.inlineCallbacks
def test_no_proxy_tunnel_for_a_client_in_a_replay(start_tls_gateway, https_origin):
    from twisted.internet.threads import deferToThread
    gw = start_tls_gateway(https_origin.url, proxy=True)
    replaying(gw)
    # A host outside the catalogue, and a catalogue host on a port we do not serve.
    for target in ("example.org:443", f"{PYPI_HOST}:8443"):
        answer = yield deferToThread(connect, gw.proxy_port, target)
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b"replayed session" in answer
