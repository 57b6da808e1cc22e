"""The explicit proxy port: the same cache for clients configured with ``HTTP(S)_PROXY``.

The first request line (and, for ``CONNECT``, its head) decides what a connection becomes;
``route`` makes that choice without I/O:

- ``CONNECT host:443`` for a host we serve: ``200``, then TLS with a certificate minted for
  the SNI name (``top.tls.options``), then an HTTP channel of the gateway's own site: the
  request inside is served from the cache, with the handler's SNI/Host check (421).
- ``CONNECT host:80`` for a host we serve: ``200``, then that channel over plain TCP.
- ``CONNECT`` to anything else: a byte-for-byte tunnel (names resolved with the DNS
  forwarders, never our redirecting view), backpressure both ways, either side closing
  closes both.  Any port: a build proxy carries git, registries on 8443, Nexus on 8081...;
  squid's "443 only" default would break those builds for no gain, since the allowed
  networks reach those ports directly anyway.  Refused (403): our own listening sockets
  (a loop), and loopback addresses for clients that are not on loopback themselves (a
  container must not reach services bound to the host's 127.0.0.1, such as the admin API).
- anything else (``GET http://host/path`` from ``http_proxy`` clients): the gateway's site
  channel, with the bytes read so far replayed; the handler routes by the URL's host:
  a host it serves from the cache, any other relayed uncached, request by request (never
  to this host's loopback addresses or our own sockets).

A served host whose client rejected our certificate (a TLS alert saying so, before the
handshake finished) is tunnelled for that client for ``UNTRUSTED_MEMO_SECONDS``: the retry
that pip and npm make on their own (or the build's next run) then succeeds uncached,
instead of failing because of cachegate (mitmproxy's ``tls_passthrough`` example does the
same).

Clients outside ``dns.allow`` get 403 before a byte is read (never an open proxy).  A head
that is malformed (400), longer than ``MAX_HEAD`` (431) or not complete within
``HEAD_TIMEOUT`` (408) is answered and the connection closed; nothing a client sends
raises out of ``dataReceived``.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http, server

from dns.access import AccessPolicy
from gateway.front.tunnel import ClientSide, UpstreamEnd, UpstreamFactory

log = Logger()

# The request line plus headers of a CONNECT (other requests are handed over after their
# request line, and the site applies its own limits).  Real CONNECT heads are a few
# hundred bytes; 16 KiB is twisted.web's own header limit.
MAX_HEAD = 16 * 1024
# A client that connects and says nothing holds a socket; browsers and package managers
# send their request at once.
HEAD_TIMEOUT = 30.0
# How long a client that rejected our certificate for a host gets that host tunnelled.
# Long enough for a build's retries and the rest of its run, short enough that installing
# the CA takes effect without a restart.
UNTRUSTED_MEMO_SECONDS = 600
UNTRUSTED_MEMO_ENTRIES = 4096
# TLS alerts a client sends when it does not accept our certificate (OpenSSL's names).
_DISTRUST_ALERTS = ("alert unknown ca", "alert bad certificate", "alert certificate unknown")

INTERCEPT_TLS_PORT = 443
INTERCEPT_PLAIN_PORT = 80
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                       r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")

Resolve = Callable[[str], "defer.Deferred[list[str]]"]
IsOwn = Callable[[str, int], bool]


# --- pure core ----------------------------------------------------------------------

class BadRequest(ValueError):
    """A head we answer with ``status`` and close."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class RequestLine:
    method: str
    target: str
    version: str


