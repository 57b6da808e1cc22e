"""The parent's side of the cluster tier: ``[cluster] listen`` serves children.

A child sends its misses here in absolute form (``GET http://pypi.org/... HTTP/1.1``, the
real Host) with the shared token in ``Proxy-Authorization: Bearer …``.  They are served
like any client's request, from this gateway's own cache and single flight, so concurrent
misses on many hosts make one upstream request.  Without the token: 403.  Only hosts of
the catalogue are served (the ordinary handler refuses any other with 403): the port is
never an open proxy.  With an S3 tier, each answer names the store this gateway writes
behind to (``X-Cachegate-S3``): a child writing to the same store leaves the upload here.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from twisted.web import server

from gateway.cache.headers import S3_HEADER
from gateway.cache.tiers import INSTANCE_HEADER, TOKEN_HEADER, bearer
from gateway.front.fast_path import GatewayChannel, parse_simple_request
from gateway.front.handler import Gateway, GatewayResource, GatewaySite

# The absolute form a child sends, in its plainest shape; any other goes to twisted.web.
_ABSOLUTE = re.compile(r"http://([a-z0-9.-]+)(/[\x21-\x7e]*)")


def read_token(path: str) -> str:
    """The shared secret (one line; surrounding white space ignored)."""
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


class ClusterChannel(GatewayChannel):
    """Children's connections: a fresh small hit is answered by the fast path once the
    request shows the token; anything else, a missing or wrong token included, goes to
    ``ClusterResource``."""

    def fast_response(self, data: bytes) -> bytes | None:
        return self.site.resource.fast_hit(data, self._peer_host())


class ClusterResource(GatewayResource):
    """The gateway, for children that show the cluster token."""

    def __init__(self, gateway: Gateway, token: str, instance: str = "", s3: str = "") -> None:
        super().__init__(gateway)
        self.instance, self.s3 = instance, s3
        self.expected = bearer(token).encode()
        self.refused = 0
        self.s3_line = f"{S3_HEADER}: {s3}\r\n".encode() if s3 else b""

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
        if self.s3:
            request.setHeader(S3_HEADER, self.s3)
        return super().render(request)

    def fast_hit(self, data: bytes, client: str) -> bytes | None:
        """The fast path's answer (``Gateway.fast_hit``) to a child's request that shows
        the token and is not this gateway's own; None: ``render`` decides."""
        request = parse_simple_request(data)
        if request is None:
            return None
        method, target, headers = request
        presented = headers.pop(TOKEN_HEADER, "").encode("latin-1")
        asker = headers.pop(INSTANCE_HEADER, "")
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None or not hmac.compare_digest(presented, self.expected) or \
                (self.instance and asker == self.instance):
            return None
        headers["host"] = absolute.group(1)
        response = self.gateway.fast_hit(method, absolute.group(2), headers, client)
        if response is None or not self.s3_line:
            return response
        status, _, rest = response.partition(b"\r\n")
        return b"%s\r\n%s%s" % (status, self.s3_line, rest)


class ClusterSite(GatewaySite):
    """The cluster port; like the gateway's, the handler writes the access-log line (the
    client is the child's address)."""

    protocol = ClusterChannel
    noisy = False
