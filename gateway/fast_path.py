"""The fast path: a small, fresh, unconditional hit answered straight from the HTTP channel.

twisted.web spends ~190 µs building a ``Request`` before our code runs; a raw protocol
answers in a fraction of that.  Most of a build's requests are exactly this case (apt
indexes, packuments, poms, checksums), so ``GatewayChannel`` offers each complete request
to ``Gateway.fast_hit`` first and falls back to twisted.web for everything else: any
doubt here (an unusual head, a body, pipelining, Range, conditionals, TLS) means "not
fast", never "wrong".
"""

from __future__ import annotations

from twisted.web import http

from gateway.streaming import plain_tcp

# The head of a request we parse ourselves; longer ones go to twisted.web.
MAX_HEAD = 8192
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
    """HTTP/1.1 channel that offers each request to the fast path before twisted.web."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._at_request_boundary():
            request = parse_simple_request(data)
            if request is not None:
                peer = self.transport.getPeer()
                response = self.site.gateway.fast_hit(*request, getattr(peer, "host", "?"))
                if response is not None:
                    self.resetTimeout()
                    self.transport.write(response)
                    return
        super().dataReceived(data)

    def _at_request_boundary(self) -> bool:
        """Idle between requests on plain TCP, with nothing buffered or queued."""
        return (not self.requests and not self._handlingRequest and self.persistent
                and not self._buffer and self.line_mode
                and bool(self._HTTPChannel__first_line)  # type: ignore[attr-defined]
                and not self._waitingForTransport and plain_tcp(self.transport))
