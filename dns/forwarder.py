"""Forwarding to the upstream resolvers, and the gateway's own name lookups.

Each upstream query gets a fresh random ID and its own UDP socket (so a fresh random source
port from the kernel); only an answer from that server, with that ID and that question, is
taken — the usual defences against spoofed answers.  A silent server costs one timeout and
the next one is asked; a truncated answer is asked again over TCP; when every server
failed the caller gets ``UpstreamError`` (the client, SERVFAIL).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import Any

from dnslib import CLASS, QTYPE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import Int16StringReceiver
from zope.interface import implementer

from dns.answers import NOERROR, NXDOMAIN, WIRE_ERRORS, Key, question_key
from dns.cache import AnswerCache
from dns.resolvconf import Server
from dns.rules import name_labels

log = Logger()

# Per attempt: a resolver that has not answered in this long is taken for down (glibc's
# default is 5 s per server, but we sit in front of it and must answer before it gives up).
DEFAULT_TIMEOUT = 2.0
MIN_ATTEMPTS = 2  # with a single upstream server, ask it twice
MAX_DATAGRAM = 65535  # a client may advertise up to this, and we pass its OPT through


class UpstreamError(Exception):
    """No upstream server gave a usable answer."""


class Forwarder:
    """Asks the upstream ``servers`` in turn; answers go into ``cache`` when one is given."""

    def __init__(self, reactor: Any, servers: list[Server], cache: AnswerCache | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor, self.servers, self.cache, self.timeout = reactor, servers, cache, timeout
        self._first = 0  # the server that answered last is asked first
        self._flights: dict[tuple[Key, int, int], list[defer.Deferred[DNSRecord]]] = {}

    def query(self, key: Key, opt: RR | None = None, cd: bool = False
              ) -> defer.Deferred[DNSRecord]:
        """The upstream answer for ``key``, with the client's EDNS0 ``opt`` passed through.

        Concurrent identical questions share one upstream exchange."""
        flight = (key, opt.edns_do if opt is not None else -1, int(cd))
        waiting = self._flights.get(flight)
        d: defer.Deferred[DNSRecord] = defer.Deferred()
        if waiting is not None:
            waiting.append(d)
            return d
        self._flights[flight] = [d]
        exchange = defer.Deferred.fromCoroutine(self._exchange(key, opt, cd))
        exchange.addBoth(self._landed, flight)
        return d

    def resolve_addresses(self, host: str) -> defer.Deferred[list[str]]:
        """IPv4 then IPv6 addresses of ``host`` from the upstream servers (via the cache),
        never from our redirecting view: the gateway's fetcher uses this."""
        try:
            ipaddress.ip_address(host)
            return defer.succeed([host])
        except ValueError:
            pass
        try:
            labels = name_labels(host)
        except UnicodeError:
            return defer.fail(error.DNSLookupError(f"not a DNS name: {host!r}"))
        lookups = [self._lookup((labels, qtype, CLASS.IN)) for qtype in (QTYPE.A, QTYPE.AAAA)]
        done = defer.DeferredList(lookups, consumeErrors=True)
        return done.addCallback(_addresses, host)

    def _lookup(self, key: Key) -> defer.Deferred[DNSRecord]:
        hit = self.cache.get(key) if self.cache is not None else None
        return defer.succeed(hit.record) if hit else self.query(key)

    def _landed(self, result: DNSRecord | Any, flight: tuple[Key, int, int]) -> None:
        waiting = self._flights.pop(flight)
        if isinstance(result, DNSRecord) and self.cache is not None:
            try:
                self.cache.put(flight[0], result)
            except Exception:  # a bug must not leave the waiting clients hanging
                log.failure("caching the answer to {key}", key=flight[0])
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    async def _exchange(self, key: Key, opt: RR | None, cd: bool) -> DNSRecord:
        attempts = max(MIN_ATTEMPTS, len(self.servers)) if self.servers else 0
        for attempt in range(attempts):
            index = (self._first + attempt) % len(self.servers)
            server = self.servers[index]
            try:
                record = await self._ask(server, key, opt, cd)
            except (defer.TimeoutError, error.ConnectError, error.CannotListenError,
                    UpstreamError, OSError) as e:
                why = f"no answer in {self.timeout:g} s" if isinstance(
                    e, defer.TimeoutError) else str(e) or type(e).__name__
                log.error("upstream DNS {ip} port {port}: {why}", ip=server[0],
                          port=server[1], why=why)
                continue
            self._first = index
            return record
        raise UpstreamError(f"no answer from any of {len(self.servers)} upstream servers")

    async def _ask(self, server: Server, key: Key, opt: RR | None, cd: bool) -> DNSRecord:
        record = await self._udp(server, key, opt, cd)
        if record.header.tc:
            record = await self._tcp(server, key, opt, cd)
        rcode = record.header.rcode | (_ext_rcode(record) << 4)
        if rcode not in (NOERROR, NXDOMAIN):
            raise UpstreamError(f"rcode {rcode}")
        return record

    def _udp(self, server: Server, key: Key, opt: RR | None, cd: bool
             ) -> defer.Deferred[DNSRecord]:
        qid, packet = _query_packet(key, opt, cd)
        exchange = _UdpExchange(self.reactor, server, qid, key)
        try:
            exchange.send(packet)
        except OSError as e:
            exchange.close()
            return defer.fail(UpstreamError(f"cannot send: {e}"))
        d = exchange.answer.addTimeout(self.timeout, self.reactor)
        return d.addBoth(_passing(exchange.close))

    def _tcp(self, server: Server, key: Key, opt: RR | None, cd: bool
             ) -> defer.Deferred[DNSRecord]:
        qid, packet = _query_packet(key, opt, cd)
        exchange = _TcpExchange(packet, qid, key)
        kind = TCP6ClientEndpoint if ":" in server[0] else TCP4ClientEndpoint
        endpoint = kind(self.reactor, server[0], server[1], timeout=self.timeout)
        connecting = endpoint.connect(_OneShot(exchange))
        connecting.addErrback(exchange.fail)
        d = exchange.answer.addTimeout(self.timeout, self.reactor)
        return d.addBoth(_passing(lambda: (connecting.cancel(), exchange.close())))


