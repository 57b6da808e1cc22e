"""A scripted origin for the RFC 9111 tests: each response written byte for byte.

``tests/origin.py`` serves a tree through twisted.web, which cannot send what these tests
need an upstream to send: a ``103`` before the final response, the same field on several
lines, a ``Connection`` naming other fields, a ``Date`` of our choosing.  Here a test
registers ``answer(path, fn)`` where ``fn(request) -> bytes`` is the whole response; every
request head is recorded (``requests``), keep-alive and request bodies (Content-Length)
included.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from typing import Callable

from twisted.internet import protocol


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names, repeated fields joined with ", "
    head: bytes  # as received, for asserting it is well formed


Answer = Callable[[RawRequest], bytes]


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


def response(status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
             reason: str = "X", interim: bytes = b"") -> bytes:
    """A complete response: ``interim`` (1xx heads) first, Content-Length added."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers or []]
    lines.append(f"Content-Length: {len(body)}")
    return interim + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(protocol.Protocol):
    def __init__(self, origin: "RawOrigin") -> None:
        self.origin = origin
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            request = _parse(head)
            length = int(request.headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.origin.requests.append(request)
            self.transport.write(self.origin.answer_for(request))


def _parse(head: bytes) -> RawRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return RawRequest(method, target, headers, head)


class RawOrigin(protocol.Factory):
    """Listens on loopback; answers each path as told (404 otherwise)."""

    def __init__(self, reactor) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.requests: list[RawRequest] = []
        self.answers: dict[str, Answer] = {}
        self.port = None

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]  # noqa: N802
        return _Connection(self)

    def listen(self) -> "RawOrigin":
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def answer(self, path: str, fn: Answer) -> None:
        self.answers[path] = fn

    def answer_for(self, request: RawRequest) -> bytes:
        fn = self.answers.get(request.target.partition("?")[0])
        if fn is None:
            return response(404, [("Date", http_date(self.reactor.seconds()))], b"no\n")
        return fn(request)

    def count(self, path: str, method: str | None = None) -> int:
        return sum(1 for r in self.requests if r.target == path and method in (None, r.method))

    def stop(self):  # type: ignore[no-untyped-def]
        return self.port.stopListening()
