"""The access log: one line per response, written straight to its stream.

Twisted's ``textFileLogObserver`` formats each event through its own ``{}`` engine and an
``strftime`` per line, and every event crosses several publishers; at thousands of
access-log lines a second that costs more than serving the requests (64 µs a line, a
third of a small hit).  ``AccessLog`` writes its lines straight to the stream when it has
one, with a once-per-second timestamp (``Timestamps``, shared with the log observer).
"""

from __future__ import annotations

import time
from typing import IO

from twisted.logger import Logger


log = Logger()


class Timestamps:
    """``YYYY-mm-ddTHH:MM:SS+zzzz``, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def stamp(self, when: float | None = None) -> str:
        second = int(when or time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._stamp


class AccessLog:
    """One line per response: client, method, URL, status, cache label, bytes, time.

    With a ``stream`` (``cachegate serve``) lines are written to it directly; without one
    (tests, embedding) they go through Twisted's logger like any event."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._clock = Timestamps()

    def write(self, client: str, method: str, url: str, status: int, label: str, sent: int,
              ms: int, complete: bool = True) -> None:
        aborted = "" if complete else " ABORTED"
        if self.stream is None:
            log.info("{client} {method} {url} {status} {label} {sent}B {ms}ms{aborted}",
                     client=client, method=method, url=url, status=status, label=label,
                     sent=sent, ms=ms, aborted=aborted)
            return
        self.stream.write(f"{self._clock.stamp()} [access] {client} {method} {url} {status} "
                          f"{label} {sent}B {ms}ms{aborted}\n")
