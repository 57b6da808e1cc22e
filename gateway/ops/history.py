"""The last hour of the gateway's figures, for the status page's plots.

Every ``SAMPLE_SECONDS`` the cumulative counters (requests by label, bytes from cache and
from upstream, upstream errors) are read; the difference from the previous reading,
divided by the seconds between them, is one point of each series.  The points live in
fixed-size rings (``SAMPLES`` of them: an hour), so memory never grows with uptime.

The alternative rejected: keeping per-request timestamps and binning at render time costs
memory per request; Prometheus keeps the long history, this is a glance at the last hour.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from gateway.cache.stats import FROM_CACHE

SAMPLE_SECONDS = 10.0
SAMPLES = 360  # an hour of 10-second points
# The cache labels plotted, in drawing order; PASSTHROUGH (tunnels) counts as PASS.
LABELS = ("HIT", "REVALIDATED", "STALE", "MISS", "PASS", "ERROR")


def reading(requests: dict[str, int], bytes_from_cache: int, bytes_from_upstream: int,
            upstream_errors: int) -> dict[str, float]:
    """The cumulative figures one sample reads (``Stats.total`` and the engine's errors)."""
    out = {label: float(requests.get(label, 0)) for label in LABELS}
    out["PASS"] += requests.get("PASSTHROUGH", 0)
    out["hits"] = float(sum(requests.get(label, 0) for label in FROM_CACHE))
    out["requests"] = float(sum(requests.values()))
    out["bytes_cache"] = float(bytes_from_cache)
    out["bytes_upstream"] = float(bytes_from_upstream)
    out["upstream_errors"] = float(upstream_errors)
    return out


class History:
    """Rings of per-second rates (and the interval's hit ratio), one point per sample."""

    def __init__(self, clock: Callable[[], float], samples: int = SAMPLES,
                 interval: float = SAMPLE_SECONDS) -> None:
        self.clock, self.interval = clock, interval
        self.times: deque[float] = deque(maxlen=samples)
        self.points: deque[dict[str, float | None]] = deque(maxlen=samples)
        self._last: tuple[float, dict[str, float]] | None = None

    def sample(self, figures: dict[str, float]) -> None:
        """Add the point between the previous reading and ``figures`` (the first reading
        only sets the base).  A counter that went down (a restart) starts a new base."""
        now = self.clock()
        last, self._last = self._last, (now, figures)
        if last is None or now <= last[0]:
            return
        seconds = now - last[0]
        delta = {k: v - last[1].get(k, 0.0) for k, v in figures.items()}
        if any(v < 0 for v in delta.values()):
            return
        point: dict[str, float | None] = {k: v / seconds for k, v in delta.items()}
        point["hit_ratio"] = delta["hits"] / delta["requests"] if delta["requests"] else None
        self.times.append(now)
        self.points.append(point)

    def series(self, name: str) -> list[tuple[float, float | None]]:
        """(time, value) of one series, oldest first."""
        return [(t, p.get(name)) for t, p in zip(self.times, self.points)]
