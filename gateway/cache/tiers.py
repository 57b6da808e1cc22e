"""Where a flight's one fetch goes: the parent gateway that owns the key, the next
parent, then the real upstream.

A child (a build host's gateway) sends a miss on a catalogue object to the parent chosen
by rendezvous hashing of the cache key (``rendezvous.py``), as an absolute-form request
with the real Host and the shared token.  The parent answers from its own cache and its
own single flight, so an object crosses the internet once for the whole fleet.  The child
stores the answer under its own rule: freshness is computed by the child's policy from the
parent's ``Date`` and ``Age`` (a parent never makes an object fresher than the child's rule
allows).

A parent that does not answer (refused, timed out) has its breaker opened
(``breaker.py``): while open it is skipped at the cost of a dict look-up.  A parent's own
error (a 5xx it made itself, without ``X-Cache``; a 403 refusing our token) also moves on
to the next, without opening the breaker for a 5xx.  Whatever happens, the last resort is
the upstream itself: a shared tier never fails a build.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ProxyAgent

from gateway.cache.breaker import Breaker
from gateway.cache.fetcher import Fetcher, header_dict
from gateway.cache.headers import S3_HEADER
from gateway.cache.rendezvous import ranked

log = Logger()

TOKEN_HEADER = "proxy-authorization"
# Names the asking gateway (the same in all its worker processes): a parent that finds its
# own name there is the asker itself (one config file shared by the whole fleet lists every
# host as a parent), and answers 508 instead of joining its own flight forever.
INSTANCE_HEADER = "x-cachegate-child"
UPSTREAM = "upstream"
# Idle connections kept to each parent: a build's burst of misses reuses them.
PARENT_CONNECTIONS = 32


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class Parent:
    """One parent gateway: how to reach it and whether it is known down."""

    url: str
    fetcher: Fetcher
    breaker: Breaker
    requests: int = 0
    bytes: int = 0
    refusals: int = 0  # 403s: our token is not theirs
    itself: bool = False  # this gateway's own cluster port: never asked again
    s3: str = ""  # the S3 store it writes behind to, as its last answer said

    def describe(self) -> dict[str, Any]:
        return {"parent": self.url, **self.breaker.describe(), "requests": self.requests,
                "bytes": self.bytes, "refused": self.refusals, "itself": self.itself}


@dataclass
class TierStats:
    """Bytes of committed fetches by where they came from ("upstream", a parent, "s3")."""

    bytes: Counter = field(default_factory=Counter)
    fetches: Counter = field(default_factory=Counter)


class _Discard(Protocol):
    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        pass


def parent_fetcher(reactor, url: str, connect_timeout: float,  # type: ignore[no-untyped-def]
                   idle_timeout: float) -> Fetcher:
    """A ``Fetcher`` whose requests go to the parent at ``url`` in absolute form (as to
    an HTTP proxy), so the parent sees the real host the object lives on."""
    parts = urlsplit(url)
    fetcher = Fetcher(reactor, connect_timeout=connect_timeout, idle_timeout=idle_timeout)
    fetcher.pool.maxPersistentPerHost = PARENT_CONNECTIONS
    endpoint = fetcher.endpoint(parts.hostname or "", parts.port or 80)
    fetcher.agent = ProxyAgent(endpoint, reactor, fetcher.pool)
    return fetcher


class Tiers:
    """The shared tiers in front of the upstream, asked in order for one flight's fetch."""

    def __init__(self, reactor, upstream: Fetcher, parents: list[Parent],  # type: ignore[no-untyped-def]
                 token: str, instance: str = "") -> None:
        self.reactor, self.upstream, self.parents, self.token = reactor, upstream, parents, token
        self.instance = instance
        self.by_url = {parent.url: parent for parent in parents}
        self.stats = TierStats()
        self.resumed = 0  # bodies a dying parent broke off, finished by the next tier
        # Further tiers between the parents and the upstream (the S3 store): called with
        # (target, headers), they fire with a response or None (not there, or down).
        self.before_upstream: list[Callable] = []

    @classmethod
    def from_urls(cls, reactor, upstream: Fetcher, urls: tuple[str, ...],  # type: ignore[no-untyped-def]
                  token: str, connect_timeout: float, idle_timeout: float,
                  breaker_seconds: float, instance: str = "") -> "Tiers":
        parents = [Parent(url, parent_fetcher(reactor, url, connect_timeout, idle_timeout),
                          Breaker(reactor.seconds, breaker_seconds)) for url in urls]
        return cls(reactor, upstream, parents, token, instance)

    def request(self, target, headers: dict[str, str]) -> defer.Deferred:  # type: ignore[no-untyped-def]
        """The response for ``target`` (a flight's ``Target``), from the first tier that
        gives one; its ``source`` attribute names that tier."""
        order = [self.by_url[url] for url in ranked(target.base, list(self.by_url))]
        return self._next_parent(order, target, headers)

    def _next_parent(self, order: list[Parent], target, headers: dict[str, str],  # type: ignore[no-untyped-def]
                     resumable: bool = True) -> defer.Deferred:
        # Reaching itself in the ranking, a gateway that is also a parent fetches on its
        # own: a request only ever goes to a parent ranked above the asker, so parents
        # that ask each other never wait on each other in a circle.
        while order and not order[0].itself and not order[0].breaker.allow():
            order = order[1:]
        if not order or order[0].itself:
            return self._after_parents(list(self.before_upstream), target, headers)
        parent, rest = order[0], order[1:]
        sent = {**headers, TOKEN_HEADER: bearer(self.token), INSTANCE_HEADER: self.instance}
        parent.requests += 1
        d = parent.fetcher.request("GET", f"http://{target.host}{target.path}", sent)
        d.addCallbacks(self._parent_answered, self._parent_failed,
                       callbackArgs=(parent, rest, target, headers, resumable),
                       errbackArgs=(parent, rest, target, headers, resumable))
        return d

    def _parent_answered(self, response, parent: Parent, rest: list[Parent], target,  # type: ignore[no-untyped-def]
                         headers: dict[str, str], resumable: bool = True):
        answered = header_dict(response.headers)
        own_error = response.code >= 500 and "x-cache" not in answered
        if response.code == 508 and own_error:
            parent.itself = True
            log.info("parent {parent} is this gateway itself: not asked again",
                     parent=parent.url)
            response.deliverBody(_Discard())
            return self._next_parent([parent], target, headers, resumable)
        if response.code in (403, 407) or own_error:
            response.deliverBody(_Discard())
            parent.breaker.succeeded()  # it answered: alive
            if response.code in (403, 407):
                parent.refusals += 1
            log.error("parent {parent} answered {status} itself: trying the next",
                      parent=parent.url, status=response.code)
            return self._next_parent(rest, target, headers, resumable)
        parent.breaker.succeeded()
        parent.s3 = answered.get(S3_HEADER, "")
        if resumable and response.code == 200:
            response = Resumable(response, self, parent, rest, target, headers)
        response.source = parent.url
        return response

    def _parent_failed(self, failure: Failure, parent: Parent, rest: list[Parent], target,  # type: ignore[no-untyped-def]
                       headers: dict[str, str], resumable: bool = True) -> defer.Deferred:
        parent.breaker.failed()
        log.error("parent {parent} unreachable ({error}): skipped for {seconds:.0f} s",
                  parent=parent.url, error=failure.getErrorMessage(),
                  seconds=parent.breaker.back_off)
        return self._next_parent(rest, target, headers, resumable)

    def _after_parents(self, tiers: list[Callable], target, headers: dict[str, str]  # type: ignore[no-untyped-def]
                       ) -> defer.Deferred:
        if not tiers:
            d = self.upstream.request("GET", target.url, headers)
            return d.addCallback(_labelled, UPSTREAM)
        d = defer.maybeDeferred(tiers[0], target, headers)
        d.addErrback(lambda f: log.failure("tier failed", f))

        def answered(response):  # type: ignore[no-untyped-def]
            return response if response is not None else \
                self._after_parents(tiers[1:], target, headers)
        return d.addCallback(answered)

    def s3_of(self, source: str | None) -> str:
        """The S3 store the parent at ``source`` writes behind to ("" if none or not a
        parent)."""
        parent = self.by_url.get(source or "")
        return parent.s3 if parent is not None else ""

    def received(self, response, download) -> None:  # type: ignore[no-untyped-def]
        """Count a fetched body's bytes under the tier it came from, once it ends whole."""
        source = getattr(response, "source", UPSTREAM)

        def ended(dl) -> None:  # type: ignore[no-untyped-def]
            if dl.error is None:
                self.stats.bytes[source] += dl.size
                self.stats.fetches[source] += 1
                if source in self.by_url:
                    self.by_url[source].bytes += dl.size
        download.on_finish(ended)

    def describe(self) -> dict[str, Any]:
        from_parents = sum(p.bytes for p in self.parents)
        return {"parents": [parent.describe() for parent in self.parents],
                "bytes": {"parents": from_parents,
                          **{k: v for k, v in self.stats.bytes.items() if k not in self.by_url}},
                "fetches": dict(self.stats.fetches), "resumed": self.resumed}

    def close(self) -> defer.Deferred:
        return defer.DeferredList([p.fetcher.close() for p in self.parents])


