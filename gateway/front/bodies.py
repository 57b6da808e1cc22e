"""Sending a stored or growing body to a client: the Range answer (206, 416), HEAD,
small bodies in one write, larger ones by a producer at the client's pace.  Shared by
the package front (``handler.py``) and the registry mirror (``registry.py``)."""

from __future__ import annotations

import os
from typing import Callable

from twisted.logger import Logger
from twisted.web import http, server

from gateway.cache.download import Download
from gateway.cache.ranges import UNSATISFIABLE
from gateway.cache.streaming import FileStreamer

log = Logger()

# Bodies up to this size are read and written in one call: for small objects the
# producer machinery costs more than the copy.
SMALL_BODY = 64 * 1024

Done = Callable[[int, int, bool], None]  # (status sent, body bytes sent, complete)


def send_file(request: server.Request, method: str, fd: int, length: int | None, wanted,  # type: ignore[no-untyped-def]
              download: Download | None, done: Done, name: str) -> None:
    """Answer with ``fd`` (closed when done): the whole body, or ``wanted`` (a range from
    ``parse_range``; ``UNSATISFIABLE`` gets a 416).  ``download``: the body is still
    arriving and is followed as it grows.  ``name`` says which body in the log."""
    start, end = 0, (length - 1 if length is not None else None)
    if wanted == UNSATISFIABLE:
        os.close(fd)
        request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
        request.setHeader("Content-Range", f"bytes */{length}")
        request.setHeader("Content-Length", "0")
        request.finish()
        return done(416, 0, True)
    if wanted is not None:
        start, end = wanted
        request.setResponseCode(http.PARTIAL_CONTENT)
        request.setHeader("Content-Range", f"bytes {start}-{end}/{length}")
    if length is not None:
        request.setHeader("Content-Length", str(end - start + 1))  # type: ignore[operator]
    if method == "HEAD":
        os.close(fd)
        request.finish()
        return done(request.code, 0, True)
    if download is None and end is not None and end - start + 1 <= SMALL_BODY:
        return _send_small(request, fd, start, end, done, name)
    code = request.code
    FileStreamer(request, fd, start, end, download, lambda sent, ok: done(code, sent, ok)).start()


def _send_small(request: server.Request, fd: int, start: int, end: int, done: Done,
                name: str) -> None:
    try:
        data = os.pread(fd, end - start + 1, start)
    finally:
        os.close(fd)
    if len(data) != end - start + 1:
        log.error("stored body of {name} is short: dropped", name=name)
        request.transport.abortConnection()
        return
    request.write(data)
    request.finish()
    done(request.code, len(data), True)
