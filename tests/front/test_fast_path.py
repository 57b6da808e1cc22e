"""The fast path: fresh small hits answered by the channel itself, identical to what
twisted.web would have sent, and anything unusual left to twisted.web."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from gateway.front.fast_path import parse_simple_request
from tests.http_client import fetch


@pytest.mark.parametrize("raw,parsed", [
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", ("GET", "/x", {"host": "a"})),
    (b"HEAD /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n", ("HEAD", "/x", {"host": "a", "accept": "*/*"})),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\n\r\n", None),  # pipelined
    (b"GET /x HTTP/1.1\r\nHost: a\r\n", None),  # incomplete
    (b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", None),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", None),  # repeated header
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", None),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n", None),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", None),
    (b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", None),  # space before the colon
    (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", None),
])
def test_parse_simple_request(raw, parsed):
    assert parse_simple_request(raw) == parsed


class _KeepAlive(protocol.Protocol):
    """Sends requests one at a time on one connection and collects raw responses."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: defer.Deferred | None = None

    def ask(self, request: bytes) -> defer.Deferred:
        self.waiting = defer.Deferred()
        self.transport.write(request)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if b"HEAD" in self.last_method:
            length = 0
        if len(body) >= length:
            self.buffer = body[length:]
            d, self.waiting = self.waiting, None
            d.callback((head.decode("latin-1"), body[:length]))

    last_method = b"GET"


@pytest_twisted.inlineCallbacks
def test_hits_on_one_keep_alive_connection_match_the_normal_path(origin, fixtures, start_gateway):
    gw = start_gateway(origin.url)
    obj = fixtures.find(".pom")
    normal = yield fetch(gw.port, obj.host, obj.path)  # a miss, through twisted.web
    client = _KeepAlive()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port)
    yield endpoint.connect(protocol.Factory.forProtocol(lambda: client))
    request = f"GET {obj.path} HTTP/1.1\r\nHost: {obj.host}\r\n\r\n".encode()
    heads = []
    for _ in range(3):
        head, body = yield client.ask(request)
        assert body == normal.body
        heads.append(head)
    client.last_method = b"HEAD"
    head, body = yield client.ask(request.replace(b"GET", b"HEAD", 1))
    assert body == b"" and f"Content-Length: {len(normal.body)}" in head
    client.last_method = b"GET"
    ranged = yield client.ask(request.replace(b"\r\n\r\n", b"\r\nRange: bytes=0-9\r\n\r\n"))
    assert ranged[0].startswith("HTTP/1.1 206") and ranged[1] == normal.body[:10]
    client.transport.loseConnection()
    fast = dict(line.split(": ", 1) for line in heads[0].split("\r\n")[1:])
    assert heads[0].startswith("HTTP/1.1 200 OK") and fast["X-Cache"] == "HIT"
    fast = {k.lower(): v for k, v in fast.items()}
    for name in ("etag", "last-modified", "content-type"):
        assert fast[name] == normal.headers[name], name
    assert fast["content-length"] == str(len(normal.body))
    assert gw.service.stats.total.requests["HIT"] == 5
    assert origin.count(obj.origin_path) == 1
