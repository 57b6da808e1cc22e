"""Recent requests and the most requested objects, for the status page and `cachegate stats`.

``Activity`` stands in front of the process's ``AccessLog`` (``make_service`` hands it to
the handler in its place): each access-log line is noted here, then written as before.
So the request path pays one small call per response and no second log event, and
``Stats`` stays the one set of counters.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from gateway.front.accesslog import AccessLog

RECENT = 50  # lines on the status page
# Distinct objects counted for "top objects"; past it the less requested half is forgotten,
# so memory stays bounded however many objects pass (an approximation that keeps the heads).
TOP_TRACKED = 4096


class Activity:
    """An ``AccessLog`` look-alike that remembers what it writes through ``inner``."""

    def __init__(self, inner: AccessLog, clock: Callable[[], float], recent: int = RECENT,
                 tracked: int = TOP_TRACKED) -> None:
        self.inner, self.clock = inner, clock
        self.recent: deque[tuple] = deque(maxlen=recent)
        self.tracked = tracked
        self.objects: dict[str, list[int]] = {}  # url -> [requests, bytes sent]

    def write(self, client: str, method: str, url: str, status: int, label: str, sent: int,
              ms: int, complete: bool = True) -> None:
        self.recent.append((self.clock(), client, method, url, status, label, sent, ms,
                            complete))
        counts = self.objects.get(url)
        if counts is None:
            if len(self.objects) >= self.tracked:
                self._forget_half()
            counts = self.objects[url] = [0, 0]
        counts[0] += 1
        counts[1] += sent
        self.inner.write(client, method, url, status, label, sent, ms, complete)

    def _forget_half(self) -> None:
        ranked = sorted(self.objects.items(), key=lambda item: item[1][0], reverse=True)
        self.objects = dict(ranked[: self.tracked // 2])

    def top(self, count: int = 10) -> list[dict[str, Any]]:
        """The most requested objects (by requests, then bytes), most first."""
        ranked = sorted(self.objects.items(), key=lambda item: (item[1][0], item[1][1]),
                        reverse=True)
        return [{"url": url, "requests": n, "bytes": sent} for url, (n, sent) in ranked[:count]]

    def recent_lines(self) -> list[dict[str, Any]]:
        """The latest responses, newest first."""
        names = ("time", "client", "method", "url", "status", "label", "sent", "ms", "complete")
        return [dict(zip(names, line)) for line in reversed(self.recent)]