def _query_packet(key: Key, opt: RR | None, cd: bool) -> tuple[int, bytes]:
    qid = secrets.randbits(16)
    header = DNSHeader(id=qid, bitmap=0, rd=1, cd=int(cd))
    question = DNSQuestion(DNSLabel(list(key[0])), key[1], key[2])
    return qid, DNSRecord(header, [question], ar=[opt] if opt is not None else []).pack()


def _matching(data: bytes, qid: int, key: Key) -> DNSRecord | None:
    """``data`` decoded if it answers our query (ID and question), else None."""
    try:
        record = DNSRecord.parse(data)
    except WIRE_ERRORS as e:
        log.warn("undecodable upstream DNS answer: {why}", why=str(e))
        return None
    h = record.header
    if not h.qr or h.id != qid or len(record.questions) != 1 or question_key(record) != key:
        return None
    return record


def _ext_rcode(record: DNSRecord) -> int:
    opt = next((rr for rr in record.ar if rr.rtype == QTYPE.OPT), None)
    return opt.edns_rcode if opt is not None else 0


def _addresses(results: list[tuple[bool, Any]], host: str) -> list[str]:
    found = [str(rr.rdata) for ok, record in results if ok for rr in record.rr
             if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
    if not found:
        raise error.DNSLookupError(f"no address for {host}")
    return list(dict.fromkeys(found))


def _passing(action):  # type: ignore[no-untyped-def]
    """A callback that runs ``action()`` and passes the result (or failure) on."""
    def run(result):  # type: ignore[no-untyped-def]
        action()
        return result
    return run


@implementer(IReadDescriptor)
class _UdpExchange:
    """One query on a socket of its own, until the answer from that server comes.

    A bare socket under ``reactor.addReader`` rather than ``listenUDP``: a Twisted UDP port
    logs two lines as it opens and closes, which would be two per forwarded query."""

    MAX_READS = 64  # datagrams read per wake-up, so junk cannot hold the reactor

    def __init__(self, reactor: Any, server: Server, qid: int, key: Key) -> None:
        self.reactor, self.server, self.qid, self.key = reactor, server, qid, key
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        self.answer: defer.Deferred[DNSRecord] = defer.Deferred()
        self.reading = False

    def send(self, packet: bytes) -> None:
        """Send from a fresh ephemeral port (the kernel picks it at random)."""
        self.socket.sendto(packet, self.server)
        self.reactor.addReader(self)
        self.reading = True

    def close(self) -> None:
        if self.reading:
            self.reactor.removeReader(self)
            self.reading = False
        self.socket.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:  # noqa: N802
        return "DNS upstream query"

    def doRead(self) -> None:  # noqa: N802
        for _ in range(self.MAX_READS):
            try:
                data, addr = self.socket.recvfrom(MAX_DATAGRAM)
            except OSError:  # EAGAIN: all read; anything else: the timeout will tell
                return
            if (addr[0], addr[1]) != self.server or self.answer.called:
                continue
            record = _matching(data, self.qid, self.key)
            if record is not None:
                self.answer.callback(record)
                return

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.reading = False
        if not self.answer.called:
            self.answer.errback(UpstreamError("socket lost"))


class _TcpExchange(Int16StringReceiver):
    """One query over one TCP connection (RFC 7766 framing), for truncated answers."""

    def __init__(self, packet: bytes, qid: int, key: Key) -> None:
        self.packet, self.qid, self.key = packet, qid, key
        self.answer: defer.Deferred[DNSRecord] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.sendString(self.packet)

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        record = _matching(data, self.qid, self.key)
        if record is not None and not self.answer.called:
            self.answer.callback(record)
            self.close()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.fail(UpstreamError("TCP connection closed before the answer"))

    def fail(self, reason: Any) -> None:
        if not self.answer.called:
            self.answer.errback(reason)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class _OneShot(protocol.ClientFactory):
    """``connectProtocol`` without its two log lines per connection."""

    noisy = False

    def __init__(self, exchange: _TcpExchange) -> None:
        self.exchange = exchange

    def buildProtocol(self, addr: Any) -> _TcpExchange:  # noqa: N802
        return self.exchange
