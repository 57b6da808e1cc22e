"""The far side of a byte-for-byte tunnel (the explicit proxy's CONNECT to a host we do not
serve, and the HTTPS port's passthrough for clients that reject our CA)."""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet.protocol import Factory, Protocol
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
