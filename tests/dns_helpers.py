"""DNS test helpers: a recording fake upstream resolver, a small client, and a cachegate
resolver in this process, all on loopback port 0 (Twisted + dnslib, like the real thing)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSRecord
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import Int16StringReceiver

from dns.access import host_owns
from dns.service import dns_services
from gateway.config import Config, DnsConfig
from tests.clients import need

ADVERTISED = "10.9.8.7"
SOA = "example. 3600 IN SOA ns.example. admin.example. 1 3600 600 86400 60"


def need_dig() -> str:
    """The path of ``dig``; skipped when missing, but under CI=true a missing dig fails."""
    path = shutil.which("dig")
    need(path, "dig not installed (Debian package bind9-dnsutils)")
    return path  # type: ignore[return-value]


class FakeUpstream:
    """An upstream resolver on ``host`` (UDP and TCP on one port) serving ``zone`` and
    recording every query it gets as ``(transport, DNSRecord)``.

    ``zone`` maps a lower-case name to zone-file lines; a known name without the asked
    type gets NODATA, an unknown one NXDOMAIN, both with ``SOA``.  ``silent`` never
    answers; ``truncate_udp`` answers UDP with TC set and no records."""

    def __init__(self, reactor: Any, zone: dict[str, list[str]] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.reactor, self.zone, self.host = reactor, zone or {}, host
        self.queries: list[tuple[str, DNSRecord]] = []
        self.sources: list[tuple[str, int]] = []  # (ip, port) of each UDP query
        self.silent = self.truncate_udp = False
        self._ports: list[Any] = []

    def start(self) -> "FakeUpstream":
        factory = protocol.Factory.forProtocol(_UpstreamTcp)
        factory.upstream = self  # type: ignore[attr-defined]
        for _ in range(10):  # until the kernel's UDP port number is free for TCP too
            udp = self.reactor.listenUDP(0, _UpstreamUdp(self), interface=self.host)
            self.port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(self.port, factory, interface=self.host)
            except error.CannotListenError:
                udp.stopListening()
                continue
            self._ports = [udp, tcp]
            return self
        raise RuntimeError("no port free for both UDP and TCP")

    def stop(self) -> defer.Deferred[Any]:
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self._ports])

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def names(self) -> list[str]:
        return [str(q.q.qname).rstrip(".").lower() for _, q in self.queries]

    def reply(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        self.queries.append((transport, query))
        if self.silent:
            return None
        reply = query.reply(ra=1, aa=0)
        name = str(query.q.qname).rstrip(".").lower()
        lines = self.zone.get(name)
        if lines is None:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in (RR.fromZone("\n".join(lines)) if lines else []):
            if rr.rtype == query.q.qtype:
                reply.add_answer(rr)
        if not reply.rr:
            reply.add_auth(*RR.fromZone(SOA))
        if any(rr.rtype == QTYPE.OPT for rr in query.ar):
            reply.add_ar(EDNS0(udp_len=4096))
        if transport == "udp" and self.truncate_udp:
            reply = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1),
                              q=reply.q)
        return reply.pack()


class _UpstreamUdp(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.upstream.sources.append((addr[0], addr[1]))
        reply = self.upstream.reply(data, "udp")
        if reply is not None:
            self.transport.write(reply, addr)


class _UpstreamTcp(Int16StringReceiver):
    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        reply = self.factory.upstream.reply(data, "tcp")
        if reply is not None:
            self.sendString(reply)


# -- a client ------------------------------------------------------------------------------

class _UdpClient(protocol.DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.replies: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.replies.put(data)


def _none_on_timeout(failure: Any) -> None:
    failure.trap(defer.TimeoutError)


class UdpClient:
    """A client socket that sends raw datagrams and waits for replies."""

    def __init__(self, reactor: Any, port: int, host: str = "127.0.0.1") -> None:
        self.reactor, self.server = reactor, (host, port)
        self.protocol = _UdpClient()
        self.listening = reactor.listenUDP(0, self.protocol, interface=host)

    def send(self, data: bytes) -> None:
        self.protocol.transport.write(data, self.server)

    def reply(self, timeout: float = 2.0) -> defer.Deferred[bytes | None]:
        """The next reply, or None after ``timeout`` seconds."""
        d = self.protocol.replies.get()
        d.addTimeout(timeout, self.reactor)
        return d.addErrback(_none_on_timeout)

    @defer.inlineCallbacks
    def ask(self, query: DNSRecord, timeout: float = 2.0) -> Any:
        """Send ``query``; the parsed reply with its ID and question (others, e.g. answers
        to earlier junk, are skipped), or None."""
        self.send(query.pack())
        while True:
            data = yield self.reply(timeout)
            if data is None:
                return None
            reply = DNSRecord.parse(data)
            if reply.header.id == query.header.id and reply.questions == query.questions:
                return reply

    def close(self) -> Any:
        return self.listening.stopListening()


class _TcpClient(Int16StringReceiver):
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.replies: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        self.replies.put(data)

    def reply(self, timeout: float = 2.0) -> defer.Deferred[DNSRecord]:
        """The next reply, parsed; fails with TimeoutError after ``timeout`` seconds."""
        d = self.replies.get().addTimeout(timeout, self.reactor)
        return d.addCallback(DNSRecord.parse)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.closed.callback(None)


def tcp_connect(reactor: Any, port: int) -> defer.Deferred[_TcpClient]:
    """A TCP connection to the resolver: ``sendString`` queries, ``reply()`` answers."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _TcpClient(reactor))


# -- cachegate's resolver ------------------------------------------------------------------

def dns_config(forwarders: list[str], **dns: Any) -> Config:
    """The default catalogue; our DNS on a free port answering ``ADVERTISED`` for it;
    ``forwarders`` upstream."""
    settings = {"port": 0, "forwarders": tuple(forwarders), "advertise_ipv4": ADVERTISED,
                **dns}
    return Config(source="<test>", dns=replace(DnsConfig(), **settings))


class RunningResolver:
    """cachegate's resolver on ``host`` in this process: ``port``, ``stats``,
    ``forwarder``; ``stop()`` when done."""

    def __init__(self, reactor: Any, config: Config, timeout: float = 0.3,
                 resolv_conf: Path = Path("/nonexistent"), host: str = "127.0.0.1",
                 owns: Callable[[str], bool] = host_owns) -> None:
        self.services, self.forwarder, self.stats = dns_services(
            config, reactor, [host], ADVERTISED, resolv_conf=resolv_conf, timeout=timeout,
            owns=owns)
        for s in self.services:
            s.startService()
        self.port = self.services[0].port  # type: ignore[attr-defined]
        self.responder = self.services[0].responder  # type: ignore[attr-defined]

    def stop(self) -> defer.Deferred[Any]:
        return defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self.services])