class Resumable:
    """A parent's 200 whose body, if the parent dies part-way, goes on from the next tier
    (the next parent, else the upstream) with ``Range: bytes=N-`` and ``If-Range`` on the
    parent's validator: the flight's download never sees the break.  Without a validator
    or a length, or when the next tier cannot give exactly the rest (a 206 from N), the
    body fails as before (its clients are aborted, nothing is stored)."""

    def __init__(self, response, tiers: Tiers, parent: Parent, rest: list[Parent],  # type: ignore[no-untyped-def]
                 target, headers: dict[str, str]) -> None:
        self.inner, self.tiers, self.parent, self.rest = response, tiers, parent, rest
        self.target, self.sent = target, headers
        fields = header_dict(response.headers)
        self.validator = fields.get("etag") or fields.get("last-modified")

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def deliverBody(self, protocol: Protocol) -> None:  # noqa: N802
        self.inner.deliverBody(_ResumingBody(self, protocol))

    def resume(self, offset: int) -> defer.Deferred:
        self.parent.breaker.failed()
        log.error("parent {parent} broke off {url} at byte {offset}: resuming from the next "
                  "tier", parent=self.parent.url, url=self.target.base, offset=offset)
        headers = {**self.sent, "range": f"bytes={offset}-", "if-range": self.validator}
        return self.tiers._next_parent(self.rest, self.target, headers, resumable=False)


