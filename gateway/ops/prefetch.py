"""The running gateway's side of ``cachegate warm``: ``POST /api/warm`` fetches one URL
through the gateway's own flights, store and stats, as a client miss would, and says what
happened to it.

An item may carry the digest its lockfile gives: it is recorded in the store's expected
digests first (source "lockfile"), so the fill is checked against it by the same
held-back-last-byte mechanism as an index's digest.  An item already stored with that
digest is ``stored``; stored with other bytes, it is **drift**: the stored copy is kept
and the item reported (clearing it is the escape hatch).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, threads
from twisted.logger import Logger

from gateway.cache.download import Download, VerificationError
from gateway.cache.flight import Failed, Retry, Stored, Streaming, Target
from gateway.cache.integrity import FIRST_SEEN, decode
from gateway.cache.keys import base_key, normalise_path, variant_key
from gateway.cache.rules import Digest, Policy, find_upstream

log = Logger()

READ_SIZE = 1 << 20
# A body returned inline (an index the warm client reads to resolve a lockfile) is small.
MAX_INLINE_BODY = 32 * 2**20
WARM_CLIENT = "warm"  # the client name warm fills are counted under in the stats


class WarmError(ValueError):
    """A malformed warm request (answered 400)."""


def file_digest(digest: Digest, path: str) -> str:
    """``digest``'s algorithm over the stored file (blocking: a thread)."""
    if digest.of_file is not None:
        return digest.of_file(path)
    hasher = digest.hasher() if digest.algorithm != "sha256" else hashlib.sha256()
    with open(path, "rb") as body:
        while chunk := body.read(READ_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def _digest(raw: Any, ecosystem, path: str) -> Digest | None:  # type: ignore[no-untyped-def]
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str)
                                            for k in ("algorithm", "hex")):
        raise WarmError('digest must be {"algorithm": "...", "hex": "..."}')
    of_file = ecosystem.file_digest(raw["algorithm"], path.partition("?")[0])
    digest = Digest(raw["algorithm"], raw["hex"], "lockfile", of_file)
    if of_file is None:
        try:
            digest.hasher()
        except ValueError:
            raise WarmError(f"unknown digest algorithm {raw['algorithm']!r}") from None
    return digest


