"""The registry mirror endpoint: the read side of the registry API (``/v2/``) as a
pull-through cache for Docker Hub and the other registries of the catalogue.

Manifests and blobs are stored by sha256, byte-exact, in one namespace across repositories
and registries; a body is verified against the digest in its URL while it fills, the last
byte held back until it matches, and committed by rename (``gateway/cache/download.py``).
Each object is fetched once however many clients ask (a flight per digest; the others
follow the growing file).  A tag is a small record pointing at a digest, revalidated after
``tag_ttl`` with an upstream HEAD (Docker Hub does not count HEADs as pulls); an upstream
GET happens only for a digest not stored yet, never for a client's HEAD.  When the
upstream fails (429, 5xx, timeout, offline) a stored tag is served stale; when nothing can
be served the answer is 404, so every daemon falls back to the registry itself.

Upstream, anonymous Bearer tokens are fetched from the realm the registry names and kept
until they expire; redirects (to a CDN) are followed here, never with ``Authorization``.
A client request carrying credentials is relayed uncached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.client import readBody
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource

from gateway.cache.download import Download
from gateway.cache.fetcher import Fetcher, header_dict, header_pairs
from gateway.cache.headers import passthrough_request_headers, replayable
from gateway.cache.policy import freshness
from gateway.cache.ranges import parse_range
from gateway.cache.rules import Digest, Policy, Rule
from gateway.cache.store import Entry, Meta, Store
from gateway.cache.streaming import FileStreamer
from gateway.front.bodies import send_file
from gateway.cache.verify import body_problem
from gateway.ecosystems.images import (MAX_MANIFEST, REGISTRIES, MirrorRequest, NotARead,
                                       Registry, accept_class, accept_header, find_registry,
                                       image_package, object_key, parse_challenge, parse_request,
                                       redirect_target, same_origin, tag_key, token_from,
                                       token_url)

log = Logger()

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
# What stored manifests and blobs are listed and cleared under (``cache ls --ecosystem``);
# the registry and repository that first brought each are in its metadata's ``extra``.
ECOSYSTEM = "images"
BLOB_TYPE = "application/octet-stream"
IMMUTABLE = Rule("", Policy.IMMUTABLE)
# A registry redirects a blob once (to its CDN); more hops than this is a loop.
MAX_REDIRECTS = 5
# An upstream error body passed on to the client (a refusal) is cut to this.
MAX_ERROR_BODY = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
_DIGEST_HEADER = re.compile(r"sha256:[0-9a-f]{64}")
_ERROR_CODES = {"manifests": "MANIFEST_UNKNOWN", "blobs": "BLOB_UNKNOWN"}


class _Discard(Protocol):
    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        pass


def _drain(response) -> None:  # type: ignore[no-untyped-def]
    """Read and drop a body we do not want, so the connection returns to the pool."""
    response.deliverBody(_Discard())


def _header(response, name: str) -> str:  # type: ignore[no-untyped-def]
    values = response.headers.getRawHeaders(name)
    return values[0] if values else ""


def _head_length(response) -> int:  # type: ignore[no-untyped-def]
    """The Content-Length of an answer to a HEAD (its body is empty, its length is not)."""
    value = _header(response, "content-length")
    return int(value) if value.isdigit() else 0


# -- upstream ---------------------------------------------------------------------------

class RegistryClient:
    """Requests to one upstream registry API: tokens, redirects, counters.

    ``credentials`` maps a registry name to the path of a file holding ``user:password``
    for its token realm (read on first use; never logged)."""

    def __init__(self, reactor, fetcher: Fetcher,  # type: ignore[no-untyped-def]
                 credentials: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.fetcher = fetcher
        self.credentials = credentials or {}
        self.tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self.token_requests = Shared()
        # Upstream requests by (registry, method, what): "manifests" GETs are what Docker
        # Hub counts as pulls; "blobs", "token", and "redirect" (the CDN) are free there.
        self.counts: Counter[tuple[str, str, str]] = Counter()

    @defer.inlineCallbacks
    def request(self, registry: Registry, host: str, name: str, method: str, path: str,
                headers: dict[str, str]):  # type: ignore[no-untyped-def]
        """The final response to ``method path`` (a Deferred): authenticated with a pull
        token when the registry asks for one, redirects followed."""
        url = registry.base_url(host) + path
        sent = dict(headers)
        scope = f"repository:{name}:pull"
        token = self._cached_token(registry.name, scope)
        if token:
            sent["authorization"] = f"Bearer {token}"
        response = yield self._follow(registry, url, method, url, sent)
        challenge = parse_challenge(_header(response, "www-authenticate"))
        if response.code == 401 and challenge is not None and challenge.scheme == "bearer":
            # One token request per scope however many requests met the challenge at once.
            token = yield self.token_requests(f"{registry.name}\n{scope}",
                                              lambda: self._new_token(registry, name, challenge))
            if token:
                _drain(response)
                sent["authorization"] = f"Bearer {token}"
                response = yield self._follow(registry, url, method, url, sent)
        return response

    @defer.inlineCallbacks
    def _follow(self, registry: Registry, api: str, method: str, url: str,
                headers: dict[str, str]):  # type: ignore[no-untyped-def]
        for _ in range(MAX_REDIRECTS + 1):
            what = "redirect" if not same_origin(url, api) else \
                "manifests" if "/manifests/" in url else "blobs"
            self.counts[(registry.name, method, what)] += 1
            response = yield self.fetcher.request(method, url, headers)
            location = _header(response, "location")
            if response.code not in _REDIRECTS or not location:
                return response
            target = redirect_target(url, location)
            if target is None:
                return response
            _drain(response)
            if not same_origin(url, target):  # a CDN: the token is not for it
                headers = {k: v for k, v in headers.items() if k != "authorization"}
            if response.code == 303 and method != "HEAD":
                method = "GET"
            url = target
        raise RuntimeError(f"more than {MAX_REDIRECTS} redirects")

    def _cached_token(self, registry: str, scope: str) -> str | None:
        found = self.tokens.get((registry, scope))
        if found is None:
            return None
        token, expiry = found
        if self.reactor.seconds() >= expiry:
            del self.tokens[(registry, scope)]
            return None
        return token

    @defer.inlineCallbacks
    def _new_token(self, registry: Registry, name: str, challenge):  # type: ignore[no-untyped-def]
        url = token_url(challenge, name)
        if url is None:
            return None
        headers = {}
        secret = self._secret(registry)
        if secret:
            headers["authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        self.counts[(registry.name, "GET", "token")] += 1
        try:
            response = yield self.fetcher.request("GET", url, headers)
            body = yield readBody(response)
            answer = json.loads(body) if response.code == 200 else {}
        except Exception as e:  # noqa: BLE001 - unreachable, or not JSON: no token
            log.error("token realm of {registry} failed: {error}", registry=registry.name,
                      error=e)
            return None
        got = token_from(answer if isinstance(answer, dict) else {}, self.reactor.seconds())
        if got is None:
            log.warn("token realm of {registry} answered {status} without a token",
                     registry=registry.name, status=response.code)
            return None
        scope = challenge.params.get("scope") or f"repository:{name}:pull"
        self.tokens[(registry.name, scope)] = got
        self.tokens[(registry.name, f"repository:{name}:pull")] = got
        return got[0]

    def _secret(self, registry: Registry) -> str:
        path = self.credentials.get(registry.name) or registry.credentials_file
        if not path:
            return ""
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            log.error("cannot read the credentials file of {registry}: {error}",
                      registry=registry.name, error=e.strerror)
            return ""


# -- outcomes of a fetch ------------------------------------------------------------------

@dataclass(frozen=True)
class Filling:
    """An object streaming in from upstream (verified against its digest as it fills)."""

    download: Download
    content_type: str


@dataclass(frozen=True)
class Refused:
    """The upstream's answer, passed on (401/403 refusals, 404)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Unavailable:
    """Nothing the upstream said can be served (a 429, a 5xx, no answer)."""

    reason: str


