"""The DNS listeners: UDP, and TCP with the 2-byte length framing (RFC 7766: several
queries per connection, answered as they complete, closed when idle).

Both hand each message to ``Responder.answer`` and write what it returns; nothing a client
sends may raise out of them.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from dns.responder import Responder

log = Logger()

# A TCP client silent this long is disconnected (RFC 7766 suggests seconds, not minutes:
# idle connections are cheap for the client and a resource held by us).
TCP_IDLE_TIMEOUT = 10.0
BIND_ATTEMPTS = 10  # port 0: tries to find an ephemeral port free for both UDP and TCP


class DnsDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, responder: Responder) -> None:
        self.responder = responder

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        try:
            reply = self.responder.answer(data, addr[0], udp=True)
            # Not isinstance(reply, Deferred): an ABCMeta check, 3 % of a cached answer.
            if reply is None or type(reply) is bytes:
                self._send(reply, addr)
            else:
                reply.addCallback(self._send, addr).addErrback(self._failed, addr)
        except Exception:
            self._failed(Failure(), addr)

    def _send(self, reply: bytes | None, addr: Any) -> None:
        if reply is None or self.transport is None:
            return
        try:
            # Straight to the socket: ``Port.write`` re-validates the address (three
            # parses of an address the kernel just gave us), a third of the cost of a
            # memo hit.  Fakes in tests have no socket and take the ordinary path.
            sock = getattr(self.transport, "socket", None)
            if sock is not None:
                sock.sendto(reply, addr)
            else:
                self.transport.write(reply, addr)
        except (OSError, error.MessageLengthError) as e:
            log.warn("cannot answer {client}: {why}", client=addr[0], why=str(e))

    def _failed(self, failure: Failure, addr: Any) -> None:
        """Last resort for a bug: logged, counted, that query unanswered."""
        self.responder.stats.errors += 1
        log.failure("DNS query from {client}", failure, client=addr[0])


class DnsStreamProtocol(Int16StringReceiver, TimeoutMixin):
    def __init__(self, responder: Responder, idle_timeout: float) -> None:
        self.responder, self.idle_timeout = responder, idle_timeout
        self.client = ""

    def connectionMade(self) -> None:  # noqa: N802
        self.client = self.transport.getPeer().host
        self.setTimeout(self.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.setTimeout(None)

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        self.resetTimeout()
        try:
            reply = self.responder.answer(data, self.client, udp=False)
            if isinstance(reply, defer.Deferred):
                reply.addCallback(self._send).addErrback(self._failed)
            else:
                self._send(reply)
        except Exception:
            self._failed(Failure())

    def _send(self, reply: bytes | None) -> None:
        if reply is not None:
            self.sendString(reply)  # Twisted drops writes to a connection already gone

    def _failed(self, failure: Failure) -> None:
        """Last resort for a bug: logged, counted, only this connection aborted."""
        self.responder.stats.errors += 1
        log.failure("DNS query over TCP from {client}", failure, client=self.client)
        self.transport.abortConnection()


class DnsStreamFactory(ServerFactory):
    noisy = False

    def __init__(self, responder: Responder, idle_timeout: float = TCP_IDLE_TIMEOUT) -> None:
        self.responder, self.idle_timeout = responder, idle_timeout

    def buildProtocol(self, addr: Any) -> DnsStreamProtocol:  # noqa: N802
        protocol = DnsStreamProtocol(self.responder, self.idle_timeout)
        protocol.factory = self
        return protocol


class DnsListener(service.Service):
    """UDP and TCP on one address and one port number.

    With port 0 (tests) the kernel picks the UDP port and TCP binds the same number, so a
    client's fall-back to TCP after a truncated answer reaches us; ``port`` is the number."""

    def __init__(self, reactor: Any, responder: Responder, address: str, port: int,
                 idle_timeout: float = TCP_IDLE_TIMEOUT) -> None:
        self.reactor, self.responder, self.address = reactor, responder, address
        self.port, self.idle_timeout = port, idle_timeout
        self._ports: list[Any] = []

    def startService(self) -> None:  # noqa: N802
        super().startService()
        for attempt in range(BIND_ATTEMPTS if self.port == 0 else 1):
            udp = self.reactor.listenUDP(self.port, DnsDatagramProtocol(self.responder),
                                         interface=self.address)
            number = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(number, DnsStreamFactory(
                    self.responder, self.idle_timeout), interface=self.address)
            except error.CannotListenError:
                udp.stopListening()
                if self.port != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self._ports, self.port = [udp, tcp], number
            log.info("DNS on {address} port {port} (UDP and TCP)", address=self.address,
                     port=number)
            return

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802
        super().stopService()
        stopping = [defer.maybeDeferred(p.stopListening) for p in self._ports]
        self._ports = []
        return defer.DeferredList(stopping)
