"""One query in, one reply out: access control, redirects, the answer cache, forwarding.

The UDP and TCP protocols are thin wrappers around ``Responder.answer``.  Its hot path is a
memo of packed replies keyed on the query's bytes after the ID: a repeated query for a
redirected name, or for a cached one within the same second of its TTL, is answered by
splicing the new ID onto stored bytes — no parse, no pack.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from dnslib import DNSRecord
from twisted.logger import Logger
from twisted.python.failure import Failure

from dns.access import AccessPolicy
from dns.answers import (BADVERS, FORMERR, REFUSED, SERVFAIL, WIRE_ERRORS, Dropped, Key,
                         QueryError, RedirectTarget, client_opt, client_reply, error_reply,
                         pack_reply, parse_query, question_key, rcode_reply, redirect_reply,
                         udp_limit)
from dns.cache import AnswerCache
from dns.forwarder import Forwarder, UpstreamError
from dns.rules import RedirectRules
from dns.stats import DnsStats

log = Logger()

MEMO_ENTRIES = 4096  # distinct queries whose packed replies are kept; then it starts over
_REDIRECTED, _CACHED = "redirected", "cache_hits"  # memo kinds, named as the counters


class ReplyMemo:
    """Packed replies minus their ID, each valid until a given time."""

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self._replies: dict[tuple[bool, bytes], tuple[str, bytes, float]] = {}

    def get(self, key: tuple[bool, bytes], now: float) -> tuple[str, bytes] | None:
        found = self._replies.get(key)
        if found is None or found[2] <= now:
            return None
        return found[0], found[1]

    def put(self, key: tuple[bool, bytes], kind: str, reply: bytes, valid_until: float) -> None:
        if len(self._replies) >= self.max_entries:
            self._replies.clear()  # cheaper than LRU bookkeeping on the hot path
        self._replies[key] = (kind, reply[2:], valid_until)


class Responder:
    def __init__(self, clock: Callable[[], float], rules: RedirectRules,
                 target: RedirectTarget, access: AccessPolicy, cache: AnswerCache,
                 forwarder: Forwarder, stats: DnsStats | None = None) -> None:
        self.clock, self.rules, self.target, self.access = clock, rules, target, access
        self.cache, self.forwarder = cache, forwarder
        self.stats = stats if stats is not None else DnsStats()
        self.memo = ReplyMemo()
        self._quiet_until, self._unlogged = 0.0, 0

    def answer(self, data: bytes, source: str, udp: bool) -> Any:
        """The reply to ``data`` from ``source``: bytes, a Deferred of them, or None (drop).
        ``udp`` replies are truncated to the client's payload size."""
        self.stats.queries += 1
        if not self.access.allows(source):
            self.stats.refused += 1
            return self._refused(data)
        memo_key = (udp, data[2:])
        found = self.memo.get(memo_key, self.clock())
        if found is not None:
            setattr(self.stats, found[0], getattr(self.stats, found[0]) + 1)
            return data[:2] + found[1]
        try:
            return self._lookup(parse_query(data), udp, memo_key)
        except Dropped as e:
            return self._malformed(data, None, str(e), source)
        except QueryError as e:
            return self._malformed(data, e, str(e), source)
        except WIRE_ERRORS as e:  # a name we decoded but cannot encode back
            return self._malformed(data, QueryError(FORMERR, str(e)), str(e), source)

    def _lookup(self, query: DNSRecord, udp: bool, memo_key: tuple[bool, bytes]) -> Any:
        limit = udp_limit(query) if udp else None
        key = question_key(query)
        if self.rules.matches(key[0]):
            self.stats.redirected += 1
            packed = pack_reply(redirect_reply(query, self.target), limit)
            self.memo.put(memo_key, _REDIRECTED, packed, math.inf)
            return packed
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            packed = pack_reply(client_reply(query, hit.record, cached=True), limit)
            self.memo.put(memo_key, _CACHED, packed, hit.valid_until)
            return packed
        self.stats.forwarded += 1
        d = self.forwarder.query(key, client_opt(query), bool(query.header.cd))
        d.addBoth(self._timed, self.clock())
        d.addCallback(self._forwarded, query, key, limit)
        return d.addErrback(self._servfail, query, limit)

    def _timed(self, result: Any, started: float) -> Any:
        """Note how long the forwarders took (answered or failed).  Memo, cache and
        redirect answers are not timed: they are made within one call, without I/O."""
        self.stats.forward_seconds.observe(self.clock() - started)
        return result

    def _forwarded(self, record: DNSRecord, query: DNSRecord, key: Key, limit: int | None
                   ) -> bytes:
        """A fresh upstream answer, as the cache now holds it when it could keep it: a
        first answer then shows the same (capped, RFC 2308) TTLs as the ones after it."""
        hit = self.cache.get(key)
        return pack_reply(client_reply(query, hit.record if hit else record, False), limit)

    def _servfail(self, failure: Failure, query: DNSRecord, limit: int | None) -> bytes | None:
        self.stats.errors += 1
        if failure.check(*WIRE_ERRORS):  # a name we decoded but cannot encode again
            self._warn_bad_query("?", str(failure.value))
        elif not failure.check(UpstreamError):  # the forwarder logged each server's failure
            log.failure("forwarding {name}", failure, name=str(query.q.qname))
        try:
            return pack_reply(rcode_reply(query, SERVFAIL), limit)
        except WIRE_ERRORS:
            return None

    def _refused(self, data: bytes) -> bytes | None:
        try:
            return pack_reply(rcode_reply(parse_query(data), REFUSED), None)
        except Dropped:
            return None
        except (QueryError, *WIRE_ERRORS):
            return error_reply(data, REFUSED)

    def _malformed(self, data: bytes, e: QueryError | None, reason: str, source: str
                   ) -> bytes | None:
        """FORMERR (or NOTIMP, BADVERS) when there is a header to answer, else nothing."""
        self.stats.errors += 1
        self._warn_bad_query(source, reason)
        if e is None:
            return None
        if e.rcode == BADVERS and e.query is not None:
            return pack_reply(rcode_reply(e.query, BADVERS), None)
        return error_reply(data, e.rcode)

    def _warn_bad_query(self, source: str, reason: str) -> None:
        """At most one line a second: a flood of garbage must not flood the log too."""
        now = self.clock()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        log.warn("bad DNS query from {client}: {reason} ({unlogged} more not logged)",
                 client=source, reason=reason, unlogged=self._unlogged)
        self._quiet_until, self._unlogged = now + 1, 0
