"""Request handling: route by Host, then serve from the store, a flight, or a relay.

``GatewayResource`` is the thin twisted.web side; ``Gateway`` decides, using the pure
modules (catalogue, policy, keys, ranges, conditional) for every choice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Callable
from urllib.parse import urlsplit

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from gateway.cache.rules import Policy, Rule, Upstream, find_upstream
from gateway.cache.conditional import not_modified
from gateway.config import Config
from gateway.cache.fetcher import Fetcher, header_dict
from gateway.cache.flight import Failed, Flights, Outcome, Retry, Stored, Streaming, Target
from gateway.cache.headers import as_dict, passthrough_request_headers
from gateway.front.accesslog import AccessLog
from gateway.front.bodies import SMALL_BODY, send_file
from gateway.front.client_errors import LogBudget
from gateway.cache.keys import base_key, normalise_path, variant_key
from gateway.cache.policy import bypass_reason, invalidates, request_forces_revalidation
from gateway.cache.ranges import if_range_allows, parse_range
from gateway.cache.stats import Stats
from gateway.cache.store import Entry, Store
from gateway.front.fast_path import GatewayChannel, response_head
from gateway.front.owners import HOP_HEADER, Owners, hop_headers
from gateway.front.sessions import Replay, Sessions
from gateway.cache.records import Records
from gateway.cache.streaming import FileStreamer
from gateway.cache.verify import body_problem
from tls.context import sni_name

log = Logger()

# Requests whose routing and entries whose response heads the fast path memoises.
FAST_ROUTES = 16384


# What proxy clients' requests for hosts outside the catalogue are counted under.
OTHER_HOSTS = Upstream("other", (), (Rule("", Policy.PASS),), scheme="http")
# A Host a URI can carry (RFC 3986 3.2.2), lower case: a name or an IP literal.  Anything
# else (spaces, non-ASCII bytes, "@") is a bad request, never a name to look up.
_HOST = re.compile(r"[a-z0-9_.-]+|\[?[0-9a-f:.]+\]?")


@dataclass
class Exchange:
    """One client request being served."""

    request: server.Request
    method: str
    host: str
    path: str
    headers: dict[str, str]
    upstream: Upstream
    rule: Rule
    started: float
    gone: bool = False
    hop: bool = False  # another worker asking for a key this one owns (front/owners.py)
    # What was served, for build records (front/sessions.py): the store key, the body's
    # sha256 and size (or the download it streamed from), and the replay it is held to.
    key: str = ""
    sha256: str = ""
    size: int = 0
    download: object = None
    replay: Replay | None = None


class Gateway:
    """Serves requests for catalogue hosts from the store, fetching misses once."""

    def __init__(self, reactor, config: Config, store: Store, flights: Flights,  # type: ignore[no-untyped-def]
                 stats: Stats, ca_pem: bytes, access_log: AccessLog | None = None,
                 foreign: Callable[[str], Fetcher] | None = None) -> None:
        self.reactor = reactor
        self.foreign = foreign  # client -> what relays its proxy requests for other hosts
        self.config = config
        self.store = store
        self.flights = flights
        self.stats = stats
        self.ca_pem = ca_pem
        self.access_log = access_log or AccessLog()
        # Keys of digest-named objects (PyPI files) re-hashed since this process started.
        # Bytes damaged on disk are caught the first time such an object is served from
        # the store: one read per object per process, not one per hit (every object is
        # covered by `cache verify`).
        self.verified: set[str] = set()
        self._routes: dict[tuple[str, str], tuple | None] = {}  # fast-path memos
        self._routes_for = config.upstreams
        self._heads: dict[str, tuple[Entry, bytes]] = {}
        self.client_errors = LogBudget(reactor.seconds)  # bounds the warn lines they cost
        self.owners: Owners | None = None  # set in a worker process (gateway/workers.py)
        self._hops: dict[tuple[str, str], Multicast] = {}  # relays from owners, by key
        self.sessions = Sessions(reactor, Records(store), config.sessions, store.worker)

    # -- routing ---------------------------------------------------------------------

    def handle(self, request: server.Request) -> None:
        method = request.method.decode("latin-1")
        target = request_target(request)
        if target is None:
            return self._error(request, 400, "bad request target")
        host, path = target
        if request.isSecure() and sni_name(request.channel.transport) != host:
            return self._error(request, 421, f"{host} does not match the TLS server name")
        if host in self.config.dns.local_names:
            return self._local(request, path)
        upstream = find_upstream(self.config.upstreams, host)
        if upstream is None:
            if self.sessions.replay_for(_client(request)) is not None:
                return self._error(request, 403, f"{host} is outside every record: hermetic "
                                                 "replay serves only recorded URLs")
            if self.foreign is not None and getattr(request.channel, "proxy_client", False):
                return self._forward(request, method, host, path)
            return self._error(request, 403, f"{host} is not a repository cachegate serves")
        exchange = Exchange(request, method, host, path, header_dict(request.requestHeaders),
                            upstream, upstream.rule_for(path), self.reactor.seconds())
        # Only another worker, on the internal socket, may say it is one.
        exchange.hop = exchange.headers.pop(HOP_HEADER, None) is not None and \
            getattr(request.channel, "internal", False)
        request.notifyFinish().addErrback(lambda _: setattr(exchange, "gone", True))
        if self.sessions.replays and not exchange.hop:
            exchange.replay = self.sessions.replay_for(_client(request))
            if exchange.replay is not None:
                return self._replay(exchange)
        if bypass_reason(method, exchange.headers, exchange.rule):
            return self._relay(exchange)
        self._lookup(exchange)

    def fast_hit(self, method: str, target: str, headers: dict[str, str],
                 client: str) -> bytes | None:
        """The whole response to a plain-TCP request that is a fresh hit on a small object
        and asks nothing special (see ``fast_path``); None sends it down the normal path."""
        route = self._route(headers.get("host", ""), target)
        if route is None:
            return None
        host, path, upstream, rule, base = route
        if bypass_reason(method, headers, rule) or self.sessions.replay_for(client):
            return None
        entry = self.store.get(variant_key(base, self.store.vary(base), headers))
        if entry is None or entry.meta.length > SMALL_BODY or \
                not self._fresh(upstream, rule, headers, entry) or \
                (rule.digest and entry.key not in self.verified):
            return None
        body = b""
        if method == "GET":
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                body = os.pread(fd, entry.meta.length, 0)
            finally:
                os.close(fd)
            if len(body) != entry.meta.length:
                return None
        age = int(entry.meta.freshness.age(self.reactor.seconds()))
        head = self._head(entry) + f"Age: {age}\r\n\r\n".encode()
        self._record(upstream.name, client, method, host, path, entry.meta.status, "HIT",
                     len(body), 0.0)
        if self.sessions.open:
            self.sessions.note(client, method, f"http://{host}{path}", entry.key, upstream, path,
                               entry.meta.status, "HIT", entry.meta.sha256, entry.meta.length)
        return head + body

    def _route(self, raw_host: str, target: str) -> tuple | None:
        """(host, path, upstream, rule, base key) for a fast-path request, memoised: the same
        few thousand URLs are asked again and again by every build."""
        if self._routes_for is not self.config.upstreams:  # the catalogue was edited
            self._routes, self._routes_for = {}, self.config.upstreams
        route = self._routes.get((raw_host, target), False)
        if route is False:
            host = host_of(raw_host)
            path = normalise_path(target)
            upstream = find_upstream(self.config.upstreams, host) if host else None
            route = None
            if path is not None and upstream is not None and \
                    host not in self.config.dns.local_names:
                route = (host, path, upstream, upstream.rule_for(path), base_key(host, path))
            if len(self._routes) >= FAST_ROUTES:
                self._routes.clear()
            self._routes[(raw_host, target)] = route
        return route

    def _head(self, entry: Entry) -> bytes:
        """The response head of a stored entry but for its ``Age``, memoised per entry
        (a refreshed or replaced entry is a new object)."""
        memo = self._heads.get(entry.key)
        if memo is None or memo[0] is not entry:
            head = response_head(entry.meta.status, entry.meta.headers, [
                ("X-Cache", "HIT"), ("Content-Length", str(entry.meta.length))])
            memo = (entry, head[:-2])  # without the blank line: Age follows
            if len(self._heads) >= FAST_ROUTES:
                self._heads.clear()
            self._heads[entry.key] = memo
        return memo[1]

    def _local(self, request: server.Request, path: str) -> None:
        """The gateway's own name: the CA certificate for containers to trust, and any
        stored body by its sha256 (``/sha256/<hex>``)."""
        bare = path.partition("?")[0]
        if bare.startswith("/sha256/"):
            return self._by_digest(request, bare[len("/sha256/"):].lower())
        if bare != "/ca.crt":
            return self._error(request, 404, "only /ca.crt and /sha256/<hex> are served here")
        request.setHeader("Content-Type", "application/x-pem-file")
        request.setHeader("Content-Disposition", 'attachment; filename="cachegate-ca.crt"')
        request.setHeader("Content-Length", str(len(self.ca_pem)))
        request.setHeader("Cache-Control", "no-cache")
        if request.method != b"HEAD":
            request.write(self.ca_pem)
        request.finish()

    def _by_digest(self, request: server.Request, hex_digest: str) -> None:
        """A stored body found by the content index, whichever URL it was stored under."""
        valid = len(hex_digest) == 64 and all(c in "0123456789abcdef" for c in hex_digest)
        for entry in self.store.find_sha256(hex_digest) if valid else []:
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except FileNotFoundError:  # evicted meanwhile
                continue
            length = entry.meta.length
            request.setHeader("Content-Type", "application/octet-stream")
            request.setHeader("Content-Length", str(length))
            request.setHeader("ETag", f'"sha256:{hex_digest}"')
            request.setHeader("Cache-Control", "public, max-age=31536000, immutable")
            request.setHeader("X-Cache", "HIT")
            if request.method == b"HEAD" or length == 0:
                os.close(fd)
                return request.finish()
            FileStreamer(request, fd, 0, length - 1, None, lambda sent, ok: None).start()
            return
        self._error(request, 404, f"no stored object has sha256 {hex_digest}")

    def _lookup(self, ex: Exchange) -> None:
        if ex.replay is not None:  # a recorded body gone (evicted, damaged): never a fetch
            return self._replay(ex)
        base = base_key(ex.host, ex.path)
        key = ex.key = variant_key(base, self.store.vary(base), ex.headers)
        entry = self.store.get(key)
        if entry is not None and self._fresh(ex.upstream, ex.rule, ex.headers, entry):
            return self._serve_entry(ex, entry, "HIT")
        if self.config.cache.offline:
            if entry is not None:
                return self._serve_entry(ex, entry, "STALE")
            return self._error(ex.request, 504, "offline and not in the cache")
        target = Target(ex.host, ex.path, base, key, ex.upstream, ex.rule,
                        ex.upstream.upstream_url(ex.host, ex.path), ex.headers)
        owner = None if ex.hop or self.owners is None else self.owners.elsewhere(key)
        if owner is not None:
            return self._via_owner(ex, target, entry, owner)
        self._obtain(ex, target, entry)

    def _replay(self, ex: Exchange) -> None:
        """Hermetic replay: what the replayed record lists, with its recorded bytes (found
        by sha256 in the content index), indexes included; anything else is refused and
        nothing goes upstream."""
        replay = ex.replay
        assert replay is not None
        base = base_key(ex.host, ex.path)
        url = _url(ex.request, ex.host, ex.path)
        recorded = replay.lookup(base, variant_key(base, self.store.vary(base), ex.headers))
        source = replay.source
        where = f"session {source.id}" + (f" ({source.name})" if source.name else "")
        if recorded is None:
            return self._error(ex.request, 403, f"{url} is not in the record of {where}, "
                               f"replayed by session {replay.session.id}", ex)
        if not recorded.sha256:
            return self._error(ex.request, 403, f"{url} was not recorded with a body in "
                               f"{where} ({recorded.source}, {recorded.status}), replayed by "
                               f"session {replay.session.id}", ex)
        for entry in self.store.find_sha256(recorded.sha256):
            if os.path.exists(entry.path):
                ex.key = entry.key
                return self._serve_entry(ex, entry, "REPLAY")
        self._error(ex.request, 404, f"{url} (sha256 {recorded.sha256}), recorded in {where}, "
                    f"is not in the store: import it (cachegate import) to replay", ex)

    def _obtain(self, ex: Exchange, target: Target, stale: Entry | None) -> None:
        d = self.flights.obtain(target, stale)
        d.addCallback(self._serve_outcome, ex)
        d.addErrback(self._bug, ex)

    def _via_owner(self, ex: Exchange, target: Target, stale: Entry | None,
                   owner: int) -> None:
        """A key another worker owns: that worker's one fetch, relayed here unstored and
        shared by this worker's clients of the key while it runs (a herd costs one hop
        per worker, not one per client)."""
        hop = (ex.method, target.key)
        shared = self._hops.get(hop)
        first = shared is None
        if shared is None:
            shared = self._hops[hop] = self._hop(ex, owner, hop)
        d = shared.join()
        d.addCallback(self._owner_answered, ex, target, stale, first)
        d.addErrback(self._bug, ex)

    def _hop(self, ex: Exchange, owner: int, hop: tuple[str, str]) -> "Multicast":
        """Range and conditionals are answered here, so the owner sends the whole body."""
        assert self.owners is not None
        shared = Multicast()
        headers = {k: v for k, v in ex.headers.items() if k not in _ANSWERED_HERE}
        d = self.flights.relay(ex.method, self.owners.url(owner, ex.path),
                               hop_headers(headers, ex.host), None, self.owners.fetcher, True)

        def answered(outcome: Outcome) -> None:
            if isinstance(outcome, Streaming):  # joinable until its body ends
                outcome.download.on_finish(lambda _: self._hops.pop(hop, None))
            else:
                self._hops.pop(hop, None)
            shared.resolve(outcome)

        def failed(failure: Failure) -> None:
            log.failure("relay of {key} failed", failure, key=hop[1])
            self._hops.pop(hop, None)
            shared.resolve(Failed(500, "internal error"))
        d.addCallbacks(answered, failed)
        return shared

    def _owner_answered(self, outcome: Outcome, ex: Exchange, target: Target,
                        stale: Entry | None, first: bool) -> None:
        if isinstance(outcome, Failed):  # the owner is away (dead, restarting)
            log.warn("owner of {key} did not answer ({reason}): fetching it here",
                     key=target.key, reason=outcome.reason)
            return self._obtain(ex, target, stale)
        if isinstance(outcome, Streaming) and not first:  # joined a download: a hit
            outcome = replace(outcome, label="HIT")
        if not ex.gone:  # else the relay goes on for this worker's other clients
            self._serve_outcome(outcome, ex)

    def _fresh(self, upstream: Upstream, rule: Rule, headers: dict[str, str],
               entry: Entry) -> bool:
        now = self.reactor.seconds()
        if not entry.meta.freshness.is_fresh(now):
            return False
        if rule.policy is Policy.STANDARD and request_forces_revalidation(headers):
            return False
        group = upstream.ecosystem.index_group(entry.meta.url)
        if group is not None:
            return entry.meta.freshness.response_time >= self.store.suite_changed_at(group)
        return True

    def _forward(self, request: server.Request, method: str, host: str, path: str) -> None:
        """A proxy client's plain-HTTP request for a host outside the catalogue: relayed
        uncached, as CONNECT to such a host is tunnelled (an apt source or a download
        over ``http_proxy`` must keep working)."""
        parts = urlsplit(request.uri.decode("latin-1"))
        try:
            port = parts.port or 80
        except ValueError:
            port = 0
        if parts.scheme.lower() != "http" or not 0 < port < 65536 or parts.username:
            return self._error(request, 400, "a proxy request needs an http://host[:port]/ URL")
        exchange = Exchange(request, method, host, path, header_dict(request.requestHeaders),
                            OTHER_HOSTS, OTHER_HOSTS.rules[0], self.reactor.seconds())
        request.notifyFinish().addErrback(lambda _: setattr(exchange, "gone", True))
        body = request.content.read() if request.content is not None else None
        name = f"[{host}]" if ":" in host else host
        url = f"http://{name}{path}" if port == 80 else f"http://{name}:{port}{path}"
        d = self.flights.relay(method, url, passthrough_request_headers(exchange.headers),
                               body, self.foreign(_client(request)),
                               ecosystem=OTHER_HOSTS.name)
        d.addCallback(self._serve_outcome, exchange)
        d.addErrback(self._bug, exchange)

    def _relay(self, ex: Exchange) -> None:
        body = ex.request.content.read() if ex.request.content is not None else None
        url = ex.upstream.upstream_url(ex.host, ex.path)
        d = self.flights.relay(ex.method, url, passthrough_request_headers(ex.headers), body,
                               ecosystem=ex.upstream.name)
        if invalidates(ex.method, 200):
            d.addCallback(self._invalidate, ex)
        d.addCallback(self._serve_outcome, ex)
        d.addErrback(self._bug, ex)

    def _invalidate(self, outcome: Outcome, ex: Exchange) -> Outcome:
        if isinstance(outcome, Streaming) and invalidates(ex.method, outcome.status):
            self.store.delete_variants(base_key(ex.host, ex.path))
        return outcome

    # -- answering -------------------------------------------------------------------

    def _serve_outcome(self, outcome: Outcome, ex: Exchange) -> None:
        if ex.gone:
            if isinstance(outcome, Streaming) and outcome.label == "PASS":
                outcome.download.finish(Failure(ConnectionAbortedError("client gone")))
            return
        if isinstance(outcome, Stored):
            self._serve_entry(ex, outcome.entry, outcome.label, outcome.warning)
        elif isinstance(outcome, Streaming):
            self._serve_download(ex, outcome)
        elif isinstance(outcome, Retry):
            self._relay(ex) if outcome.bypass else self._lookup(ex)
        else:
            assert isinstance(outcome, Failed)
            self._error(ex.request, outcome.status, outcome.reason, ex)

    def _serve_entry(self, ex: Exchange, entry: Entry, label: str,
                     warning: str | None = None) -> None:
        if ex.rule.digest and entry.key not in self.verified:
            return self._verify_then_serve(ex, entry, label, warning)
        meta = entry.meta
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:  # evicted between lookup and open
            self.store.delete(entry.key)
            return self._lookup(ex)
        ex.key, ex.sha256, ex.size = entry.key, meta.sha256, meta.length
        request = ex.request
        request.setResponseCode(meta.status)
        _replay_headers(request, meta.headers)
        request.setHeader("Age", str(int(meta.freshness.age(self.reactor.seconds()))))
        if warning:
            request.setHeader("Warning", warning)
        self._send_body(ex, fd, meta.length, meta.status, as_dict(meta.headers), label, None)

    def _verify_then_serve(self, ex: Exchange, entry: Entry, label: str,
                           warning: str | None) -> None:
        """Re-hash a digest-named object in a thread before its first serve from disk."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      body_problem, entry)
        d.addCallback(self._verified_entry, ex, entry, label, warning)
        d.addErrback(self._bug, ex)

    def _verified_entry(self, problem: str | None, ex: Exchange, entry: Entry, label: str,
                        warning: str | None) -> None:
        if problem is None:
            self.verified.add(entry.key)
            if not ex.gone:
                self._serve_entry(ex, entry, label, warning)
            return
        log.error("stored body of {url} is damaged ({reason}): dropped, fetching it again",
                  url=entry.meta.url, reason=problem)
        self.flights.events.integrity_failure(ex.upstream.name, "stored")
        self.store.delete(entry.key)
        if not ex.gone:
            self._lookup(ex)

    def _serve_download(self, ex: Exchange, outcome: Streaming) -> None:
        download = outcome.download
        if not download.joinable():  # a full disk dropped bytes it needs: its own fetch
            return self._relay(ex)
        try:
            fd = download.open_reader()
        except AssertionError:  # finished between join and now: look again
            return self._lookup(ex)
        ex.download = download
        request = ex.request
        request.setResponseCode(outcome.status)
        _replay_headers(request, outcome.headers)
        self._send_body(ex, fd, download.length, outcome.status, as_dict(outcome.headers),
                        outcome.label, download)

    def _send_body(self, ex: Exchange, fd: int, length: int | None, status: int,
                   headers: dict[str, str], label: str, download) -> None:  # type: ignore[no-untyped-def]
        request = ex.request
        request.setHeader("X-Cache", label)
        wanted = None
        if status == 200 and ex.method in ("GET", "HEAD"):
            if not_modified(ex.headers, headers):
                os.close(fd)
                request.setResponseCode(http.NOT_MODIFIED)
                for name in ("content-type", "content-encoding"):
                    request.responseHeaders.removeHeader(name)
                request.finish()
                return self._log(ex, 304, label, 0)
            wanted = self._range(ex, length, headers)
        send_file(request, ex.method, fd, length, wanted, download,
                  lambda status, sent, ok: self._log(ex, status, label, sent, ok),
                  ex.host + ex.path)

    def _range(self, ex: Exchange, length: int | None, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        if length is None or "range" not in ex.headers:
            return None
        if not if_range_allows(ex.headers.get("if-range"), headers.get("etag"),
                               headers.get("last-modified")):
            return None
        return parse_range(ex.headers["range"], length)

    def _error(self, request: server.Request, status: int, reason: str,
               ex: Exchange | None = None) -> None:
        body = f"cachegate: {reason}\n".encode()
        request.setResponseCode(status)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        request.setHeader("Content-Length", str(len(body)))
        request.setHeader("Cache-Control", "no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
        if ex is not None:
            self._log(ex, status, "ERROR", 0)
        else:
            self.warn_client("{client} {method} {uri}: {status} {reason}",
                             client=_client(request), method=_printable(request.method),
                             uri=_printable(request.uri), status=status, reason=reason)

    def warn_client(self, format: str, **fields: object) -> None:
        """A ``warn`` line about bad client input, within ``client_errors``' budget."""
        suppressed = self.client_errors.take()
        if suppressed is None:
            return
        if suppressed:
            format += " ({suppressed} more bad requests not logged)"
        log.warn(format, suppressed=suppressed, **fields)

    def _bug(self, failure: Failure, ex: Exchange) -> None:
        log.failure("error serving {host}{path}", failure, host=ex.host, path=ex.path)
        if not ex.gone and not ex.request.startedWriting:
            self._error(ex.request, 500, "internal error", ex)
        elif not ex.gone:
            ex.request.transport.abortConnection()

    def _log(self, ex: Exchange, status: int, label: str, sent: int, complete: bool = True) -> None:
        if ex.hop:  # counted by the worker that relayed it to its client
            return self.access_log.write("hop", ex.method, ex.host + ex.path, status, label,
                                         sent, int((self.reactor.seconds() - ex.started) * 1000),
                                         complete)
        if self.sessions.open:
            self._note(ex, status, label, complete)
        self._record(ex.upstream.name, _client(ex.request), ex.method, ex.host, ex.path, status,
                     label, sent, self.reactor.seconds() - ex.started, complete)

    def _note(self, ex: Exchange, status: int, label: str, complete: bool) -> None:
        """A build record's row: the object served whole, by sha256 (none when the
        client left early or nothing stored was served)."""
        download = ex.download
        if download is not None and complete and not download.finished:
            # The client has every byte; the body's end (and its checks) may come after.
            return download.on_finish(lambda _: self._note(ex, status, label, complete))
        sha256, size = ex.sha256, ex.size
        if download is not None:
            sha256, size = (download.sha256.hexdigest(), download.size) if download.done \
                else ("", 0)
        if not complete:
            sha256 = ""
        self.sessions.note(_client(ex.request), ex.method, _url(ex.request, ex.host, ex.path),
                           ex.key or base_key(ex.host, ex.path), ex.upstream, ex.path, status,
                           label, sha256, size)

    def _record(self, ecosystem: str, client: str, method: str, host: str, path: str,
                status: int, label: str, sent: int, seconds: float,
                complete: bool = True) -> None:
        """Count a response in the stats (and its duration: a fast-path hit is answered
        within one read, counted as 0 s) and write its access-log line."""
        self.stats.record(ecosystem, client, label, sent, seconds)
        self.access_log.write(client, method, host + path, status, label, sent,
                              int(seconds * 1000), complete)


def _replay_headers(request: server.Request, pairs: list[tuple[str, str]]) -> None:
    """The upstream's headers replace twisted.web's defaults (``Date``, ``Server``)."""
    for name in {name.lower() for name, _ in pairs}:
        request.responseHeaders.removeHeader(name)
    for name, value in pairs:
        request.responseHeaders.addRawHeader(name, value)


def _printable(raw: bytes, limit: int = 200) -> str:
    """Client bytes as a log field: escaped (no control characters reach the log) and
    cut short."""
    text = raw[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return text + ("..." if len(raw) > limit else "")


class Multicast:
    """One outcome for every client that asks while it is awaited."""

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.waiters: list[defer.Deferred] = []

    def join(self) -> defer.Deferred:
        if self.outcome is not None:
            return defer.succeed(self.outcome)
        d: defer.Deferred = defer.Deferred()
        self.waiters.append(d)
        return d

    def resolve(self, outcome: Outcome) -> None:
        self.outcome, waiters, self.waiters = outcome, self.waiters, []
        for d in waiters:
            d.callback(outcome)


# What a hop leaves to the asking worker: it serves ranges and 304s from the relayed body.
_ANSWERED_HERE = frozenset({"range", "if-range", "if-none-match", "if-modified-since",
                            "if-match", "if-unmodified-since"})


def _url(request: server.Request, host: str, path: str) -> str:
    return f"{'https' if request.isSecure() else 'http'}://{host}{path}"


def _client(request: server.Request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "?")


def host_of(raw_host: str) -> str | None:
    """The name in a ``Host`` header (lower case, without the port); None when the port
    is not a number (``pypi.org:80@evil``: a confused parser's idea of another host)."""
    name, sep, port = raw_host.rpartition(":") if raw_host.count(":") == 1 else (raw_host, "", "")
    if sep and not (port.isdigit() and port.isascii()):
        return None
    return name.lower()


def request_target(request: server.Request) -> tuple[str, str] | None:
    """(host, path-and-query) from an origin-form request and its Host header, or from
    an absolute-form ``http://`` request (clients with ``http_proxy`` set); None if bad."""
    uri = request.uri.decode("latin-1")
    if uri.startswith(("http://", "HTTP://")):
        parts = urlsplit(uri)
        try:
            host = parts.hostname or ""
        except ValueError:
            return None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _URI.fullmatch(uri):
            return None
    else:
        # Raw bytes: twisted.web's ``getHeader`` decodes as UTF-8 and raises on others.
        raw = request.requestHeaders.getRawHeaders(b"host") or [b""]
        if len(raw) != 1:  # RFC 9112 3.2: several Host fields are a bad request
            return None
        host, path = host_of(raw[0].decode("latin-1")) or "", uri
    host = host.lower().rstrip(".")
    path = normalise_path(path)
    if not _HOST.fullmatch(host) or path is None:
        return None
    return host, path


_URI = re.compile(r"[\x21-\x7e]+")


class GatewayResource(Resource):
    """The twisted.web face of ``Gateway``: every request, whatever its path."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render(self, request: server.Request) -> int:
        request.defaultContentType = None
        try:
            self.gateway.handle(request)
        except Exception:
            log.failure("error handling {uri}", uri=request.uri)
            if not request.startedWriting:
                self.gateway._error(request, 500, "internal error")
        return server.NOT_DONE_YET


class GatewaySite(server.Site):
    """A ``Site`` with the fast path, and without twisted.web's own access log (``Gateway``
    logs each request)."""

    protocol = GatewayChannel

    def __init__(self, resource: GatewayResource, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(resource, **kwargs)
        self.gateway = resource.gateway  # for GatewayChannel's fast path

    def log(self, request: server.Request) -> None:
        pass
