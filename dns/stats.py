"""The resolver's counters, read by the admin API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DnsStats:
    queries: int = 0  # every message received, well-formed or not
    redirected: int = 0  # answered with our own address (or NODATA) for a catalogue name
    forwarded: int = 0  # sent upstream (a cache miss)
    cache_hits: int = 0  # answered from the answer cache
    refused: int = 0  # from a source outside the allowed networks
    errors: int = 0  # malformed or dropped queries, and SERVFAIL answers
