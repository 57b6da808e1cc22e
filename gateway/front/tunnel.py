"""Byte-for-byte tunnels (the explicit proxy's CONNECT to a host we do not serve, and the
HTTPS port's passthrough for clients that reject our CA): the client side's common part
and the far side."""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure


class TunnelClient(TypingProtocol):
    """The client side of a tunnel, as the far side sees it."""

    transport: Any

    def upstream_lost(self) -> None: ...


class UpstreamEnd(Protocol):
    """The tunnel's far side: bytes to the client as they come, counted."""

    def __init__(self, client: TunnelClient) -> None:
        self.client = client
        self.received = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += len(data)
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self.client.upstream_lost()


class UpstreamFactory(Factory):
    noisy = False

    def __init__(self, client: TunnelClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> UpstreamEnd:  # noqa: N802
        return UpstreamEnd(self.client)


def close_gently(transport: Any) -> None:
    """Close after the bytes already written are sent.  The peer's producer goes first:
    a paused producer left registered would keep the connection open."""
    transport.unregisterProducer()
    transport.loseConnection()


class ClientSide(Protocol):
    """A client connection that may become a tunnel: its state, what it sent while the
    tunnel was being opened, the far side once connected, one timer.  Subclasses read
    the start of the connection (``_received``, until it is a tunnel) and say where the
    tunnel goes (``target``); ``log`` is theirs, ``prefix`` starts their lines."""

    log: Logger
    prefix = ""

    def __init__(self, state: str) -> None:
        self.state = state  # the subclass's first state, then "connecting" -> "tunnel"
        self.client = "?"
        self.buffer = b""
        self.upstream: UpstreamEnd | None = None
        self._timer: Any = None
        self._connecting: defer.Deferred | None = None
        self._sent = 0

    target: str | None  # where the tunnel goes, for the log

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            if self.state == "tunnel":
                self._sent += len(data)
                self.upstream.transport.write(data)  # type: ignore[union-attr]
            else:
                self._received(data)
        except Exception:  # a bug: this connection ends, the process carries on
            self.log.failure("{prefix}: error on a connection from {client}",
                             prefix=self.prefix, client=self.client)
            self.state = "closed"
            self.transport.abortConnection()

    def _received(self, data: bytes) -> None:
        raise NotImplementedError

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self._cancel_timer()
        state, self.state = self.state, "closed"
        if self._connecting is not None:
            self._connecting.cancel()
        if state == "tunnel" and self.upstream is not None:
            close_gently(self.upstream.transport)
            self._tunnel_closed(self.upstream.received)
            self.log.info("{prefix}: {client} tunnel to {target} closed: {up}B up, {down}B "
                          "down", prefix=self.prefix, client=self.client,
                          target=self.target, up=self._sent, down=self.upstream.received)

    def _tunnel_closed(self, received: int) -> None:
        """A tunnel ended, ``received`` bytes having come from the far side."""

    def _join(self, upstream: UpstreamEnd) -> None:
        """The tunnel is open: each side stops reading while the other cannot take more
        (portforward's pattern), and what the client sent meanwhile goes first."""
        self.state, self.upstream = "tunnel", upstream
        self.transport.registerProducer(upstream.transport, True)
        upstream.transport.registerProducer(self.transport, True)
        pending, self.buffer = self.buffer, b""
        if pending:
            self._sent += len(pending)
            upstream.transport.write(pending)
        self.transport.resumeProducing()

    def upstream_lost(self) -> None:
        if self.state == "tunnel":
            close_gently(self.transport)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
