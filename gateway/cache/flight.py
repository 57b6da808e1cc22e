"""Single flight: one upstream request per cache key at a time, shared by every client that
asks while it runs.

The first client of a key starts a ``Flight``; later ones join it.  When the upstream
answers, every member gets the same ``Outcome``: a ``Streaming`` download to follow, a
``Stored`` entry (revalidated by a 304, or stale because the upstream failed), or a
``Failed`` status.  A finished body is committed to the store only if it verified and its
response may be stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Union

from twisted.internet import defer, error, threads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from gateway.cache.rules import Rule, Upstream
from gateway.cache.download import Download, VerificationError
from gateway.cache.events import EngineEvents
from gateway.cache.integrity import Integrity
from gateway.cache.fetcher import Fetcher, header_dict, header_pairs
from gateway.cache.headers import (as_dict, merge_304, replayable, shared_request_headers,
                                   with_date)
from gateway.cache.keys import base_key, parse_vary, variant_key
from gateway.cache.policy import freshness, initial_age, store_refusal
from gateway.cache.store import Entry, Meta, Store
from gateway.cache.tiers import Tiers

log = Logger()

# A relayed body (never stored) of at most this many bytes, with its length known, is held
# in memory (a memfd) rather than in a partial file.  Small, because a slow client keeps
# it in memory until it has it all, where a file's pages could be written out and dropped.
RELAY_IN_MEMORY = 256 * 1024


@dataclass(frozen=True)
class Target:
    """A cacheable request, resolved against the catalogue."""

    host: str
    path: str  # path and query, as requested
    base: str  # host + path + query
    key: str  # the variant key under which the request looked
    upstream: Upstream
    rule: Rule
    url: str  # where to fetch it
    headers: dict[str, str] = field(hash=False)  # the first client's request headers


@dataclass(frozen=True)
class Streaming:
    download: Download
    status: int
    headers: list[tuple[str, str]]  # replayable response headers
    label: str  # MISS or PASS


@dataclass(frozen=True)
class Stored:
    entry: Entry
    label: str  # REVALIDATED or STALE
    warning: str | None = None


@dataclass(frozen=True)
class Failed:
    status: int
    reason: str


@dataclass(frozen=True)
class Retry:
    """Look again: the response varies and this client wants another variant (or it is
    private to the client that asked first, and ``bypass`` says to relay instead)."""

    bypass: bool = False


Outcome = Union[Streaming, Stored, Failed, Retry]


class _Discard(Protocol):
    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        pass


class Flights:
    """The flights in progress, by key, and the upstream conversation of each."""

    def __init__(self, reactor, store: Store, fetcher: Fetcher,  # type: ignore[no-untyped-def]
                 negative_ttl: float,
                 on_download: Callable[[Download, str], None] | None = None,
                 events: EngineEvents | None = None) -> None:
        self.reactor = reactor
        self.store = store
        self.fetcher = fetcher
        self.negative_ttl = negative_ttl
        # Told of every upstream body as it starts (the operator's progress log).
        self.on_download = on_download or (lambda download, url: None)
        self.active: dict[str, Flight] = {}
        # The parents and S3 store in front of the upstream (``tiers.py``); None: none.
        self.tiers: Tiers | None = None
        # Told of every body committed to the store, with the tier it came from (a parent's
        # URL, "s3", "upstream"; None without tiers): the S3 tier's write-behind.
        self.on_commit: Callable[[Meta, str, str | None], None] = lambda meta, key, source: None
        # Digests promised for fills, learning from stored indexes, refused bodies.
        self.integrity = Integrity(reactor, store)
        self.in_thread = partial(threads.deferToThreadPool, reactor, reactor.getThreadPool())
        self.events = events or EngineEvents()  # upstream times and errors, integrity

    def obtain(self, target: Target, stale: Entry | None) -> "defer.Deferred[Outcome]":
        """Join the flight for ``target.key``, starting it if there is none."""
        flight = self.active.get(target.key)
        if flight is None:
            flight = self.active[target.key] = Flight(self, target, stale)
            flight.start()
        return flight.join(target.headers)

    def relay(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
              fetcher: Fetcher | None = None, via_cache: bool = False,
              ecosystem: str | None = None) -> "defer.Deferred[Outcome]":
        """An unshared request whose response is streamed through and never stored (sent
        with ``fetcher`` when given: hosts outside the catalogue).  ``via_cache``: the far
        side is another cache (a sibling worker), whose ``X-Cache`` labels the outcome.
        ``ecosystem``: count the exchange as an upstream request of it (``events``)."""
        fetcher = fetcher or self.fetcher
        count = ecosystem is not None and not via_cache  # a sibling counts its own
        sent = self.reactor.seconds()

        def streaming(response) -> Outcome:  # type: ignore[no-untyped-def]
            length = _length(response)
            small = length is not None and length <= RELAY_IN_MEMORY
            download = Download(None if small else self.store.new_partial(), length)
            pairs = header_pairs(response.headers)
            # Forwarded, not served from the cache: the upstream's Age goes on as it is.
            age = [(name, value) for name, value in pairs if name.lower() == "age"][:1]
            label = header_dict(response.headers).get("x-cache", "MISS") if via_cache else "PASS"
            outcome = Streaming(download, response.code, replayable(pairs) + age, label)
            self.on_download(download, url)
            self.reactor.callLater(0, fetcher.deliver, response, download)
            if count:
                self.events.fetched(ecosystem, self.reactor.seconds() - sent)
                if response.code >= 500:
                    self.events.upstream_error(ecosystem, "5xx")
            return outcome

        def failed(failure: Failure) -> Outcome:
            if count:
                self.events.unreachable(ecosystem, failure)
            return _failure_outcome(failure, url)
        d = fetcher.request(method, url, headers, body)
        return d.addCallbacks(streaming, failed)


def _length(response) -> int | None:  # type: ignore[no-untyped-def]
    return None if response.length is UNKNOWN_LENGTH else response.length


def _timed_out(failure: Failure) -> bool:
    """A timeout, also when the HTTP client wraps it (``ResponseNeverReceived``)."""
    reasons = getattr(failure.value, "reasons", None) or [failure]
    return any(f.check(defer.TimeoutError, defer.CancelledError, error.TimeoutError)
               for f in reasons)


def _failure_outcome(failure: Failure, url: str) -> Failed:
    if _timed_out(failure):
        log.error("upstream timed out: {url}", url=url)
        return Failed(504, "upstream timed out")
    log.error("upstream unreachable: {url}: {error}", url=url, error=failure.getErrorMessage())
    return Failed(502, f"upstream unreachable: {failure.getErrorMessage()}")


class Flight:
    """One upstream fetch of one key and the clients waiting on it."""

    def __init__(self, flights: Flights, target: Target, stale: Entry | None) -> None:
        self.flights = flights
        self.target = target
        self.stale = stale
        self.outcome: Outcome | None = None
        self.vary: tuple[str, ...] = ()
        self.private = False
        self.storable = False
        self.waiters: list[tuple[defer.Deferred, dict[str, str]]] = []
        self.request_time = 0.0
        self.response_time = 0.0  # when the upstream's response head arrived
        self.received_age: str | None = None  # the upstream's Age, not replayed as such

    def join(self, headers: dict[str, str]) -> "defer.Deferred[Outcome]":
        if self.outcome is not None:
            return defer.succeed(self._outcome_for(headers))
        d: defer.Deferred[Outcome] = defer.Deferred()
        self.waiters.append((d, headers))
        return d

    def _outcome_for(self, headers: dict[str, str]) -> Outcome:
        assert self.outcome is not None
        if headers is self.target.headers or not isinstance(self.outcome, Streaming):
            return self.outcome
        if self.private:  # private, or Vary: * (never reused for another request)
            return Retry(bypass=True)
        if self.vary and variant_key(self.target.base, self.vary, headers) != \
                variant_key(self.target.base, self.vary, self.target.headers):
            return Retry()
        # A client joining a download it did not start costs the upstream nothing: a hit
        # (when the response is one the cache keeps).
        return replace(self.outcome, label="HIT") if self.storable else self.outcome

    def _resolve(self, outcome: Outcome) -> None:
        self.outcome = outcome
        waiters, self.waiters = self.waiters, []
        for d, headers in waiters:
            d.callback(self._outcome_for(headers))

    def _end(self) -> None:
        if self.flights.active.get(self.target.key) is self:
            del self.flights.active[self.target.key]

    def start(self) -> None:
        """Ask the upstream, once the indexes being read now are recorded (their digests
        may be this body's), and the file naming this one's digest is stored and read
        when the ecosystem has one and no digest is known yet (Maven's ``.sha1``)."""
        source = self._digest_source()
        if source is None:
            return self._when_settled()
        source.addBoth(lambda _: self._when_settled())
        source.addErrback(self._bug)

    def _when_settled(self) -> None:
        settled = self.flights.integrity.settled(self.target.upstream.name)
        if settled.called:
            return self._request()
        settled.addCallback(lambda _: self._request())
        settled.addErrback(self._bug)

    def _digest_source(self) -> defer.Deferred | None:
        """The flight of the file that names this body's digest, until its body ends."""
        target, store = self.target, self.flights.store
        path = self.flights.integrity.digest_source(target.upstream, target.rule, target.path,
                                                    target.base)
        if path is None or store.get(base_key(target.host, path)) is not None:
            return None
        base = base_key(target.host, path)
        source = Target(target.host, path, base, base, target.upstream,
                        target.upstream.rule_for(path),
                        target.upstream.upstream_url(target.host, path), {})
        d = self.flights.obtain(source, None)

        def body_ended(outcome: Outcome) -> defer.Deferred | None:
            if not isinstance(outcome, Streaming) or outcome.download.finished:
                return None
            ended: defer.Deferred = defer.Deferred()
            outcome.download.on_finish(
                lambda dl: self.flights.reactor.callLater(0, ended.callback, None))
            return ended
        return d.addCallback(body_ended)

    def _request(self) -> None:
        headers = shared_request_headers(
            self.target.headers, self.target.upstream.forwards_end_to_end(self.target.rule))
        if self.stale is not None:
            if etag := self.stale.meta.header("etag"):
                headers["if-none-match"] = etag
            if modified := self.stale.meta.header("last-modified"):
                headers["if-modified-since"] = modified
        self.request_time = self.flights.reactor.seconds()
        tiers = self.flights.tiers
        d = tiers.request(self.target, headers) if tiers is not None else \
            self.flights.fetcher.request("GET", self.target.url, headers)
        d.addCallbacks(self._response, self._unreachable)
        d.addErrback(self._bug)

    def _bug(self, failure: Failure) -> None:
        log.failure("flight for {key} failed", failure, key=self.target.key)
        if self.outcome is None:
            self._resolve(Failed(500, "internal error"))
        self._end()

    def _unreachable(self, failure: Failure) -> None:
        self.flights.events.unreachable(self.target.upstream.name, failure)
        if self._serve_stale(failure.getErrorMessage()):
            return
        self._resolve(_failure_outcome(failure, self.target.url))
        self._end()

    def _serve_stale(self, why: str) -> bool:
        """Answer with the stale copy when the upstream fails, if it may be served stale."""
        if self.stale is None or not self.stale.meta.freshness.stale_if_error:
            return False
        log.error("upstream failed ({why}): serving stale {url}", why=why, url=self.target.base)
        self._resolve(Stored(self.stale, "STALE", '111 - "Revalidation Failed"'))
        self._end()
        return True

    def _response(self, response) -> None:  # type: ignore[no-untyped-def]
        self._count(response.code)
        self.response_time = self.flights.reactor.seconds()
        self.received_age = header_dict(response.headers).get("age")
        if response.code == 304 and self.stale is not None:
            response.deliverBody(_Discard())
            self._revalidated(header_pairs(response.headers))
            return
        if response.code >= 500 and self._serve_stale(f"status {response.code}"):
            response.deliverBody(_Discard())
            return
        self._stream(response)

    def _revalidated(self, fresh: list[tuple[str, str]]) -> None:
        assert self.stale is not None
        # The 304's Date and Age replace the stored ones (a 304 without Date is dated now).
        fresh = with_date(fresh, self.response_time)
        meta = self._meta(304, merge_304(self.stale.meta.headers, fresh), self.stale.meta.length,
                          self.stale.meta.sha256)
        entry = self.flights.store.refresh(self.stale, meta)
        self._resolve(Stored(entry or self.stale, "REVALIDATED"))
        self._end()

    def _meta(self, status: int, pairs: list[tuple[str, str]], length: int, sha256: str) -> Meta:
        status = self.stale.meta.status if status == 304 and self.stale else status
        headers = as_dict(pairs)
        if self.received_age is not None:  # counts towards the age, never replayed
            headers["age"] = self.received_age
        fresh = freshness(self.target.rule, status, headers, self.request_time,
                          self.response_time, self.flights.negative_ttl)
        return Meta(self.target.base, self.target.upstream.name, status, pairs, fresh, length,
                    sha256)

    def _stream(self, response) -> None:  # type: ignore[no-untyped-def]
        headers = header_dict(response.headers)
        pairs = with_date(replayable(header_pairs(response.headers)), self.response_time)
        self.vary = parse_vary(headers.get("vary"))
        refusal = store_refusal(self.target.rule, response.code, headers)
        self.private = refusal in ("private", "vary-star")
        self.storable = refusal is None
        target = self.target
        # A variant's own first copy (variants of one URL may differ), and no index's
        # digest for a content-encoded body (its bytes are not the artifact's).
        expected = self.flights.integrity.expectations(
            target.upstream, target.rule, target.path,
            variant_key(target.base, self.vary, target.headers),
            headers.get("content-encoding", "identity").strip().lower() != "identity") \
            if response.code == 200 else None
        # A tier that knows the body's sha256 (the S3 store's pointer) has it checked like
        # an index's digest, and hears how the body ended.
        promised = getattr(response, "digest", None)
        if promised is not None and expected is not None:
            expected.append(promised)
        download = Download(self.flights.store.new_partial(), _length(response), expected,
                            self.flights.in_thread)
        if (ended := getattr(response, "body_ended", None)) is not None:
            download.on_finish(ended)
        if refusal is None:
            self.flights.store.set_vary(self.target.base, self.vary)
            key = variant_key(self.target.base, self.vary, self.target.headers)
            source = getattr(response, "source", None)
            download.on_finish(lambda dl: self._commit(dl, key, response.code, pairs, source))
        download.on_finish(lambda dl: self._finished(dl))
        if self.flights.tiers is not None:
            self.flights.tiers.received(response, download)
        self._resolve(Streaming(download, response.code, pairs + self._age(headers), "MISS"))
        self.flights.on_download(download, self.target.url)
        self.flights.fetcher.deliver(response, download)

    def _age(self, headers: dict[str, str]) -> list[tuple[str, str]]:
        """The ``Age`` a client of the fetch gets when the upstream said one (RFC 9111
        4.2.3: the upstream's plus the transit time)."""
        if self.received_age is None:
            return []
        age = initial_age(headers, self.request_time, self.response_time)
        return [("Age", str(int(age)))]

    def _commit(self, download: Download, key: str, status: int,
                pairs: list[tuple[str, str]], source: str | None) -> None:
        if not download.storable:  # failed, or streamed through a full disk
            return
        meta = self._meta(status, pairs, download.size, download.sha256.hexdigest())
        previous = self.stale.meta.sha256 if self.stale is not None else None
        integrity, target = self.flights.integrity, self.target
        if status == 200:
            integrity.annotate(meta, download, integrity.checks_digests(
                target.upstream, target.rule, target.path))
        try:
            self.flights.store.commit(key, meta, download.path)
        except Exception:  # a full disk or a broken database must not take the download down
            log.failure("cannot store {key}", key=key)
            return
        group = self.target.upstream.ecosystem.marked_group(self.target.base)
        if group is not None and previous != meta.sha256:
            self.flights.store.set_suite_changed(group, meta.freshness.response_time)
        if status == 200:
            self.flights.on_commit(meta, key, source)
            integrity.committed(target.rule, key, meta, target.upstream.name,
                                self.flights.events)
            # The reader's descriptor survives the rename: the index is read in a thread.
            integrity.learn(target.upstream, target.path, download.open_reader(), pairs)

    def _count(self, status: int) -> None:
        events, name = self.flights.events, self.target.upstream.name
        events.fetched(name, self.flights.reactor.seconds() - self.request_time)
        if status >= 500:
            events.upstream_error(name, "5xx")

    def _finished(self, download: Download) -> None:
        if download.error is not None:
            self.flights.integrity.refused(download, self.target.base,
                                           self.target.upstream.name, self.flights.events)
            if download.error.check(VerificationError):
                self.flights.events.integrity_failure(self.target.upstream.name, "download")
            else:
                self.flights.events.upstream_failure(self.target.upstream.name, download.error)
            log.error("download of {url} failed: {error}", url=self.target.url,
                      error=download.error.getErrorMessage())
        self._end()