def parse_request_line(line: bytes) -> RequestLine:
    """``METHOD SP target SP HTTP/1.x`` (the trailing CR, if any, already removed)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadRequest("not an HTTP request line")
    if any(b < 0x21 or b == 0x7F for b in parts[1]):
        raise BadRequest("control characters in the request target")
    method, target, version = (p.decode("latin-1") for p in parts)
    if not _VERSION.fullmatch(version):
        raise BadRequest(f"unsupported protocol version {version[:20]!r}")
    return RequestLine(method, target, version)


def check_header_lines(lines: list[bytes]) -> None:
    """Each line is ``name: value`` (obsolete line folding is refused, RFC 9112 5.2)."""
    for line in lines:
        name, colon, _ = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header line")


class HeadReader:
    """A connection's first bytes, until ``feed`` can say what they are: ``(line, rest)``.

    For ``CONNECT`` that is once the whole head is in (checked; ``rest`` is what follows
    it); for any other method as soon as the request line is (``rest`` is everything read,
    for the site to parse again).  Each byte is scanned once, however the client dribbles
    them; more than ``MAX_HEAD`` bytes without an answer raise ``BadRequest`` (431)."""

    def __init__(self) -> None:
        self.buffer = b""
        self._line: RequestLine | None = None
        self._line_end = -1  # index of the request line's LF
        self._scanned = 0  # bytes searched already

    def feed(self, data: bytes) -> tuple[RequestLine, bytes] | None:
        self.buffer += data
        if self._line is None:
            if self._scanned == 0:
                self.buffer = self.buffer.lstrip(b"\r\n")  # RFC 9112 2.2: leading CRLFs
            self._line_end = self.buffer.find(b"\n", self._scanned)
            if self._line_end < 0:
                return self._wait()
            self._line = parse_request_line(self.buffer[:self._line_end].rstrip(b"\r"))
            if self._line.method != "CONNECT":
                return self._line, self.buffer
            self._scanned = self._line_end
        # A match may begin up to 3 bytes before the new data; one starting at the request
        # line's LF is found from there, its optional CR being before it.
        end = _HEAD_END.search(self.buffer, max(self._line_end, self._scanned - 3))
        if end is None or end.end() > MAX_HEAD:
            return self._wait()
        check_header_lines(self.buffer[self._line_end + 1:end.start()].splitlines())
        return self._line, self.buffer[end.end():]

    def _wait(self) -> None:
        self._scanned = len(self.buffer)
        if self._scanned > MAX_HEAD:
            raise BadRequest(f"request head over {MAX_HEAD} bytes", 431)
        return None


def parse_authority(target: str) -> tuple[str, int]:
    """(host, port) of a CONNECT target ``host:port`` or ``[v6]:port``; the host lower
    case without a trailing dot, an IPv6 literal without brackets."""
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest("CONNECT needs host:port")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise BadRequest("bad IPv6 literal") from None
    host = host.lower().rstrip(".")
    if not _HOSTNAME.fullmatch(host):
        raise BadRequest("bad host name")
    return host, int(port)


@dataclass(frozen=True)
class Intercept:
    """Serve from the cache on this connection (``tls``: after a TLS handshake)."""

    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class Tunnel:
    host: str
    port: int


@dataclass(frozen=True)
class Serve:
    """Hand the connection, as it is, to the gateway's HTTP site."""


Route = Intercept | Tunnel | Serve


def route(line: RequestLine, serves: Callable[[str], bool],
          distrusted: Callable[[str], bool] = lambda host: False) -> Route:
    """What a connection whose first request is ``line`` becomes.  ``serves(host)``: the
    gateway serves that name; ``distrusted(host)``: this client rejected our certificate
    for it lately."""
    if line.method != "CONNECT":
        return Serve()
    host, port = parse_authority(line.target)
    if serves(host) and port == INTERCEPT_PLAIN_PORT:
        return Intercept(host, port, tls=False)
    if serves(host) and port == INTERCEPT_TLS_PORT and not distrusted(host):
        return Intercept(host, port, tls=True)
    return Tunnel(host, port)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def tunnel_refusal(address: str, port: int, client: str, is_own: IsOwn) -> str | None:
    """Why ``client`` may not be tunnelled to ``address:port``, or None.  The unspecified
    address counts as loopback: connecting to it reaches this host."""
    ip = _ip(address)
    local = ip.is_loopback or ip.is_unspecified
    if local and ip.is_unspecified:
        ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    if is_own(str(ip), port):
        return "that is this gateway"
    if local and not _ip(client).is_loopback:
        return "loopback addresses are reachable from this host only"
    return None


