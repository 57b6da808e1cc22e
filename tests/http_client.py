"""Test clients: an in-reactor HTTP client that names the Host it wants (as a client whose
DNS points at cachegate would), and a raw client that reads at a set pace."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, ProxyAgent, readBody
from twisted.web.http_headers import Headers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def _pool() -> HTTPConnectionPool:
    """Keep-alive (no ``Connection: close``), as package clients do: that is what the
    gateway's fast path answers.  Closed after each ``fetch``."""
    return HTTPConnectionPool(reactor, persistent=True)


@defer.inlineCallbacks
def fetch(port: int, host: str, path: str, headers: dict[str, str] | None = None,
          method: str = "GET", proxy: bool = False, body=None):  # type: ignore[no-untyped-def]
    """One request to the gateway on 127.0.0.1:``port`` for ``host`` + ``path``.

    ``proxy=True`` sends the absolute form (``GET http://host/path``), as a client with
    ``http_proxy`` set does."""
    raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    pool = _pool()
    if proxy:
        agent = ProxyAgent(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reactor, pool=pool)
        url = f"http://{host}{path}"
    else:
        raw.setRawHeaders(b"host", [host.encode()])
        agent = Agent(reactor, pool=pool)
        url = f"http://127.0.0.1:{port}{path}"
    response = yield agent.request(method.encode(), url.encode(), raw, body)
    data = yield readBody(response)
    yield pool.closeCachedConnections()
    reply_headers = {k.decode().lower(): ", ".join(x.decode() for x in v)
                     for k, v in response.headers.getAllRawHeaders()}
    return Reply(response.code, reply_headers, data)


class _RawResponse(protocol.Protocol):
    """Reads a whole HTTP/1.1 response (until the server closes), optionally slowly.
    With ``keep=False`` the body is only hashed (``sha256``, ``body_length``), so fifty
    clients of a 50 MB object do not hold 2.5 GB in the test process."""

    def __init__(self, request: bytes, rate: int | None, keep: bool = True) -> None:
        self.request, self.rate, self.keep = request, rate, keep
        self.chunks: list[bytes] = []
        self.head = b""
        self.in_body = False
        self.body_hash = hashlib.sha256()
        self.body_length = 0
        self.received = 0
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.done: defer.Deferred = defer.Deferred()

    @property
    def sha256(self) -> str:
        return self.body_hash.hexdigest()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)

    def _consume(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            self.in_body = True
        self.body_hash.update(data)
        self.body_length += len(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.first_byte_at is None:
            self.first_byte_at = reactor.seconds()
        if self.keep:
            self.chunks.append(data)
        self._consume(data)
        self.received += len(data)
        if self.rate:  # stop reading for as long as these bytes "take" at the rate
            self.transport.pauseProducing()
            reactor.callLater(len(data) / self.rate, self.transport.resumeProducing)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.finished_at = reactor.seconds()
        self.done.callback(b"".join(self.chunks))


@defer.inlineCallbacks
def raw_get(port: int, host: str, path: str, rate: int | None = None, extra: str = "",
            keep: bool = True, started: list | None = None):  # type: ignore[no-untyped-def]
    """GET with ``Connection: close``; returns (head, body, protocol) once the server closes.
    ``rate`` (bytes/s) makes the client read that slowly, pushing back through TCP;
    ``started`` receives the protocol as soon as it connects (to watch it mid-transfer)."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"
               ).encode()
    proto = _RawResponse(request, rate, keep)
    if started is not None:
        started.append(proto)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    yield endpoint.connect(protocol.Factory.forProtocol(lambda: proto))
    data = yield proto.done
    if not proto.keep:
        return proto.head.decode("latin-1"), b"", proto
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body, proto