Outcome = Filling | Refused | Unavailable


class Shared:
    """One call per key at a time: later callers get the first call's result."""

    def __init__(self) -> None:
        self.active: dict[str, list[defer.Deferred]] = {}

    def __call__(self, key: str, start: Callable[[], defer.Deferred]) -> defer.Deferred:
        waiters = self.active.get(key)
        d: defer.Deferred = defer.Deferred()
        if waiters is not None:
            waiters.append(d)
            return d
        self.active[key] = [d]

        def fire(result: Any) -> None:
            for waiter in self.active.pop(key, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
        defer.maybeDeferred(start).addBoth(fire)  # a bug in start must not wedge the key
        return d


# -- the mirror ---------------------------------------------------------------------------

@dataclass
class Exchange:
    request: server.Request
    method: str
    target: MirrorRequest
    registry: Registry
    headers: dict[str, str]
    started: float
    gone: bool = False


@dataclass(frozen=True)
class TagRecord:
    digest: str
    media_type: str
    size: int
    checked: float

    def to_json(self) -> str:
        return json.dumps([self.digest, self.media_type, self.size, self.checked])

    @classmethod
    def from_json(cls, raw: str) -> "TagRecord":
        digest, media_type, size, checked = json.loads(raw)
        return cls(digest, media_type, size, checked)


class RegistryMirror:
    """Answers registry API reads from the store, fetching each missing object once."""

    def __init__(self, reactor, store: Store, client: RegistryClient,  # type: ignore[no-untyped-def]
                 registries: tuple[Registry, ...] = REGISTRIES, tag_ttl: float = 60,
                 offline: bool = False, stats=None, access_log=None) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.store = store
        self.client = client
        self.registries = registries
        self.tag_ttl = tag_ttl
        self.offline = offline
        self.stats = stats
        self.access_log = access_log
        self.fills: dict[str, Filling] = {}  # by object key, while the body streams in
        self.tag_checks: Counter[tuple[str, str]] = Counter()  # (registry, outcome)
        self.shared = Shared()  # object fetches and tag checks in progress
        self.verified: set[str] = set()  # object keys re-hashed since this process started
        self.sessions = None  # build records (front/sessions.py), when the gateway has them

    # -- routing --------------------------------------------------------------------

    def handle(self, request: server.Request) -> None:
        method = request.method.decode("latin-1")
        path = request.uri.decode("latin-1")
        request.setHeader(*API_VERSION)
        if path.partition("?")[0] in ("/v2", "/v2/"):
            return self._ping(request, method)
        if method not in ("GET", "HEAD"):
            return _error(request, 405, "UNSUPPORTED", "this mirror is read-only")
        try:
            target = parse_request(path)
        except NotARead as e:
            return _error(request, 404, "NAME_UNKNOWN", str(e))
        registry = find_registry(self.registries, target.host)
        if registry is None:
            return _error(request, 404, "NAME_UNKNOWN",
                          f"{target.host} is not a registry this mirror serves")
        ex = Exchange(request, method, target, registry, header_dict(request.requestHeaders),
                      self.reactor.seconds())
        request.notifyFinish().addErrback(lambda _: setattr(ex, "gone", True))
        if "authorization" in ex.headers or "cookie" in ex.headers:
            return self._relay(ex)
        if target.by_digest:
            return self._object(ex, target.kind, target.reference)
        self._tag(ex)

    def _ping(self, request: server.Request, method: str) -> None:
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Content-Length", "2")
        if method != "HEAD":
            request.write(b"{}")
        request.finish()

    # -- objects by digest ------------------------------------------------------------

    def _object(self, ex: Exchange, kind: str, digest: str, label: str = "HIT",
                record: TagRecord | None = None) -> None:
        key = object_key(kind, digest)  # type: ignore[arg-type]
        entry = self.store.get(key)
        if entry is not None:
            return self._serve_entry(ex, entry, label)
        filling = self.fills.get(key)
        if filling is not None and filling.download.joinable():
            return self._serve_filling(ex, filling, "HIT")  # joins the download
        if ex.method == "HEAD" and record is not None and record.digest == digest:
            return self._serve_head(ex, digest, record.media_type, record.size, label)
        if self.offline:
            return self._not_found(ex, "offline and not in the cache")
        if ex.method == "HEAD":  # never an upstream GET for a client's HEAD
            return self._upstream_head(ex, kind, digest)
        first = key not in self.shared.active
        d = self.shared(key, lambda: self._fetch(ex, kind, digest, key))
        d.addCallback(self._serve_outcome, ex, "MISS" if first else "HIT")
        d.addErrback(self._bug, ex)

    def _fetch(self, ex: Exchange, kind: str, digest: str, key: str) -> defer.Deferred:
        """GET one object upstream; a 200 becomes a ``Filling`` committed once verified."""
        t = ex.target
        headers = {"accept": accept_header(accept_class(ex.headers.get("accept")))} \
            if kind == "manifests" else {}
        path = f"/v2/{t.name}/{kind}/{digest}"
        d = self.client.request(ex.registry, t.host, t.name, "GET", path, headers)
        d.addCallback(self._fetched, ex, kind, digest, key)
        d.addErrback(lambda f: Unavailable(f.getErrorMessage()))
        return d

    def _fetched(self, response, ex: Exchange, kind: str, digest: str,  # type: ignore[no-untyped-def]
                 key: str) -> defer.Deferred | Outcome:
        if response.code != 200:
            return self._not_ok(response, ex)
        length = None if response.length is UNKNOWN_LENGTH else response.length
        if kind == "manifests" and (length or 0) > MAX_MANIFEST:
            _drain(response)
            return Unavailable(f"manifest of {length} bytes is too large")
        content_type = _header(response, "content-type") if kind == "manifests" else BLOB_TYPE
        download = Download(self.store.new_partial(), length, Digest("sha256", digest[7:]))
        filling = Filling(download, content_type or BLOB_TYPE)
        self.fills[key] = filling
        started = self.reactor.seconds()
        download.on_finish(lambda dl: self._commit(dl, key, filling, ex, started))
        # The body flows once the clients are attached (it may be buffered already).
        self.reactor.callLater(0, self.client.fetcher.deliver, response, download)
        return filling

    def _commit(self, download: Download, key: str, filling: Filling, ex: Exchange,
                started: float) -> None:
        self.fills.pop(key, None)
        if download.error is not None:
            log.error("download of {key} from {registry} failed: {error}", key=key,
                      registry=ex.registry.name, error=download.error.getErrorMessage())
            return
        if not download.storable:
            return
        meta = self._meta(ex, key, filling.content_type, download.size,
                          download.sha256.hexdigest(), started)
        try:
            self.store.commit(key, meta, download.path)
        except Exception:  # a full disk must not take the download down
            log.failure("cannot store {key}", key=key)

    def _meta(self, ex: Exchange, key: str, content_type: str, length: int, hex_digest: str,
              started: float) -> Meta:
        """What is stored with an object.  Its ``url`` names the repository it was first
        pulled from (``cache ls --prefix docker.io/library/debian``); its key is the digest
        alone, shared by every repository and registry."""
        kind = key.split("/")[1]
        digest = "sha256:" + hex_digest
        return Meta(f"{ex.target.host}/{ex.target.name}/{kind}/{digest}", ECOSYSTEM, 200,
                    [("Content-Type", content_type), ("Docker-Content-Digest", digest)],
                    freshness(IMMUTABLE, 200, {}, started, self.reactor.seconds(), 0),
                    length, hex_digest,
                    {"registry": ex.registry.name, "repository": ex.target.name})

    def _not_ok(self, response, ex: Exchange) -> defer.Deferred | Outcome:  # type: ignore[no-untyped-def]
        status = response.code
        if status in (401, 403, 404):
            pairs = [(n, v) for n, v in replayable(header_pairs(response.headers))
                     if n.lower() in ("content-type", "www-authenticate")]
            d = readBody(response)
            d.addCallback(lambda body: Refused(status, pairs, body[:MAX_ERROR_BODY]))
            d.addErrback(lambda _: Refused(status, pairs, b""))
            return d
        _drain(response)
        log.error("{registry} answered {status} for {path}", registry=ex.registry.name,
                  status=status, path=ex.target.path)
        return Unavailable(f"upstream answered {status}")

    def _upstream_head(self, ex: Exchange, kind: str, digest: str) -> None:
        t = ex.target
        headers = {"accept": accept_header(accept_class(ex.headers.get("accept")))} \
            if kind == "manifests" else {}
        d = self.client.request(ex.registry, t.host, t.name, "HEAD",
                                f"/v2/{t.name}/{kind}/{digest}", headers)

        def answered(response) -> None:  # type: ignore[no-untyped-def]
            _drain(response)
            if response.code != 200:
                return self._serve_outcome(Refused(response.code, [], b"")
                                           if response.code in (401, 403, 404)
                                           else Unavailable(f"upstream answered {response.code}"),
                                           ex)
            size = _head_length(response)
            content_type = _header(response, "content-type") if kind == "manifests" \
                else BLOB_TYPE
            self._serve_head(ex, digest, content_type or BLOB_TYPE, size, "MISS")
        d.addCallbacks(answered, lambda f: self._serve_outcome(
            Unavailable(f.getErrorMessage()), ex))
        d.addErrback(self._bug, ex)

    # -- tags -------------------------------------------------------------------------

    def _tag(self, ex: Exchange) -> None:
        t = ex.target
        klass = accept_class(ex.headers.get("accept"))
        key = tag_key(ex.registry.name, t.name, t.reference, klass)
        record = self._record(key)
        now = self.reactor.seconds()
        if record is not None and (self.offline or now - record.checked < self.tag_ttl):
            return self._object(ex, "manifests", record.digest, "HIT", record)
        if self.offline:
            return self._not_found(ex, "offline and not in the cache")
        d = self.shared(key, lambda: self._check_tag(ex, klass, key, record))
        d.addCallback(self._tag_checked, ex, record)
        d.addErrback(self._bug, ex)

    def _record(self, key: str) -> TagRecord | None:
        raw = self.store.cache.get(key)
        try:
            return TagRecord.from_json(raw) if isinstance(raw, str) else None
        except (ValueError, TypeError):
            return None

    def _check_tag(self, ex: Exchange, klass: str, key: str,
                   record: TagRecord | None) -> defer.Deferred:
        """An upstream HEAD of the tag (free on Docker Hub): the digest it points at now."""
        t = ex.target
        d = self.client.request(ex.registry, t.host, t.name, "HEAD", t.path,
                                {"accept": accept_header(klass)})

        def answered(response):  # type: ignore[no-untyped-def]
            _drain(response)
            digest = _header(response, "docker-content-digest")
            if response.code == 200 and _DIGEST_HEADER.fullmatch(digest):
                size = _head_length(response)
                fresh = TagRecord(digest, _header(response, "content-type"), size,
                                  self.reactor.seconds())
                self.store.cache.set(key, fresh.to_json())
                return fresh
            if response.code == 200:  # a registry that names no digest: GET it and hash
                return self._tag_by_get(ex, klass, key)
            if response.code == 404:
                self.store.cache.delete(key)
                return Refused(404, [], b"")
            if response.code in (401, 403):
                return Refused(response.code, [], b"")
            return Unavailable(f"upstream answered {response.code} to a HEAD of the tag")
        d.addCallback(answered)
        d.addErrback(lambda f: Unavailable(f.getErrorMessage()))
        return d

    def _tag_by_get(self, ex: Exchange, klass: str, key: str) -> defer.Deferred:
        """The tag's manifest by GET (a registry whose HEAD carries no digest): hashed,
        stored under its digest, recorded."""
        t = ex.target
        d = self.client.request(ex.registry, t.host, t.name, "GET", t.path,
                                {"accept": accept_header(klass)})

        def answered(response):  # type: ignore[no-untyped-def]
            if response.code != 200:
                return self._not_ok(response, ex)
            if response.length is not UNKNOWN_LENGTH and response.length > MAX_MANIFEST:
                _drain(response)
                return Unavailable("manifest too large")
            content_type = _header(response, "content-type")
            return readBody(response).addCallback(self._store_manifest, ex, key, content_type)
        d.addCallback(answered)
        d.addErrback(lambda f: Unavailable(f.getErrorMessage()))
        return d

    def _store_manifest(self, body: bytes, ex: Exchange, key: str,
                        content_type: str) -> TagRecord | Outcome:
        hex_digest = hashlib.sha256(body).hexdigest()
        digest = "sha256:" + hex_digest
        partial = self.store.new_partial()
        with open(partial, "wb") as f:
            f.write(body)
        now = self.reactor.seconds()
        object_at = object_key("manifests", digest)
        meta = self._meta(ex, object_at, content_type, len(body), hex_digest, now)
        try:
            self.store.commit(object_at, meta, partial)
        except Exception:  # a full disk: the answer is still good
            log.failure("cannot store {key}", key=object_at)
            os.unlink(partial)
        record = TagRecord(digest, content_type, len(body), now)
        self.store.cache.set(key, record.to_json())
        return record

    def _tag_checked(self, result: TagRecord | Outcome, ex: Exchange,
                     record: TagRecord | None) -> None:
        outcome = ("same" if record is not None and record.digest == result.digest else "new") \
            if isinstance(result, TagRecord) else type(result).__name__.lower()
        self.tag_checks[(ex.registry.name, outcome)] += 1
        if ex.gone:
            return
        if isinstance(result, TagRecord):
            label = "REVALIDATED" if outcome == "same" else "MISS"
            return self._object(ex, "manifests", result.digest, label, result)
        if isinstance(result, Unavailable) and record is not None:
            log.warn("{registry} {name}:{tag}: {reason}; serving the stored {digest}",
                     registry=ex.registry.name, name=ex.target.name, tag=ex.target.reference,
                     reason=result.reason, digest=record.digest)
            if ex.method == "HEAD" or self.store.get(object_key("manifests", record.digest)):
                return self._object(ex, "manifests", record.digest, "STALE", record)
        self._serve_outcome(result, ex)

    # -- answering --------------------------------------------------------------------

    def _serve_outcome(self, outcome: Outcome, ex: Exchange, label: str = "MISS") -> None:
        if ex.gone:
            return
        if isinstance(outcome, Filling):
            return self._serve_filling(ex, outcome, label)
        if isinstance(outcome, Refused) and outcome.status in (401, 403):
            return self._refuse(ex, outcome)
        reason = outcome.reason if isinstance(outcome, Unavailable) else "not found upstream"
        self._not_found(ex, reason)

    def _serve_filling(self, ex: Exchange, filling: Filling, label: str) -> None:
        download = filling.download
        try:
            fd = download.open_reader()
        except AssertionError:  # finished between the flight and now: look again
            return self._object(ex, ex.target.kind, self._digest_of(ex, filling))
        self._send(ex, fd, download.length, filling.content_type,
                   "sha256:" + download.expected.hex if download.expected else "",
                   label, download)

    def _digest_of(self, ex: Exchange, filling: Filling) -> str:
        assert filling.download.expected is not None
        return "sha256:" + filling.download.expected.hex

    def _serve_entry(self, ex: Exchange, entry: Entry, label: str) -> None:
        if ex.method == "GET" and entry.key not in self.verified:
            return self._verify_then_serve(ex, entry, label)
        if label == "STALE":
            ex.request.setHeader("Warning", '110 - "Response is Stale"')
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:  # evicted between lookup and open
            self.store.delete(entry.key)
            return self._object(ex, ex.target.kind, entry.key.rpartition("/")[2])
        self._send(ex, fd, entry.meta.length, entry.meta.header("content-type") or BLOB_TYPE,
                   "sha256:" + entry.meta.sha256, label, None)

    def _verify_then_serve(self, ex: Exchange, entry: Entry, label: str) -> None:
        """Re-hash a stored object (in a thread) the first time this process serves it:
        bytes damaged on disk are caught once per object per process, not per pull."""
        def check() -> str | None:
            if entry.key.rpartition(":")[2] != entry.meta.sha256:
                return "stored under another digest"
            return body_problem(entry)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), check)

        def checked(problem: str | None) -> None:
            if problem is None:
                self.verified.add(entry.key)
                if not ex.gone:
                    self._serve_entry(ex, entry, label)
                return
            log.error("stored {key} is damaged ({reason}): dropped, fetching it again",
                      key=entry.key, reason=problem)
            self.store.delete(entry.key)
            if not ex.gone:
                self._object(ex, ex.target.kind, "sha256:" + entry.key.rpartition(":")[2])
        d.addCallback(checked)
        d.addErrback(self._bug, ex)

    def _serve_head(self, ex: Exchange, digest: str, content_type: str, size: int,
                    label: str) -> None:
        request = ex.request
        ex.served = (digest, size)  # for build records
        self._describe(request, content_type, digest)
        request.setHeader("Content-Length", str(size))
        request.setHeader("X-Cache", label)
        request.finish()
        self._log(ex, 200, label, 0)

    def _describe(self, request: server.Request, content_type: str, digest: str) -> None:
        request.setHeader("Content-Type", content_type)
        request.setHeader("Docker-Content-Digest", digest)
        request.setHeader("ETag", f'"{digest}"')

    def _send(self, ex: Exchange, fd: int, length: int | None, content_type: str, digest: str,
              label: str, download: Download | None) -> None:
        request = ex.request
        ex.served = (digest, length)  # for build records
        self._describe(request, content_type, digest)
        request.setHeader("X-Cache", label)
        wanted = parse_range(ex.headers["range"], length) \
            if length is not None and "range" in ex.headers else None
        send_file(request, ex.method, fd, length, wanted, download,
                  lambda status, sent, ok: self._log(ex, status, label, sent, ok),
                  ex.target.path)

    def _refuse(self, ex: Exchange, refused: Refused) -> None:
        request = ex.request
        request.setResponseCode(refused.status)
        for name, value in refused.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader("Content-Length", str(len(refused.body)))
        if ex.method != "HEAD":
            request.write(refused.body)
        request.finish()
        self._log(ex, refused.status, "PASS", len(refused.body))

    def _not_found(self, ex: Exchange, reason: str) -> None:
        """404, never 502: every daemon then goes to the registry itself."""
        _error(ex.request, 404, _ERROR_CODES[ex.target.kind], reason)
        self._log(ex, 404, "ERROR", 0)

    # -- credentials: relayed, never stored -------------------------------------------------

    def _relay(self, ex: Exchange) -> None:
        t = ex.target
        url = ex.registry.base_url(t.host) + t.path
        headers = passthrough_request_headers(ex.headers)
        d = self.client.fetcher.request(ex.method, url, headers)

        def answered(response) -> None:  # type: ignore[no-untyped-def]
            if ex.gone:
                return _drain(response)
            length = None if response.length is UNKNOWN_LENGTH else response.length
            download = Download(self.store.new_partial(), length)
            request = ex.request
            request.setResponseCode(response.code)
            for name, value in replayable(header_pairs(response.headers)):
                request.responseHeaders.addRawHeader(name, value)
            request.setHeader("X-Cache", "PASS")
            if length is not None:
                request.setHeader("Content-Length", str(length))
            fd = download.open_reader()
            self.client.fetcher.deliver(response, download)
            if ex.method == "HEAD":
                os.close(fd)
                request.finish()
                return self._log(ex, response.code, "PASS", 0)
            FileStreamer(request, fd, 0, None, download,
                         lambda sent, ok: self._log(ex, response.code, "PASS", sent, ok)).start()
        d.addCallbacks(answered, lambda f: self._not_found(ex, f.getErrorMessage()))
        d.addErrback(self._bug, ex)

    def summary(self) -> dict[str, Any]:
        """Per registry: upstream requests (``manifests`` GETs are Docker Hub's pulls) and
        tag revalidations by outcome (same digest, new digest, refused, unavailable)."""
        out: dict[str, Any] = {}
        for (registry, method, what), n in sorted(self.client.counts.items()):
            out.setdefault(registry, {"upstream": {}, "tag_checks": {}})["upstream"][
                f"{method} {what}"] = n
        for (registry, outcome), n in sorted(self.tag_checks.items()):
            out.setdefault(registry, {"upstream": {}, "tag_checks": {}})["tag_checks"][
                outcome] = n
        for entry in out.values():
            entry["pulls"] = entry["upstream"].get("GET manifests", 0)
        return {"filling": len(self.fills), "registries": out}

    # -- bookkeeping --------------------------------------------------------------------

    def _bug(self, failure: Failure, ex: Exchange) -> None:
        log.failure("error serving {path}", failure, path=ex.target.path)
        if not ex.gone and not ex.request.startedWriting:
            _error(ex.request, 500, "UNKNOWN", "internal error")
        elif not ex.gone:
            ex.request.transport.abortConnection()

    def _log(self, ex: Exchange, status: int, label: str, sent: int,
             complete: bool = True) -> None:
        client = getattr(ex.request.getClientAddress(), "host", "?")
        seconds = self.reactor.seconds() - ex.started
        if self.stats is not None:
            self.stats.record(ex.registry.name, client, label, sent, seconds)
        ms = int(seconds * 1000)
        url = f"{ex.target.host}{ex.target.path}"
        if self.sessions is not None and self.sessions.open:
            digest, length = getattr(ex, "served", ("", 0))
            self.sessions.note_package(
                client, ex.method, f"https://{url}", url, ex.registry.name,
                image_package(ex.target, digest), status, label,
                digest[len("sha256:"):] if complete and digest else "", length or 0)
        if self.access_log is not None:
            self.access_log.write(client, ex.method, url, status, label, sent, ms, complete)
        else:
            log.info("{client} {method} {url} {status} {label} {sent}B {ms}ms",
                     client=client, method=ex.method, url=url, status=status, label=label,
                     sent=sent, ms=ms)