def rejects_certificate(reason: Failure) -> bool:
    """Whether a TLS connection's end says the client refused our certificate: it sent
    one of ``_DISTRUST_ALERTS`` (only a handshake can end so: we ask no client
    certificate)."""
    if not reason.check(SSL.Error):
        return False
    text = str(reason.value).lower()
    return any(alert in text for alert in _DISTRUST_ALERTS)


class UntrustedMemo:
    """(client, host) pairs whose client rejected our certificate, each for ``seconds``;
    bounded (the oldest entry goes first)."""

    def __init__(self, clock: Callable[[], float], seconds: float = UNTRUSTED_MEMO_SECONDS,
                 entries: int = UNTRUSTED_MEMO_ENTRIES) -> None:
        self.clock, self.seconds, self.entries = clock, seconds, entries
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def add(self, client: str, host: str) -> None:
        self._until[(client, host)] = self.clock() + self.seconds
        self._until.move_to_end((client, host))
        while len(self._until) > self.entries:
            self._until.popitem(last=False)

    def __contains__(self, key: tuple[str, str]) -> bool:
        until = self._until.get(key)
        if until is not None and until <= self.clock():
            del self._until[key]
            until = None
        return until is not None


class SharedMemo(UntrustedMemo):
    """The same memo shared by worker processes through the store: a client that rejected
    our CA at one worker is tunnelled by the next one it reaches (connections are spread
    over workers by the kernel, not by client)."""

    def __init__(self, clock: Callable[[], float], store: Any, kind: str,
                 seconds: float = UNTRUSTED_MEMO_SECONDS) -> None:
        super().__init__(clock, seconds)
        self.store, self.kind = store, kind

    def add(self, client: str, host: str) -> None:
        super().add(client, host)
        self.store.remember(self.kind, f"{client} {host}", self.clock() + self.seconds)

    def __contains__(self, key: tuple[str, str]) -> bool:
        if super().__contains__(key):
            return True
        until = self.store.remembered(self.kind, " ".join(key))
        if until <= self.clock():
            return False
        self._until[key] = until
        return True


def memo(top: Any, reactor: Any, kind: str,
         seconds: float = UNTRUSTED_MEMO_SECONDS) -> UntrustedMemo:
    """A memo of (client, host) pairs: shared through the store when worker processes
    serve the clients, else in this process's memory."""
    if getattr(top.store, "worker", ""):
        return SharedMemo(reactor.seconds, top.store, kind, seconds)
    return UntrustedMemo(reactor.seconds, seconds)


def response(status: int, reason: str) -> bytes:
    """A complete short ``text/plain`` answer that closes the connection."""
    body = f"cachegate: {reason}\n".encode()
    phrase = http.RESPONSES.get(status, b"Error").decode("latin-1")
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: close\r\n\r\n").encode() + body


# --- wiring -------------------------------------------------------------------------

@dataclass
class ProxyContext:
    """What the proxy port uses of the process (``proxy_context(top)`` builds it)."""

    site: server.Site
    tls_options: Any  # server CertificateOptions: a certificate per SNI name
    serves: Callable[[str], bool]
    resolve: Resolve
    is_own: IsOwn
    access: AccessPolicy
    connect_timeout: float
    untrusted: UntrustedMemo


def proxy_context(top: Any, reactor: Any) -> ProxyContext:
    """The proxy's view of a ``GatewayService``."""
    config = top.config
    return ProxyContext(top.site, top.tls.options, top.has_name,
                        top.forwarder.resolve_addresses, top.own_socket,
                        AccessPolicy(config.dns.allow), config.cache.connect_timeout,
                        memo(top, reactor, "proxy-untrusted"))


class ProxyFactory(Factory):
    noisy = False

    def __init__(self, reactor: Any, context: ProxyContext) -> None:
        self.reactor, self.context = reactor, context

    @cached_property
    def tls_factory(self) -> TLSMemoryBIOFactory:
        """Builds the server-side TLS layer of intercepted connections."""
        return TLSMemoryBIOFactory(self.context.tls_options, False, self.context.site)

    def buildProtocol(self, addr: Any) -> "ProxyProtocol":  # noqa: N802
        proto = ProxyProtocol(self.reactor, self.context)
        proto.factory = self
        return proto


