"""Upstream fetches: a Twisted ``Agent`` with a persistent pool, verified HTTPS, timeouts,
names resolved by a resolver we are given, and a loop guard.

The loop guard refuses an upstream address that is one of our own listening sockets: with
our DNS answering repository names with our own address, a misconfigured forwarder or
origin would otherwise have the gateway fetch from itself forever.
"""

from __future__ import annotations

import ipaddress
import socket
from io import BytesIO
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import defer, error, threads
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, FileBodyProducer,
                                HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory)
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

log = Logger()
_HTTP11ClientFactory.noisy = False  # one "Starting factory" line per upstream connection

Resolve = Callable[[str], "defer.Deferred[list[str]]"]
IsOwnAddress = Callable[[str, int], bool]

# Enough parallel connections per upstream host for a few concurrent builds without
# looking like a crawler to the registries' rate limits.
MAX_CONNECTIONS_PER_HOST = 8
# Registries' keep-alive is typically 60-120 s; closing idle connections a bit earlier
# avoids racing a server-side close with a new request.
POOL_IDLE_SECONDS = 50


class _ConnectionAwareProtocol(HTTP11ClientProtocol):
    """Removes the response fields named in ``Connection`` (RFC 9110 7.6.1) before anyone
    sees the response.  twisted.web's parser keeps ``Connection`` itself apart (to decide
    on keep-alive) but leaves the fields it names among the end-to-end ones, where only
    its parser can still tell them apart: hence this subclass rather than a filter later."""

    def request(self, request):  # type: ignore[no-untyped-def]
        d = super().request(request)
        parser = self._parser
        if parser is not None:
            d.addCallback(_drop_connection_fields, parser)
        return d


def _drop_connection_fields(response, parser):  # type: ignore[no-untyped-def]
    for value in parser.connHeaders.getRawHeaders(b"connection", ()):
        for token in value.split(b","):
            name = token.strip().lower()
            if name:
                response.headers.removeHeader(name)
    return response


class _ConnectionAwareFactory(_HTTP11ClientFactory):
    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]  # noqa: N802
        return _ConnectionAwareProtocol(self._quiescentCallback)


class LoopError(error.ConnectError):
    """The upstream resolved to one of our own listening addresses."""


class BodySink(TypingProtocol):
    def write(self, data: bytes) -> None: ...
    def finish(self, failure: Failure | None) -> None: ...


