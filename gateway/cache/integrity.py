"""Integrity on fill: the digests a body must match, learnt from what the gateway itself
stored, and a record of the bodies refused.

Three sources of expectations, all checked by one mechanism (``Download``: every digest
is computed as the bytes arrive, the last byte is held back until they match):

- the URL itself (PyPI's blake2b-256; ``Ecosystem.expected_digest``);
- the store's ``Expected`` table: filled by ecosystems reading the indexes the gateway
  stored (``Ecosystem.learns_from`` / ``digests_in``, in a thread, since a ``Packages``
  file is tens of MB) and by ``cachegate warm`` from lockfiles;
- the sha256 an immutable URL had when first stored (``Seen``): new bytes for such a URL
  are **drift**, refused unless ``cache.on_drift = "accept"``.

A refused body is handled as a truncated one (the client's transfer aborts, nothing is
stored); it is logged, counted, and kept in ``events`` for ``/api/integrity`` and doctor.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Iterable

from twisted.internet import defer, threads
from twisted.logger import Logger

from gateway.cache.download import Download, VerificationError
from gateway.cache.rules import Digest, Ecosystem, Policy, Rule, Upstream
from gateway.cache.store import Meta, Store

log = Logger()

FIRST_SEEN = "first-seen"  # the source of the digest an immutable URL had at first
# An index is read whole into memory (in a thread): Debian's largest Packages is ~60 MB.
MAX_INDEX = 512 * 2**20
EVENTS_KEPT = 200
ON_DRIFT = ("refuse", "accept")


@dataclass(frozen=True)
class Event:
    kind: str  # "mismatch" or "drift"
    url: str
    reason: str
    when: float
    refused: bool  # False: drift accepted (on_drift = "accept")

    def as_dict(self) -> dict:
        return asdict(self)


def path_only(path: str) -> str:
    return path.partition("?")[0]


class Integrity:
    """Expectations for fills, learning from stored indexes, and refused bodies."""

    def __init__(self, reactor, store: Store, on_drift: str = "refuse") -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.store = store
        self.on_drift = on_drift
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.counts: Counter = Counter()  # mismatch, drift, drift_accepted, verified, unverified
        self.learning: dict[str, set[defer.Deferred]] = {}  # by upstream entry

    # -- before a fill -----------------------------------------------------------------

    def settled(self, upstream: str) -> defer.Deferred:
        """Fires when the indexes of ``upstream`` being read now are recorded (a client
        asks for a tarball right after its packument: the check must not depend on a
        race).  Other entries' fills never wait for them."""
        pending = self.learning.get(upstream)
        if not pending:
            return defer.succeed(None)
        return defer.DeferredList(list(pending), consumeErrors=True)

    def expectations(self, upstream: Upstream, rule: Rule, path: str, key: str,
                     encoded: bool = False) -> list[Digest]:
        """Every digest a 200 body for ``path`` (stored under ``key``) must match; a
        content-encoded body is checked only against what its URL says."""
        ecosystem = upstream.ecosystem
        out = []
        own = ecosystem.expected_digest(rule, path)
        if own is not None:
            out.append(own)
        if encoded:
            return out
        row = self.store.expected(upstream.name, path_only(path))
        if row is not None:
            out.append(_digest(ecosystem, path, *row))
        if rule.policy is Policy.IMMUTABLE and self.on_drift == "refuse":
            seen = self.store.first_seen(key)
            if seen is not None:
                out.append(Digest("sha256", seen[0], FIRST_SEEN))
        return out

    def digest_source(self, upstream: Upstream, rule: Rule, path: str,
                      base: str) -> str | None:
        """The path of the file that names ``path``'s digest, to fetch (and learn from)
        before it, when no digest of it is known yet; None otherwise."""
        source = upstream.ecosystem.digest_source(path_only(path))
        if source is None or rule.policy is not Policy.IMMUTABLE:
            return None
        if self.store.expected(upstream.name, path_only(path)) is not None:
            return None
        return source

    def checks_digests(self, upstream: Upstream, rule: Rule, path: str) -> bool:
        """Whether a body of ``path`` is one its ecosystem publishes digests for (stored
        "unverified" when none was known)."""
        return rule.policy is Policy.IMMUTABLE and upstream.ecosystem.publishes_digests(path)

    # -- after a fill ------------------------------------------------------------------

    def annotate(self, meta: Meta, download: Download, checked: bool) -> None:
        """Mark what the stored body was verified against (or that nothing was known)."""
        verified = [v for d, v in zip(download.checks, download.verified)
                    if d.source != FIRST_SEEN]
        if verified:
            meta.extra["verified"] = verified
            self.counts["verified"] += 1
        elif checked:
            meta.extra["verified"] = "unverified"
            self.counts["unverified"] += 1

    def committed(self, rule: Rule, base: str, meta: Meta, ecosystem: str = "",
                  events=None) -> None:  # type: ignore[no-untyped-def]
        """Remember an immutable URL's (variant's) first sha256; new bytes past it are
        drift.  ``base`` is the key it was stored under."""
        if rule.policy is not Policy.IMMUTABLE:
            return
        seen = self.store.first_seen(base)
        now = self.reactor.seconds()
        if seen is None:
            self.store.set_seen(base, meta.sha256, now)
        elif seen[0] != meta.sha256:  # only reachable with on_drift = "accept"
            self._event("drift", base, f"sha256 {meta.sha256} replaces {seen[0]} first "
                                       "stored; accepted (cache.on_drift)", False, ecosystem, events)
            self.store.set_seen(base, meta.sha256, now)

    def refused(self, download: Download, base: str, ecosystem: str = "",
                events=None) -> str | None:  # type: ignore[no-untyped-def]
        """Record a body that failed a digest: "mismatch" or "drift" (None: not a digest
        failure, e.g. a cut connection)."""
        error = download.error.value if download.error is not None else None
        if not isinstance(error, VerificationError) or error.digest is None:
            return None
        kind = "drift" if error.digest.source == FIRST_SEEN else "mismatch"
        self._event(kind, base, str(error), True, ecosystem, events)
        return kind

    def drift_seen(self, url: str, reason: str, ecosystem: str, events) -> None:  # type: ignore[no-untyped-def]
        """Stored bytes that disagree with a newer promise (a lockfile): kept, reported."""
        self._event("drift", url, reason, True, ecosystem, events)

    def _event(self, kind: str, url: str, reason: str, refused: bool, ecosystem: str = "",
               events=None) -> None:  # type: ignore[no-untyped-def]
        """Count, keep and log one refused (or accepted) body; drift also goes to the
        engine's counters (``EngineEvents``: metrics), a mismatch is counted there by
        the flight as an integrity failure."""
        self.counts[kind if refused else f"{kind}_accepted"] += 1
        if kind == "drift" and events is not None:
            events.drift_event(ecosystem or "unknown")
        self.events.append(Event(kind, url, reason, self.reactor.seconds(), refused))
        log.error("{kind}: {url}: {reason}", kind=kind, url=url, reason=reason)

    def summary(self) -> dict:
        return {"counts": dict(self.counts), "on_drift": self.on_drift,
                "events": [e.as_dict() for e in self.events]}

    # -- learning from stored indexes --------------------------------------------------

    def learn(self, upstream: Upstream, path: str, fd: int, headers: list[tuple[str, str]]
              ) -> defer.Deferred | None:
        """Let the ecosystem read a just-stored body (``fd``, which this closes) for the
        digests it promises of other paths, in a thread; None when it has none to read."""
        ecosystem = upstream.ecosystem
        if not ecosystem.learns_from(path_only(path)):
            os.close(fd)
            return None
        encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), _learn,
                                      self.store, upstream.name, ecosystem, path_only(path),
                                      fd, encoding)
        pending = self.learning.setdefault(upstream.name, set())
        pending.add(d)

        def done(result):  # type: ignore[no-untyped-def]
            pending.discard(d)
            if not pending:
                self.learning.pop(upstream.name, None)
            return result
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("cannot read the index {path} of {name}", f,
                                           path=path, name=upstream.name))
        return d


