"""The fast path: a small, fresh, unconditional hit answered straight from the HTTP channel.

twisted.web spends ~190 µs building a ``Request`` before our code runs; a raw protocol
answers in a fraction of that.  Most of a build's requests are exactly this case (apt
indexes, packuments, poms, checksums), so ``GatewayChannel`` offers each complete request
to ``Gateway.fast_hit`` first and falls back to twisted.web for everything else: any
doubt here (an unusual head, a body, pipelining, Range, conditionals, TLS) means "not
fast", never "wrong".
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web import http

from gateway.cache.streaming import plain_tcp, write_now

log = Logger()

# The head of a request we parse ourselves; longer ones go to twisted.web.
MAX_HEAD = 8192
# Seconds a client has to send a whole request head once its first byte arrived.
# twisted.web's own timeout is an idle timeout, reset by every byte, so a client
# trickling one header line every few seconds (slowloris) would hold a connection
# forever; nginx's client_header_timeout is 60 s, but our clients are local builds.
HEADER_TIMEOUT = 30.0
# A plain dict: ``twisted.web.http`` is wrapped in a deprecation proxy that makes every
# attribute access slow.
_REASONS = {code: reason.decode("latin-1") for code, reason in http.RESPONSES.items()}
_NOT_SIMPLE = frozenset({"content-length", "transfer-encoding", "expect", "upgrade",
                         "range", "if-none-match", "if-modified-since", "if-range"})


def parse_simple_request(data: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, lower-case headers) when ``data`` is exactly one complete
    keep-alive ``GET``/``HEAD`` HTTP/1.1 head without a body; else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data) or end > MAX_HEAD:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD") or parts[2] != "HTTP/1.1":
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        key = name.lower()
        if not sep or not name or name != name.strip() or key in headers or key in _NOT_SIMPLE:
            return None
        headers[key] = value.strip()
    if "close" in headers.get("connection", "").lower():
        return None
    return parts[0], parts[1], headers


def response_head(status: int, pairs: list[tuple[str, str]], extra: list[tuple[str, str]]) -> bytes:
    """A status line and header block."""
    reason = _REASONS.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in pairs + extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class GatewayChannel(http.HTTPChannel):
    """HTTP/1.1 channel that offers each request to the fast path before twisted.web,
    gives each request head ``HEADER_TIMEOUT`` seconds, and refuses obs-fold."""

    _head_timer = None
    _peer: str | None = None  # the client address, once known

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._at_request_boundary():
            response = self.fast_response(data)
            if response is not None:
                self.resetTimeout()
                write_now(self.transport, response)
                return
        self._start_head_timer()
        super().dataReceived(data)

    def fast_response(self, data: bytes) -> bytes | None:
        """The whole response to the request ``data`` holds, or None: twisted.web's turn."""
        request = parse_simple_request(data)
        return None if request is None else \
            self.site.gateway.fast_hit(*request, self._peer_host())

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self._start_head_timer()  # also for a pipelined head already buffered
        if line[:1] in (b" ", b"\t") and not self._HTTPChannel__first_line:  # type: ignore[attr-defined]
            # obs-fold (RFC 9112 5.2): folding is how a header hides from one parser and
            # not another; rejecting it is allowed and what nginx does.
            self._cancel_head_timer()
            self._bad_request("obs-fold header line")
            return
        super().lineReceived(line)

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        """twisted.web's answer to a head it cannot parse (a bad request line, a bad
        header, bad framing): the same 400, with a warn line within the gateway's budget."""
        self._bad_request("malformed request head")

    def _bad_request(self, reason: str) -> None:
        self.site.gateway.warn_client("{client}: {reason}: 400", client=self._peer_host(),
                                      reason=reason)
        super()._respondToBadRequestAndDisconnect()

    def allHeadersReceived(self) -> None:  # noqa: N802
        self._cancel_head_timer()
        super().allHeadersReceived()

    def connectionLost(self, reason) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self._cancel_head_timer()
        super().connectionLost(reason)

    def _start_head_timer(self) -> None:
        if self._head_timer is None and self.line_mode:
            self._head_timer = self.callLater(HEADER_TIMEOUT, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.warn("{client}: request head not complete in {seconds} s: 408",
                 client=self._peer_host(), seconds=HEADER_TIMEOUT)
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                             b"Content-Length: 0\r\n\r\n")
        self.transport.loseConnection()

    def _peer_host(self) -> str:
        if self._peer is None:  # once per connection: getPeer() builds a new address
            self._peer = getattr(self.transport.getPeer(), "host", "?")
        return self._peer

    def _at_request_boundary(self) -> bool:
        """Idle between requests on plain TCP, with nothing buffered or queued."""
        return (not self.requests and not self._handlingRequest and self.persistent
                and not self._buffer and self.line_mode
                and bool(self._HTTPChannel__first_line)  # type: ignore[attr-defined]
                and not self._waitingForTransport and plain_tcp(self.transport))