class _Relay:
    """The transport the flight's body receiver sees: whichever connection feeds it now
    (pausing and stopping reach the current one; a pause carries over to the next)."""

    def __init__(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.current, self.paused, self.stopped = transport, False, False

    def swap(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.current = transport
        if self.paused:
            transport.pauseProducing()

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        self.current.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.current.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True
        self.current.stopProducing()


class _ResumingBody(Protocol):
    def __init__(self, response: Resumable, inner: Protocol) -> None:
        self.response, self.inner = response, inner
        self.relay: _Relay | None = None
        self.received = 0
        self.resumed = False

    def makeConnection(self, transport) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        if self.relay is None:
            self.relay = _Relay(transport)
            self.inner.makeConnection(self.relay)
        else:  # the next tier's body: the receiver goes on reading from it
            self.relay.swap(transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += len(data)
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        from twisted.web.client import ResponseDone
        length = self.response.inner.length
        if reason.check(ResponseDone) or self.resumed or self.relay is None or \
                self.relay.stopped or not self.response.validator or \
                not isinstance(length, int) or self.received >= length:
            return self.inner.connectionLost(reason)
        self.resumed = True
        offset = self.received
        d = self.response.resume(offset)
        d.addCallback(self._continue, offset, reason)
        d.addErrback(lambda f: self.inner.connectionLost(reason))

    def _continue(self, response, offset: int, reason: Failure) -> None:  # type: ignore[no-untyped-def]
        fields = header_dict(response.headers)
        if response.code != 206 or not fields.get("content-range", "").startswith(
                f"bytes {offset}-"):
            response.deliverBody(_Discard())
            return self.inner.connectionLost(reason)
        self.response.tiers.resumed += 1
        response.deliverBody(_Tail(self))


class _Tail(Protocol):
    """The rest of the body, from the next tier, into the same receiver."""

    def __init__(self, body: _ResumingBody) -> None:
        self.body = body

    def makeConnection(self, transport) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        self.body.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.body.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.body.inner.connectionLost(reason)


def _labelled(response, source: str):  # type: ignore[no-untyped-def]
    response.source = source
    return response


def pooled_tiers(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Several worker processes' ``tiers`` documents as one: counts added; a breaker shown
    open when it is open in any worker (each worker has its own); the S3 client shown made
    once every worker has made its own."""
    if not documents:
        return {"parents": [], "bytes": {}, "fetches": {}, "s3": None}
    out: dict[str, Any] = {"parents": [], "bytes": Counter(), "fetches": Counter(), "s3": None}
    by_url: dict[str, dict[str, Any]] = {}
    for document in documents:
        out["bytes"].update(document.get("bytes", {}))
        out["fetches"].update(document.get("fetches", {}))
        for parent in document.get("parents", []):
            into = by_url.setdefault(parent["parent"], {**parent, **{
                k: 0 for k in ("failures", "opened", "requests", "bytes", "refused")}})
            _add_state(into, parent)
        if document.get("s3"):
            out["s3"] = _add_state(out["s3"] or {**document["s3"], **{
                k: 0 for k, v in document["s3"].items()
                if isinstance(v, int) and not isinstance(v, bool) and k != "queue_limit"}},
                document["s3"])
            # Each worker makes its own client: one without sends its misses upstream.
            out["s3"]["client"] = out["s3"]["client"] and document["s3"]["client"]
    out["parents"] = list(by_url.values())
    out["resumed"] = sum(d.get("resumed", 0) for d in documents)
    out["bytes"], out["fetches"] = dict(out["bytes"]), dict(out["fetches"])
    for key in ("children_refused",):
        if any(key in d for d in documents):
            out[key] = sum(d.get(key, 0) for d in documents)
    return out


def _add_state(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    for key, value in more.items():
        if isinstance(value, int) and not isinstance(value, bool) and key != "queue_limit":
            into[key] += value
    if more["state"] == "open":
        into["state"], into["retry_in"] = "open", max(into.get("retry_in", 0), more["retry_in"])
    into["itself"] = into.get("itself", False) or more.get("itself", False)
    return into
