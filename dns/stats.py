"""The resolver's counters, read by the admin API."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache.stats import Histogram

# Upper bounds (seconds) of the forwarded-query latency buckets.
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class DnsStats:
    queries: int = 0  # every message received, well-formed or not
    redirected: int = 0  # answered with our own address (or NODATA) for a catalogue name
    forwarded: int = 0  # sent upstream (a cache miss)
    cache_hits: int = 0  # answered from the answer cache
    refused: int = 0  # from a source outside the allowed networks
    errors: int = 0  # malformed or dropped queries, and SERVFAIL answers

    def __post_init__(self) -> None:
        # Not a field: ``asdict`` (the /api/stats document) keeps to the counters.
        self.forward_seconds = Histogram(FORWARD_BUCKETS)
