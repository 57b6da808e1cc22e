"""Bad client input is logged at ``warn``, a bounded number of lines per interval.

A client (or a fuzzer) sending thousands of malformed requests a second must not turn the
log into the bottleneck or bury the lines that matter: past ``LINES`` lines in
``SECONDS`` the rest are counted, and the next line logged says how many were not.
"""

from __future__ import annotations

from typing import Callable

# Enough to see what a misbehaving client does; a flood beyond it is one number.
LINES = 20
SECONDS = 10.0


class LogBudget:
    """At most ``lines`` log lines per ``seconds`` of ``clock`` (a ``reactor.seconds``)."""

    def __init__(self, clock: Callable[[], float], lines: int = LINES,
                 seconds: float = SECONDS) -> None:
        self.clock = clock
        self.lines = lines
        self.seconds = seconds
        self._window_start = float("-inf")
        self._used = 0
        self._suppressed = 0

    def take(self) -> int | None:
        """None: over budget, log nothing (counted).  Otherwise log the line, and say how
        many were not logged before it (the number returned)."""
        now = self.clock()
        if now - self._window_start >= self.seconds:
            self._window_start, self._used = now, 0
        if self._used >= self.lines:
            self._suppressed += 1
            return None
        self._used += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