def system_resolve(host: str) -> "defer.Deferred[list[str]]":
    """The host's own resolver (getaddrinfo in a thread): the default until DNS is wired."""
    def lookup() -> list[str]:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    return threads.deferToThread(lookup)


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    """Resolve with our resolver, refuse our own addresses, then connect (TLS if asked)."""

    def __init__(self, fetcher: "Fetcher", host: str, port: int, tls: bool) -> None:
        self.fetcher, self.host, self.port, self.tls = fetcher, host, port, tls

    @defer.inlineCallbacks
    def connect(self, factory):  # type: ignore[no-untyped-def]
        addresses = yield self._addresses()
        allowed = [a for a in addresses if not self.fetcher.is_own(a, self.port)]
        if not allowed:
            raise LoopError(string=f"{self.host} resolves to this gateway ({addresses})")
        last: Exception | None = None
        for address in allowed[:2]:
            endpoint = self._endpoint(address)
            try:
                protocol = yield endpoint.connect(factory)
                return protocol
            except (error.ConnectError, error.TimeoutError, OSError) as e:
                last = e
        raise last  # type: ignore[misc]

    def _addresses(self) -> "defer.Deferred[list[str]]":
        try:
            ipaddress.ip_address(self.host)
            return defer.succeed([self.host])
        except ValueError:
            return self.fetcher.resolve(self.host)

    def _endpoint(self, address: str) -> IStreamClientEndpoint:
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = kind(self.fetcher.reactor, address, self.port,
                        timeout=self.fetcher.connect_timeout)
        if self.tls:
            creator = self.fetcher.tls_policy.creatorForNetloc(self.host.encode(), self.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


class _EndpointFactory:
    def __init__(self, fetcher: "Fetcher") -> None:
        self.fetcher = fetcher

    def endpointForURI(self, uri):  # type: ignore[no-untyped-def]  # noqa: N802 (Twisted API)
        return self.fetcher.endpoint(uri.host.decode(), uri.port, uri.scheme == b"https")


class Fetcher:
    """Sends requests upstream and delivers response bodies to a sink, with timeouts."""

    def __init__(self, reactor, resolve: Resolve = system_resolve,  # type: ignore[no-untyped-def]
                 is_own: IsOwnAddress = lambda address, port: False,
                 connect_timeout: float = 10.0, idle_timeout: float = 60.0,
                 tls_policy=None, endpoints=None) -> None:  # type: ignore[no-untyped-def]
        """``endpoints`` (an ``IAgentEndpointFactory``) replaces the guarded TCP/TLS
        connections, e.g. with UNIX sockets to another worker (``front/owners.py``)."""
        self.reactor = reactor
        self.resolve = resolve
        self.is_own = is_own
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = _ConnectionAwareFactory
        self.pool.maxPersistentPerHost = MAX_CONNECTIONS_PER_HOST
        self.pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
        self.agent = Agent.usingEndpointFactory(reactor, endpoints or _EndpointFactory(self),
                                                pool=self.pool)

    def endpoint(self, host: str, port: int, tls: bool = False) -> IStreamClientEndpoint:
        """Connections to ``host``: an address is dialled at once, a name resolved with
        ``resolve`` (no attempt delay, unlike ``HostnameEndpoint``)."""
        return _GuardedEndpoint(self, host, port, tls)

    def request(self, method: str, url: str, headers: dict[str, str],
                body: bytes | None = None) -> "defer.Deferred[IResponse]":
        """Send a request; the Deferred fires with the response once its headers arrive,
        or fails after ``idle_timeout`` seconds without them."""
        producer = FileBodyProducer(BytesIO(body)) if body else None
        raw = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        d = self.agent.request(method.encode(), url.encode(), raw, producer)
        d.addTimeout(self.idle_timeout + self.connect_timeout, self.reactor)
        return d

    def deliver(self, response: IResponse, sink: BodySink) -> None:
        """Stream ``response``'s body into ``sink``; abort after ``idle_timeout`` of silence."""
        response.deliverBody(_BodyReceiver(sink, self.reactor, self.idle_timeout))

    def close(self) -> "defer.Deferred[None]":
        return self.pool.closeCachedConnections()


class _BodyReceiver(Protocol):
    def __init__(self, sink: BodySink, reactor, idle_timeout: float) -> None:  # type: ignore[no-untyped-def]
        self.sink, self.reactor, self.idle_timeout = sink, reactor, idle_timeout
        self.timer = None
        self.timed_out = False

    def connectionMade(self) -> None:  # noqa: N802
        self.timer = self.reactor.callLater(self.idle_timeout, self._idle)
        attach = getattr(self.sink, "attach_producer", None)
        if attach is not None:  # a sink that may need to push back (a full disk)
            attach(self.transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.idle_timeout)
        self.sink.write(data)

    def _idle(self) -> None:
        if getattr(self.sink, "pushing_back", False):  # paused by us (a full disk's
            self.timer = self.reactor.callLater(self.idle_timeout, self._idle)  # readers)
            return
        self.timed_out = True
        log.error("upstream silent for {seconds}s: download abandoned",
                  seconds=self.idle_timeout)
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        complete = reason.check(ResponseDone) or (
            reason.check(PotentialDataLoss) and not self.timed_out)
        self.sink.finish(None if complete else reason)


def header_dict(headers: Headers) -> dict[str, str]:
    """Twisted ``Headers`` as {lower-case name: values joined with ", "}."""
    return {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in headers.getAllRawHeaders()}


def header_pairs(headers: Headers) -> list[tuple[str, str]]:
    """Twisted ``Headers`` as an ordered list of (name, value), one pair per value."""
    return [(name.decode("latin-1"), value.decode("latin-1"))
            for name, values in headers.getAllRawHeaders() for value in values]
