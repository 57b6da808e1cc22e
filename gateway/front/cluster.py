"""The parent's side of the cluster tier: ``[cluster] listen`` serves children.

A child sends its misses here in absolute form (``GET http://pypi.org/... HTTP/1.1``, the
real Host) with the shared token in ``Proxy-Authorization: Bearer …``.  They are served
like any client's request, from this gateway's own cache and single flight, so concurrent
misses on many hosts make one upstream request.  Without the token: 403.  Only hosts of
the catalogue are served (the ordinary handler refuses any other with 403): the port is
never an open proxy.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from twisted.web import http, server

from gateway.cache.tiers import INSTANCE_HEADER, TOKEN_HEADER, bearer
from gateway.front.handler import Gateway, GatewayResource


def read_token(path: str) -> str:
    """The shared secret (one line; surrounding white space ignored)."""
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


class ClusterChannel(http.HTTPChannel):
    """Children's connections: no fast path (every request shows its token first)."""

    cluster = True


class ClusterResource(GatewayResource):
    """The gateway, for children that show the cluster token."""

    def __init__(self, gateway: Gateway, token: str, instance: str = "") -> None:
        super().__init__(gateway)
        self.instance = instance
        self.expected = bearer(token).encode()
        self.refused = 0

    def render(self, request: server.Request) -> int:
        request.defaultContentType = None
        presented = (request.requestHeaders.getRawHeaders(TOKEN_HEADER.encode()) or [b""])[0]
        if not hmac.compare_digest(presented, self.expected):
            self.refused += 1
            self.gateway.warn_client("{client}: cluster request without the token: 403",
                                     client=getattr(request.getClientAddress(), "host", "?"))
            self.gateway._error(request, 403, "a cluster port needs the cluster token")
            return server.NOT_DONE_YET
        request.requestHeaders.removeHeader(TOKEN_HEADER.encode())
        asker = request.requestHeaders.getRawHeaders(INSTANCE_HEADER.encode()) or [b""]
        request.requestHeaders.removeHeader(INSTANCE_HEADER.encode())
        if self.instance and asker[0].decode("latin-1") == self.instance:
            self.gateway._error(request, 508, "this gateway is its own parent: skipped")
            return server.NOT_DONE_YET
        if not request.uri.startswith((b"http://", b"HTTP://")):
            self.gateway._error(request, 400, "a cluster request is absolute-form")
            return server.NOT_DONE_YET
        return super().render(request)


class ClusterSite(server.Site):
    protocol = ClusterChannel
    noisy = False

    def log(self, request: server.Request) -> None:
        """The handler writes the access-log line (the client is the child's address)."""
