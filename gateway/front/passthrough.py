"""The transparent HTTPS port, which never breaks a build: a client that rejects our CA
gets the real upstream, byte for byte, on its next connections.

Each connection's first bytes are read before any TLS: the ClientHello's SNI name says
where the client is going (``client_hello_sni``, pure).  Then either

- TLS with a certificate minted for that name and the gateway's site behind it, layered
  as ``listenSSL`` layers it (``TLSMemoryBIOFactory``, see ``gateway/proxy.py``
  ``_hand_over``); if the client refuses our certificate there (a TLS alert
  ``unknown_ca`` / ``bad_certificate`` / ``certificate_unknown``, or a close before the
  handshake ends, right after our Certificate, from a pair that has not completed one
  lately) the pair (client address, name) goes into an ``UntrustedMemo`` for
  ``UNTRUSTED_MEMO_SECONDS``;
- or, for a pair in the memo, a tunnel to the real host's port 443 (resolved with the DNS
  forwarders, never our redirecting view; our own sockets refused), the ClientHello
  replayed: the client's retry (pip's, npm's, ``curl --retry``) succeeds uncached
  instead of failing because of cachegate.

Both events are counted (``PassthroughStats``; tunnelled bytes also go into the gateway's
``Stats`` under the label ``PASSTHROUGH``) so the status page and ``cachegate doctor`` can
name the client that needs ``cachegate trust image``.

The alternative rejected: answering every unknown-trust client through the tunnel from its
first connection would need the client's trust store, which the server cannot see; the
failed first attempt is the price of finding out, and package managers retry.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.front.tunnel import ClientSide, UpstreamEnd, UpstreamFactory
from gateway.cache.rules import find_upstream
from gateway.front.proxy import memo, rejects_certificate, tunnel_refusal

log = Logger()

UPSTREAM_TLS_PORT = 443
# A ClientHello is one TLS record (at most 16 KiB plus its 5-byte header); a client that
# sends more without one is not speaking TLS and is handed to the TLS layer to be refused.
MAX_HELLO = 5 + 16 * 1024
# A client that connects and sends nothing holds a socket (the site's idle timeout only
# starts once the TLS layer is there).
HELLO_TIMEOUT = 30.0
NEED_MORE = object()  # client_hello_sni: the ClientHello is not complete yet
# How long a completed handshake vouches for its (client, name): long enough for the
# connections a client abandons as it exits, short because Docker hands a container's
# address to the next one, which may run an image that does not trust us.
TRUSTING_MEMO_SECONDS = 60.0

Locate = Callable[[str], "defer.Deferred[list[tuple[str, int]]]"]


# --- pure core ----------------------------------------------------------------------

def client_hello_sni(data: bytes) -> str | None | object:
    """The SNI host name of the TLS ClientHello that ``data`` starts with (lower case),
    None when there is none or ``data`` is not a ClientHello, ``NEED_MORE`` when the
    record is not complete yet (RFC 8446 4.1.2, RFC 6066 3)."""
    if len(data) < 5:
        return NEED_MORE if data[:1] in (b"", b"\x16") else None
    if data[0] != 0x16:
        return None
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return NEED_MORE
    try:
        return _sni_in_hello(memoryview(data)[5:end])
    except (IndexError, ValueError):
        return None


def _sni_in_hello(hello: memoryview) -> str | None:
    if hello[0] != 1:  # handshake type client_hello
        return None
    body = hello[4:4 + int.from_bytes(hello[1:4], "big")]
    at = 2 + 32  # legacy_version, random
    at += 1 + body[at]  # legacy_session_id
    at += 2 + int.from_bytes(body[at:at + 2], "big")  # cipher_suites
    at += 1 + body[at]  # legacy_compression_methods
    end = at + 2 + int.from_bytes(body[at:at + 2], "big")
    at += 2
    while at + 4 <= end:
        kind, size = int.from_bytes(body[at:at + 2], "big"), int.from_bytes(body[at + 2:at + 4], "big")
        if kind == 0:  # server_name: list length, then (type 0 = host_name, length, name)
            entry = body[at + 4:at + 4 + size]
            if entry[2] != 0:
                return None
            length = int.from_bytes(entry[3:5], "big")
            name = bytes(entry[5:5 + length])
            if len(name) != length:
                raise ValueError("short server_name")
            return name.decode("ascii").lower().rstrip(".")
        at += 4 + size
    return None


@dataclass
class PassthroughStats:
    """(client, name) pairs that rejected our certificate, and tunnels opened for them."""

    rejected: Counter = field(default_factory=Counter)
    tunnelled: Counter = field(default_factory=Counter)
    tunnel_failures: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        pairs = sorted(set(self.rejected) | set(self.tunnelled) | set(self.tunnel_failures))
        return {"untrusting_clients": [
            {"client": client, "host": host, "rejected": self.rejected[(client, host)],
             "tunnelled": self.tunnelled[(client, host)],
             "tunnel_failures": self.tunnel_failures[(client, host)]}
            for client, host in pairs],
            "rejected": sum(self.rejected.values()),
            "tunnelled": sum(self.tunnelled.values())}


def advice(stats: dict) -> list[str]:
    """One line per client that rejected our CA, for ``cachegate doctor`` and the status
    page (``stats`` is ``PassthroughStats.as_dict()``, e.g. from the admin API)."""
    return [f"client {entry['client']} does not trust the CA for {entry['host']} "
            f"({entry['rejected']} rejected, {entry['tunnelled']} tunnelled uncached): run "
            f"`cachegate trust image IMAGE` for its base image"
            for entry in stats.get("untrusting_clients", ()) if entry["rejected"]]


# --- wiring -------------------------------------------------------------------------

class PassthroughFactory(Factory):
    """The HTTPS port of a ``GatewayService`` (``top``): its site, certificates and
    catalogue.  ``locate(name)`` gives the (address, port)s a tunnel for ``name`` may
    connect to: by default the forwarders' addresses of the name, port 443 (tests replace
    it with their own TLS origin)."""

    noisy = False

    def __init__(self, top: Any, reactor: Any, is_own: Callable[[str, int], bool]) -> None:
        self.top, self.reactor, self.is_own = top, reactor, is_own
        self.untrusted = memo(top, reactor, "untrusted")
        # (client, name) pairs that completed a handshake with our certificate lately: a
        # silent close from them is not a rejection (see _TrustWatch).
        self.trusting = memo(top, reactor, "trusting", TRUSTING_MEMO_SECONDS)
        self.stats = PassthroughStats()
        self.locate: Locate = self._forwarded

    def _forwarded(self, name: str) -> "defer.Deferred[list[tuple[str, int]]]":
        d = self.top.forwarder.resolve_addresses(name)
        d.addCallback(lambda addresses: [(a, UPSTREAM_TLS_PORT) for a in addresses])
        return d

    @cached_property
    def tls_factory(self) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(self.top.tls.options, False, self.top.site)

    def buildProtocol(self, addr: Any) -> "PeekProtocol":  # noqa: N802
        proto = PeekProtocol()
        proto.factory = self
        return proto

    def rejected(self, client: str, name: str) -> None:
        self.untrusted.add(client, name)
        self.stats.rejected[(client, name)] += 1
        log.warn("https: {client} does not trust the cachegate CA for {name}: its next "
                 "connections are tunnelled (uncached) for {s}s; run `cachegate trust image "
                 "…` for its base image", client=client, name=name, s=self.untrusted.seconds)

    def tunnel_closed(self, client: str, name: str, down: int) -> None:
        upstream = find_upstream(self.top.config.upstreams, name)
        self.top.stats.record(upstream.name if upstream else "unknown", client,
                              "PASSTHROUGH", down)


class PeekProtocol(ClientSide):
    """One connection on the HTTPS port until its ClientHello says what it becomes."""

    log, prefix = log, "https"

    def __init__(self) -> None:
        super().__init__("hello")  # -> "handed" | "connecting" -> "tunnel" | "closed"
        self.name: str | None = None

    @property
    def target(self) -> str | None:
        return self.name

    def connectionMade(self) -> None:  # noqa: N802
        self.client = getattr(self.transport.getPeer(), "host", "?")
        self._timer = self.factory.reactor.callLater(HELLO_TIMEOUT, self._hello_timeout)

    def _received(self, data: bytes) -> None:
        self.buffer += data
        if self.state != "hello":
            return
        name = client_hello_sni(self.buffer)
        if name is NEED_MORE and len(self.buffer) < MAX_HELLO:
            return
        self.name = name if isinstance(name, str) else None
        if self.name and self.factory.top.has_name(self.name) and \
                (self.client, self.name) in self.factory.untrusted:
            if self.factory.top.gateway.sessions.replay_for(self.client) is not None:
                # A tunnel would bypass the record being replayed: refused, never opened.
                log.warn("https: {client} is in a replayed session: no passthrough to "
                         "{name} (it must trust the cachegate CA)", client=self.client,
                         name=self.name)
                self._hand_over()
                return
            self._open_tunnel()
        else:
            self._hand_over()

    def _hello_timeout(self) -> None:
        self._timer = None
        if self.state == "hello":
            self.state = "closed"
            self.transport.abortConnection()

    def _tunnel_closed(self, received: int) -> None:
        self.factory.tunnel_closed(self.client, self.name, received)

    # -- TLS and the site ------------------------------------------------------------

    def _hand_over(self) -> None:
        """The connection becomes TLS in front of the site's channel; what we read so far
        is replayed into it."""
        self._cancel_timer()
        self.state = "handed"
        transport, factory = self.transport, self.factory.tls_factory
        channel = self.factory.top.site.buildProtocol(transport.getPeer())
        watch = _TrustWatch(channel, self.factory, self.client, self.name)
        tls = factory.protocol(factory, watch)
        transport.protocol = tls
        tls.makeConnection(transport)
        replay, self.buffer = self.buffer, b""
        tls.dataReceived(replay)

    # -- the tunnel ------------------------------------------------------------------

    def _open_tunnel(self) -> None:
        self._cancel_timer()
        self.state = "connecting"
        self.transport.pauseProducing()
        self._connecting = d = defer.ensureDeferred(self._dial())
        d.addCallbacks(self._tunnel_open, self._tunnel_failed)

    async def _dial(self) -> "UpstreamEnd":
        targets = await self.factory.locate(self.name)
        allowed = [(a, p) for a, p in targets
                   if tunnel_refusal(a, p, self.client, self.factory.is_own) is None]
        if not allowed:
            raise ValueError(f"no address for {self.name} that is not this gateway")
        last: Exception | None = None
        for address, port in allowed[:2]:
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(self.factory.reactor, address, port,
                            timeout=self.factory.top.config.cache.connect_timeout)
            try:
                return await endpoint.connect(UpstreamFactory(self))
            except (error.ConnectError, error.TimeoutError, OSError) as e:
                last = e
        raise ValueError(f"cannot connect to {self.name}: {last}")

    def _tunnel_open(self, upstream: "UpstreamEnd") -> None:
        self._connecting = None
        if self.state != "connecting":  # the client left while we connected
            upstream.transport.loseConnection()
            return
        self.factory.stats.tunnelled[(self.client, self.name)] += 1
        log.info("https: {client} {name} tunnelled to the real upstream (does not trust "
                 "the CA)", client=self.client, name=self.name)
        self._join(upstream)

    def _tunnel_failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError) or self.state != "connecting":
            return
        self.factory.stats.tunnel_failures[(self.client, self.name)] += 1
        if failure.check(ValueError, error.DNSLookupError, error.TimeoutError):
            log.error("https: {client} {name}: no tunnel: {reason}", client=self.client,
                      name=self.name, reason=str(failure.value))
        else:
            log.failure("https: tunnelling {client} to {name}", failure,
                        client=self.client, name=self.name)
        self.state = "closed"
        self.transport.abortConnection()


@implementer(IHandshakeListener)
class _TrustWatch:
    """What the TLS layer wraps: the site's channel, with an eye on how the handshake
    ended (the TLS layer reports a failed handshake to the protocol it wraps).  A
    rejection is a distrust alert, or a close before the handshake completed by a client
    whose ClientHello named a host we serve (we answered it with our Certificate) unless
    that client completed a handshake for that name lately: then it trusts our CA, and
    the close is a connection it gave up on (go abandons the dials it no longer needs
    when it exits; counted as a rejection, its next build went uncached)."""

    def __init__(self, channel: Any, factory: PassthroughFactory, client: str,
                 name: str | None) -> None:
        self.channel, self.factory, self.client, self.name = channel, factory, client, name
        self.handshake_done = False

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.handshake_done = True
        if self.name:
            self.factory.trusting.add(self.client, self.name)
        forward = getattr(self.channel, "handshakeCompleted", None)
        if forward is not None:
            forward()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.channel.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        if not self.handshake_done and self.name and self.factory.top.has_name(self.name) \
                and (rejects_certificate(reason)
                     or (reason.check(error.ConnectionDone, error.ConnectionLost)
                         and (self.client, self.name) not in self.factory.trusting)):
            self.factory.rejected(self.client, self.name)
        self.channel.connectionLost(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)