class ProxyProtocol(ClientSide):
    """One client connection until its first request decides what it becomes."""

    log, prefix = log, "proxy"

    def __init__(self, reactor: Any, context: ProxyContext) -> None:
        super().__init__("head")  # -> "connecting" -> "tunnel"; "handed" / "closed"
        self.reactor, self.context = reactor, context
        self.head = HeadReader()
        self.target = ""

    # -- events ----------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.client = getattr(self.transport.getPeer(), "host", "?")
        if not self.context.access.allows(self.client):
            log.warn("proxy: {client} refused: not in dns.allow", client=self.client)
            return self._refuse(403, "this proxy serves the allowed networks only")
        self._timer = self.reactor.callLater(HEAD_TIMEOUT, self._head_timeout)

    # -- the head --------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self.state != "head":  # connecting (reads are paused) or closing
            self.buffer += data
            return
        try:
            head = self.head.feed(data)
            chosen = None if head is None else route(
                head[0], self.context.serves,
                lambda host: (self.client, host) in self.context.untrusted)
        except BadRequest as e:
            self._warn_bad_head(e)
            return self._refuse(e.status, str(e))
        if head is not None:
            self._dispatch(chosen, head[1])

    def _warn_bad_head(self, e: BadRequest) -> None:
        """One warn line, within the gateway's budget for bad client input when the site
        has one (a flood of bad heads must not flood the log)."""
        gateway = getattr(self.context.site, "gateway", None)
        warn = gateway.warn_client if gateway is not None else log.warn
        warn("proxy: {client}: {status} {reason}", client=self.client, status=e.status,
             reason=str(e))

    def _head_timeout(self) -> None:
        self._timer = None
        if self.state == "head":
            log.warn("proxy: {client}: no request within {s}s", client=self.client,
                     s=HEAD_TIMEOUT)
            self._refuse(408, "no request received in time")

    def _dispatch(self, chosen: Route, rest: bytes) -> None:
        if isinstance(chosen, Serve):  # ``rest`` is all we read: the site parses it again
            self._hand_over(rest, tls=False)
        elif isinstance(chosen, Intercept):
            log.info("proxy: {client} CONNECT {host}:{port} served from the cache",
                     client=self.client, host=chosen.host, port=chosen.port)
            self.transport.write(ESTABLISHED)
            self._hand_over(rest, tls=chosen.tls, host=chosen.host)
        elif self._replaying():
            self._refuse(403, f"CONNECT {chosen.host}:{chosen.port}: this client is in a "
                              "replayed session, which serves only recorded URLs")
        else:
            self._open_tunnel(chosen, rest)

    def _replaying(self) -> bool:
        """Whether this client is held to a replayed record: a tunnel would bypass it."""
        gateway = getattr(self.context.site, "gateway", None)
        return gateway is not None and gateway.sessions.replay_for(self.client) is not None

    # -- handing over to the site ------------------------------------------------------

    def _hand_over(self, replay: bytes, tls: bool, host: str = "") -> None:
        """The connection becomes the site's HTTP channel (behind TLS if asked): the
        transport delivers to it from now on; ``replay`` is what we read beyond our part.

        TLS is layered as ``listenSSL`` layers it (a ``TLSMemoryBIOProtocol`` as the
        channel's transport), not with ``transport.startTLS``: after startTLS the channel's
        transport is still a ``tcp.Server``, which streaming.py takes for plain TCP and
        ``sendfile``s bodies to, past the TLS layer."""
        self._cancel_timer()
        self.state = "handed"
        transport = self.transport
        channel = self.context.site.buildProtocol(transport.getPeer())
        # Absolute-form requests of http_proxy clients: the handler relays those for hosts
        # outside the catalogue.  (Not inside an intercepted CONNECT: one host only.)
        channel.proxy_client = not host
        target = channel
        if tls:
            factory = self.factory.tls_factory
            target = factory.protocol(factory, _ChannelWatch(channel, self, host))
        transport.protocol = target
        target.makeConnection(transport)
        if replay:
            target.dataReceived(replay)

    def handshake_failed(self, host: str) -> None:
        """An intercepted client refused our certificate: tunnel ``host`` for it a while."""
        self.context.untrusted.add(self.client, host)
        log.warn("proxy: {client} does not trust the cachegate CA for {host}: tunnelled "
                 "(uncached) for {s}s; install the CA (cachegate ca export) to cache it",
                 client=self.client, host=host, s=self.context.untrusted.seconds)

    # -- tunnels -----------------------------------------------------------------------

    def _open_tunnel(self, tunnel: Tunnel, rest: bytes) -> None:
        self.state, self.buffer = "connecting", rest
        self.target = f"{tunnel.host}:{tunnel.port}"
        self.transport.pauseProducing()
        self._connecting = d = defer.ensureDeferred(self._dial(tunnel))
        d.addCallbacks(self._tunnel_open, self._tunnel_failed)
        d.addErrback(self._bug)

    async def _dial(self, tunnel: Tunnel) -> "UpstreamEnd":
        try:
            addresses = await self.context.resolve(tunnel.host)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise _Unreachable(502, f"cannot resolve {tunnel.host}") from e
        if not addresses:
            raise _Unreachable(502, f"cannot resolve {tunnel.host}: no address")
        refusals = [tunnel_refusal(a, tunnel.port, self.client, self.context.is_own)
                    for a in addresses]
        allowed = [a for a, why in zip(addresses, refusals) if why is None]
        if not allowed:
            raise _Unreachable(403, f"no tunnel to {self.target}: {refusals[0]}")
        return await self._dial_any(allowed[:2], tunnel.port)

    async def _dial_any(self, addresses: list[str], port: int) -> "UpstreamEnd":
        for i, address in enumerate(addresses):
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(self.reactor, address, port, timeout=self.context.connect_timeout)
            try:
                return await endpoint.connect(UpstreamFactory(self))
            except (error.ConnectError, error.TimeoutError, OSError) as e:
                if i == len(addresses) - 1:
                    status = 504 if isinstance(e, error.TimeoutError) else 502
                    raise _Unreachable(status, f"cannot connect to {self.target}: {e}") from e
        raise AssertionError("unreachable")

    def _tunnel_open(self, upstream: "UpstreamEnd") -> None:
        self._connecting = None
        if self.state != "connecting":  # the client left while we connected
            upstream.transport.loseConnection()
            return
        self._cancel_timer()
        log.info("proxy: {client} CONNECT {target} tunnelled", client=self.client,
                 target=self.target)
        self.transport.write(ESTABLISHED)
        for transport in (self.transport, upstream.transport):  # no idle timeout, but a
            transport.setTcpKeepAlive(True)  # peer that vanished is noticed (in hours)
        self._join(upstream)

    def _tunnel_failed(self, failure: Failure) -> Failure | None:
        self._connecting = None
        if failure.check(defer.CancelledError) or self.state != "connecting":
            return None
        if not failure.check(_Unreachable):
            return failure  # a bug: _bug logs it
        status, reason = failure.value.args
        log.warn("proxy: {client} CONNECT {target}: {status} {reason}", client=self.client,
                 target=self.target, status=status, reason=reason)
        self._refuse(status, reason)
        return None

    # -- endings -----------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        self._cancel_timer()
        self.state = "closed"
        self.transport.write(response(status, reason))
        self.transport.loseConnection()

    def _bug(self, failure: Failure) -> None:
        log.failure("proxy: error tunnelling {client} to {target}", failure,
                    client=self.client, target=self.target)
        self.state = "closed"
        self.transport.abortConnection()


class _Unreachable(Exception):
    """(status, reason): the tunnel cannot be opened."""


class _ChannelWatch:
    """What the TLS layer of an intercepted connection wraps: the site's channel, with an
    eye on why the connection ended (the TLS layer reports a failed handshake to the
    protocol it wraps, not to the transport), to notice a client rejecting our
    certificate.  Everything else is the channel's."""

    def __init__(self, channel: Any, proxy: ProxyProtocol, host: str) -> None:
        self.channel, self.proxy, self.host = channel, proxy, host

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.channel.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        if rejects_certificate(reason):
            self.proxy.handshake_failed(self.host)
        self.channel.connectionLost(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)
