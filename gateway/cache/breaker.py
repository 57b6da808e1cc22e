"""A circuit breaker per shared tier (a parent gateway, the S3 store).

``closed``: requests go through.  A failure opens it: for ``base`` seconds every request
is refused at once (a dict look-up, no connect), so a dead tier costs a request nothing.
Then it is ``half-open``: one request is let through as a probe; its success closes the
breaker, its failure opens it again for twice as long (up to ``limit``).  squid's
``connect-fail-limit`` and Traffic Server's parent ``retry_time`` are the same idea.
"""

from __future__ import annotations

from typing import Any, Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    def __init__(self, now: Callable[[], float], base: float = 5.0, limit: float = 300.0) -> None:
        self.now, self.base, self.limit = now, base, limit
        self.state = CLOSED
        self.back_off = base
        self.retry_at = 0.0
        self.failures = 0  # failures counted since start
        self.opened = 0  # times it opened

    def allow(self) -> bool:
        """Whether a request may try the tier now (True once per back-off: the probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.now() >= self.retry_at:
            self.state = HALF_OPEN
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.back_off = CLOSED, self.base

    def failed(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN:
            self.back_off = min(self.back_off * 2, self.limit)
        elif self.state == OPEN:  # a request let through before it opened
            return
        self.state = OPEN
        self.opened += 1
        self.retry_at = self.now() + self.back_off

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "opened": self.opened,
                "retry_in": max(0.0, self.retry_at - self.now()) if self.state == OPEN else 0.0}
