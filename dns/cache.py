"""The answer cache for forwarded names: keyed on (name, type, class), TTL-respecting,
negative answers included, least-recently-used eviction past a size bound.

Time comes from a ``clock`` callable (``reactor.seconds``), so tests move it by hand.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from dnslib import QTYPE, RR, DNSHeader, DNSRecord

from dns.answers import NOERROR, NXDOMAIN, Key

MAX_TTL = 86400  # RFC 8767's suggestion: never trust an answer for more than a day
# Negative answers (NXDOMAIN, NODATA) are kept at most this long, whatever the SOA says:
# a build that failed on a missing name should see it as soon as it is published.
NEGATIVE_TTL_CAP = 300
DEFAULT_MAX_ENTRIES = 10000


def cache_ttl(record: DNSRecord) -> int:
    """How long ``record`` may be served from the cache; 0 = not at all.

    Positive: the smallest TTL of its answer and authority records.  Negative (NXDOMAIN,
    or NOERROR with no answer): the SOA's ``min(ttl, minimum)`` (RFC 2308), capped; with no
    SOA it is not cached.  Errors and truncated answers are never cached."""
    rcode = record.header.rcode
    if record.header.tc or rcode not in (NOERROR, NXDOMAIN):
        return 0
    if rcode == NOERROR and record.rr:
        return min(MAX_TTL, *(rr.ttl for rr in record.rr + record.auth))
    soa = next((rr for rr in record.auth if rr.rtype == QTYPE.SOA), None)
    if soa is None:
        return 0
    return min(NEGATIVE_TTL_CAP, soa.ttl, soa.rdata.times[4])


@dataclass(frozen=True)
class CacheHit:
    """A cached answer with every TTL counted down to what is left of it."""

    record: DNSRecord
    valid_until: float  # the moment these TTLs drop by one second: reuse the bytes till then


@dataclass
class _Entry:
    record: DNSRecord
    ttl: int
    expires_at: float


class AnswerCache:
    def __init__(self, clock: Callable[[], float], max_entries: int = DEFAULT_MAX_ENTRIES
                 ) -> None:
        self.clock, self.max_entries = clock, max_entries
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Key, record: DNSRecord) -> bool:
        """Remember ``record`` (its OPT, per hop, dropped) if it may be cached at all."""
        ttl = cache_ttl(record)
        if ttl <= 0:
            return False
        header = DNSHeader(id=0, bitmap=record.header.bitmap)
        kept = DNSRecord(header, list(record.questions), list(record.rr), auth=list(record.auth),
                         ar=[rr for rr in record.ar if rr.rtype != QTYPE.OPT])
        self._entries[key] = _Entry(kept, ttl, self.clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def get(self, key: Key) -> CacheHit | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        remaining = entry.expires_at - self.clock()
        if remaining <= 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        left = math.ceil(remaining)  # whole seconds, as on the wire: 299.5 s left shows 300
        elapsed = entry.ttl - left
        return CacheHit(_counted_down(entry.record, elapsed, left),
                        valid_until=entry.expires_at - left + 1)


def _counted_down(record: DNSRecord, elapsed: int, left: int) -> DNSRecord:
    """A copy with each TTL lowered by ``elapsed``, none above ``left`` (the entry's own
    remaining lifetime: a record must not outlive the answer it came in)."""
    def down(rrs: list[RR]) -> list[RR]:
        return [RR(rr.rname, rr.rtype, rr.rclass, max(0, min(rr.ttl - elapsed, left)),
                   rr.rdata) for rr in rrs]
    return DNSRecord(record.header, record.questions, down(record.rr), auth=down(record.auth),
                     ar=down(record.ar))