def _error(request: server.Request, status: int, code: str, message: str) -> None:
    """A registry-style JSON error."""
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Content-Length", str(len(body)))
    request.setHeader("Cache-Control", "no-store")
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class MirrorResource(Resource):
    """The twisted.web face of ``RegistryMirror``: every request, whatever its path."""

    isLeaf = True

    def __init__(self, mirror: RegistryMirror) -> None:
        super().__init__()
        self.mirror = mirror

    def render(self, request: server.Request) -> int:
        request.defaultContentType = None
        try:
            self.mirror.handle(request)
        except Exception:
            log.failure("error handling {uri}", uri=request.uri)
            if not request.startedWriting:
                _error(request, 500, "UNKNOWN", "internal error")
        return server.NOT_DONE_YET


class MirrorChannel(http.HTTPChannel):
    """HTTP, but a TLS ClientHello as the first bytes closes the connection at once:
    clients told the mirror is ``insecure`` (podman, skopeo) try https first and would
    otherwise wait 10 s for a handshake timeout before falling back to http."""

    _first = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._first:
            self._first = False
            if data[:1] == b"\x16":
                self.transport.abortConnection()
                return
        super().dataReceived(data)


class MirrorSite(server.Site):
    """The mirror's ``Site``, without twisted.web's access log (the mirror logs)."""

    protocol = MirrorChannel

    def log(self, request: server.Request) -> None:
        pass