class Prefetcher:
    """Warms one URL at a time on a running ``GatewayService`` (``top``)."""

    def __init__(self, top, reactor) -> None:  # type: ignore[no-untyped-def]
        self.top = top
        self.reactor = reactor

    @defer.inlineCallbacks
    def warm(self, doc: Any):  # type: ignore[no-untyped-def]
        if not isinstance(doc, dict) or not isinstance(doc.get("url"), str):
            raise WarmError('body must be {"url": "https://host/path", ...}')
        parts = urlsplit(doc["url"])
        host = (parts.hostname or "").lower()
        path = normalise_path((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        if parts.scheme not in ("http", "https") or not host or path is None:
            raise WarmError(f"not an http(s) URL cachegate could serve: {doc['url']!r}")
        result = {"url": doc["url"]}
        upstream = find_upstream(self.top.config.upstreams, host)
        if upstream is None:
            return dict(result, status="skipped", reason=f"{host} is not in the catalogue")
        rule = upstream.rule_for(path)
        if rule.policy is Policy.PASS:
            return dict(result, status="skipped", reason="never stored (pass)")
        digest = _digest(doc.get("digest"), upstream.ecosystem, path)
        store = self.top.store
        if digest is not None:
            store.expect(upstream.name, [(path.partition("?")[0], digest.algorithm,
                                          digest.hex, "lockfile")])
        headers = {str(k).lower(): str(v) for k, v in (doc.get("headers") or {}).items()}
        base = base_key(host, path)
        key = variant_key(base, store.vary(base), headers)
        entry = store.get(key)
        now = self.reactor.seconds()
        if entry is not None and (rule.policy is Policy.IMMUTABLE or
                                  entry.meta.freshness.is_fresh(now)):
            out = yield self._stored(result, entry, digest, upstream.name)
        elif self.top.config.cache.offline:
            out = dict(result, status="missing", reason="offline and not in the cache")
        else:
            target = Target(host, path, base, key, upstream, rule,
                            upstream.upstream_url(host, path), headers)
            outcome = yield self.top.gateway.flights.obtain(target, entry)
            out = yield self._outcome(dict(result, key=key), outcome, upstream.name)
        if doc.get("body") and out.get("status") in ("stored", "fetched", "verified"):
            # Looked up again: the first response may have taught the store its Vary.
            out["body"] = self._body(variant_key(base, store.vary(base), headers))
        return out

    @defer.inlineCallbacks
    def _stored(self, result: dict, entry, digest: Digest | None, name: str):  # type: ignore[no-untyped-def]
        out = dict(result, status="stored", key=entry.key, sha256=entry.meta.sha256,
                   length=entry.meta.length, verified=entry.meta.extra.get("verified"))
        self.top.stats.record(name, WARM_CLIENT, "HIT", 0)
        if digest is None:
            return out
        try:
            got = yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                  file_digest, digest, entry.path)
        except OSError as e:
            return dict(out, status="failed", reason=f"cannot read the stored body: {e}")
        if got == digest.hex:
            return out
        reason = (f"stored bytes have {digest.algorithm} {got}, the lockfile says "
                  f"{digest.hex}: the stored copy is kept (clear it to take new bytes)")
        flights = self.top.gateway.flights
        flights.integrity.drift_seen(entry.meta.url, reason, entry.meta.ecosystem,
                                     flights.events)
        return dict(out, status="drift", reason=reason)

    @defer.inlineCallbacks
    def _outcome(self, result: dict, outcome, name: str):  # type: ignore[no-untyped-def]
        if isinstance(outcome, Stored):
            entry = outcome.entry
            self.top.stats.record(name, WARM_CLIENT, outcome.label, 0)
            return dict(result, status="stored", key=entry.key, sha256=entry.meta.sha256,
                        length=entry.meta.length)
        if isinstance(outcome, Failed):
            return dict(result, status="failed", reason=f"{outcome.status} {outcome.reason}")
        if isinstance(outcome, Retry):
            return dict(result, status="failed", reason="the response varies or is private")
        assert isinstance(outcome, Streaming)
        download = yield _finished(outcome.download, self.reactor)
        self.top.stats.record(name, WARM_CLIENT, outcome.label, download.size)
        if outcome.status != 200:
            return dict(result, status="failed", reason=f"upstream answered {outcome.status}")
        if download.error is not None:
            error = download.error.value
            if isinstance(error, VerificationError) and error.digest is not None:
                kind = "drift" if error.digest.source == FIRST_SEEN else "mismatch"
                return dict(result, status=kind, reason=str(error))
            return dict(result, status="failed", reason=download.error.getErrorMessage())
        checked = [d for d in download.checks if d.source != FIRST_SEEN]
        return dict(result, status="verified" if checked else "fetched",
                    sha256=download.sha256.hexdigest(), length=download.size,
                    verified=[v for d, v in zip(download.checks, download.verified)
                              if d.source != FIRST_SEEN] or None)

    def _body(self, key: str) -> str | None:
        entry = self.top.store.get(key)
        if entry is None or entry.meta.length > MAX_INLINE_BODY:
            return None
        try:
            with open(entry.path, "rb") as f:
                data = decode(f.read(), entry.meta.header("content-encoding") or "")
        except OSError:
            return None
        return base64.b64encode(data).decode() if data is not None else None


def _finished(download: Download, reactor) -> defer.Deferred:  # type: ignore[no-untyped-def]
    """Fires with ``download`` once its body has ended and the finish callbacks before
    ours (the commit) have run."""
    if download.finished:
        return defer.succeed(download)
    d: defer.Deferred = defer.Deferred()
    download.on_finish(lambda dl: reactor.callLater(0, d.callback, dl))
    return d