def _digest(ecosystem: Ecosystem, path: str, algorithm: str, value: str,
            source: str) -> Digest:
    of_file = ecosystem.file_digest(algorithm, path_only(path))
    return Digest(algorithm, value, source, of_file)


def _learn(store: Store, name: str, ecosystem: Ecosystem, path: str, fd: int,
           encoding: str) -> int:
    """Blocking, in a thread: read, decode, ask the ecosystem, record."""
    try:
        with os.fdopen(fd, "rb") as body:
            raw = body.read(MAX_INDEX + 1)
    except OSError:
        return 0
    data = decode(raw, encoding)
    if data is None or len(raw) > MAX_INDEX:
        return 0
    rows = [(p, d.algorithm, d.hex, d.source or path)
            for p, d in ecosystem.digests_in(path, data)]
    return store.expect(name, rows) if rows else 0


def decode(raw: bytes, encoding: str) -> bytes | None:
    """The body without its transfer ``Content-Encoding`` (gzip, deflate); None if it
    cannot be decoded (br, zstd: not read)."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return raw
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(raw)
        if encoding == "deflate":
            return zlib.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return None
    return None


def rows_of(pairs: Iterable[tuple[str, Digest]]) -> list[tuple[str, str, str, str]]:
    return [(p, d.algorithm, d.hex, d.source) for p, d in pairs]
