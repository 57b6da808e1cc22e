"""The test origin: the fixture tree over real HTTP, the only fake in cachegate's tests.

``Origin(root, reactor)`` serves the files below ``root`` as a static upstream does
(``Content-Length``, a strong ``ETag`` from the content's sha256, ``Last-Modified`` from
the file's mtime, 304 on ``If-None-Match``/``If-Modified-Since``, ``HEAD``, one ``Range``),
records every request, and misbehaves per path on demand (``behave``): slow bodies,
bodies cut after N bytes, lying lengths, late headers, any status, extra headers.

A directory holding ``index.*`` files (``VARIANTS``) is one URL with several
representations chosen by ``Accept``, answered with ``Vary: Accept``: PyPI's HTML/JSON
simple pages, npm's full/abbreviated packuments.  Those text documents are sent gzipped
(``Vary: Accept, Accept-Encoding``) to clients that accept it, as pypi.org and the npm
registry do.

Absolute-form requests for the real hosts (``GET http://deb.debian.org/debian/...``) are
answered from the matching ecosystem's tree (``PROXY_HOSTS``) and recorded under that
path, so a client configured with the origin as its HTTP proxy works as it would behind
cachegate; the recipes in fixtures.py are checked that way.

Standalone, for benchmarks and tests of a cachegate in another process::

    python -m tests.origin --root DIR [--port N] [--build-fixtures]

prints the port on stdout once it listens; ``GET /__origin__/requests`` returns the
recorded requests as JSON, ``POST /__origin__/reset`` forgets them, ``POST
/__origin__/behave`` takes ``{"path": ..., <behave() keyword>: ...}`` (``body`` as text)
and ``POST /__origin__/down`` takes ``{"down": true|false}``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

# The representations a directory URL may hold: file name -> media type.  Order is the
# preference when the client accepts several equally (the first present is the default,
# as pypi.org answers ``*/*`` with HTML).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("index.html", "text/html"),
    ("index.pypi.json", "application/vnd.pypi.simple.v1+json"),
    ("index.json", "application/json"),
    ("index.corgi.json", "application/vnd.npm.install-v1+json"),
)

CONTENT_TYPES: tuple[tuple[str, str], ...] = (  # by name suffix, first match wins
    (".deb", "application/vnd.debian.binary-package"),
    (".gz", "application/x-gzip"),
    (".tgz", "application/octet-stream"),
    (".xz", "application/x-xz"),
    (".gpg", "application/pgp-signature"),
    (".whl", "binary/octet-stream"),
    (".metadata", "binary/octet-stream"),
    (".jar", "application/java-archive"),
    (".pom", "text/xml"),
    (".xml", "text/xml"),
    (".sha1", "text/plain"),
    (".md5", "text/plain"),
    (".info", "application/json"),
    (".mod", "text/plain; charset=utf-8"),
    (".zip", "application/zip"),
    (".crate", "application/gzip"),
    ("/download", "application/gzip"),
    (".gem", "application/octet-stream"),
    ("/versions", "text/plain; charset=utf-8"),
    ("/json", "application/json"),
    ("/Release", "text/plain"),
    ("/InRelease", "text/plain"),
    ("/Packages", "text/plain"),
)
CONTROL = "/__origin__/"
MD5_ETAGS = ("/rubygems/versions", "/rubygems/info/", "/rubygems/names")  # see md5_etag
# Absolute-form requests (``GET http://host/path``, as sent to an HTTP proxy) for these
# real hosts are answered from ``/<ecosystem>/path``: the origin then stands in for the
# internet behind a proxy, which is how the client recipes' ``proxy=`` variants are
# checked without a gateway.
PROXY_HOSTS = {
    "deb.debian.org": "debian", "dl-cdn.alpinelinux.org": "alpine", "pypi.org": "pypi",
    "files.pythonhosted.org": "pypi", "registry.npmjs.org": "npm", "repo1.maven.org": "maven",
    "repo.maven.apache.org": "maven", "proxy.golang.org": "go", "index.crates.io": "crates",
    "static.crates.io": "crates", "rubygems.org": "rubygems", "index.rubygems.org": "rubygems",
}
_CHUNK = 256 * 1024  # per write when unthrottled
_TICK = 0.05  # seconds between writes when throttled


@dataclass
class Behaviour:
    """How the origin answers one path (see ``Origin.behave``)."""

    status: int | None = None
    slow_bytes_per_s: int | None = None
    fail_after: int | None = None
    lie_length: int | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    delay_headers: float = 0.0
    body: bytes | None = None
    times: int | None = None


class Recorded(NamedTuple):
    method: str
    path: str  # as sent (percent-encoding, query kept); absolute-form as /<ecosystem>/path
    headers: dict[str, str]  # lower-case names


@dataclass
class Representation:
    """What a request resolved to: a file (or bytes) and its metadata."""

    size: int
    etag: str
    mtime: float
    content_type: str
    file: Path | None = None
    data: bytes | None = None
    vary: str | None = None
    encoding: str | None = None

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.file, "rb")


# --- pure helpers -------------------------------------------------------------------

def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """``[(media range, q)]`` of an Accept header; a missing header accepts everything."""
    if not header:
        return [("*/*", 1.0)]
    ranges = []
    for part in header.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media.lower(), q))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, float]]) -> float:
    """q of the most specific range matching ``media_type``."""
    kind = media_type.split("/")[0] + "/*"
    for candidate in (media_type, kind, "*/*"):
        for media, q in ranges:
            if media == candidate:
                return q
    return 0.0


def choose_variant(accept: str | None, available: list[tuple[str, str]]) -> str | None:
    """The file name of the best representation for ``accept``, or None (406)."""
    ranges = parse_accept(accept)
    best, best_q = None, 0.0
    for name, media_type in available:
        q = _quality(media_type, ranges)
        if q > best_q:
            best, best_q = name, q
    return best


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) of a single ``bytes=`` range, ``"unsatisfiable"``, or None to send
    the whole body (no header, bad syntax, or several ranges: a 200 is allowed then)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()):
        return None
    if not first.isdigit():  # suffix range: the last N bytes
        if not last.isdigit() or int(last) == 0:
            return "unsatisfiable"
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = int(last) if last.isdigit() else size - 1
    if last.isdigit() and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2), as If-None-Match requires."""
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def not_modified(headers: dict[str, str], etag: str, mtime: float) -> bool:
    """Whether a GET/HEAD with these request headers gets a 304."""
    if "if-none-match" in headers:
        return _etag_matches(headers["if-none-match"], etag)
    since = headers.get("if-modified-since")
    if since:
        try:
            return int(mtime) <= http.stringToDatetime(since.encode())
        except ValueError:
            return False
    return False


def range_allowed(headers: dict[str, str], etag: str, last_modified: str) -> bool:
    """``If-Range``: the range applies only if the validator is still current."""
    if_range = headers.get("if-range")
    return if_range is None or if_range.strip() in (etag, last_modified)


def content_type_of(path: str) -> str:
    for suffix, media_type in CONTENT_TYPES:
        if path.endswith(suffix):
            return media_type
    return "application/octet-stream"


# --- the server ---------------------------------------------------------------------

class Origin:
    """The fixture tree below ``root`` over HTTP, recording and misbehaving on demand."""

    def __init__(self, root: Path, reactor) -> None:  # type: ignore[no-untyped-def]
        self.root = Path(root)
        self.reactor = reactor
        self.requests: list[Recorded] = []
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most at once since the last reset
        self.down = False  # True: every request gets a 500, as an upstream in trouble
        self.gzip_indexes = True  # gzip negotiated documents for gzip-accepting clients
        self.port: int | None = None
        self.interface = "127.0.0.1"
        self._behaviours: dict[str, Behaviour] = {}
        self._etags: dict[tuple, str] = {}
        self._listening = None
        self.site = OriginSite(OriginResource(self))

    # -- lifecycle --

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        self.interface = interface
        self._listening = self.reactor.listenTCP(port, self.site, interface=interface)
        self.port = self._listening.getHost().port
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.interface}:{self.port}"

    def stop_serving(self) -> defer.Deferred:
        """Stop listening (new connections are refused) and drop open connections."""
        listening, self._listening = self._listening, None
        stopped = defer.maybeDeferred(listening.stopListening) if listening else defer.succeed(None)
        self.site.abort_all()
        return stopped

    def resume(self) -> int:
        """Listen again on the same port."""
        if self._listening is None:
            self.listen(self.port or 0, self.interface)
        return self.port  # type: ignore[return-value]

    stop = stop_serving

    # -- behaviour --

    def behave(self, path: str, **how) -> None:  # type: ignore[no-untyped-def]
        """How to answer ``path`` (the origin's own path, percent-decoded, no query; a
        trailing ``*`` matches every path starting with the rest).  Keywords:

        - ``status=N``: answer N (with ``body`` or a short text); 304 sends the file's
          validators and no body; 200 (or none) serves the file normally.
        - ``body=b"..."``: serve these bytes instead of the file (validators from them).
        - ``headers={name: value}``: add or replace response headers (None removes one).
        - ``slow_bytes_per_s=N``: send the body at N bytes/s.
        - ``fail_after=N``: send the headers with the full Content-Length, then N bytes of
          body, then close the connection.
        - ``lie_length=N``: announce Content-Length N, send the real body, then close.
        - ``delay_headers=s``: wait s seconds before answering at all.
        - ``times=N``: behave so for the next N requests only, then serve normally.

        ``behave(path)`` with no keyword restores normal service for ``path``."""
        if not how:
            self._behaviours.pop(path, None)
            return
        self._behaviours[path] = Behaviour(**how)

    def clear_behaviours(self) -> None:
        self._behaviours.clear()

    def _behaviour_for(self, path: str) -> Behaviour:
        key = path if path in self._behaviours else next(
            (k for k in self._behaviours if k.endswith("*") and path.startswith(k[:-1])), None)
        if key is None:
            return Behaviour()
        behaviour = self._behaviours[key]
        if behaviour.times is not None:
            behaviour.times -= 1
            if behaviour.times <= 0:
                del self._behaviours[key]
        return behaviour

    # -- the request log --

    def count(self, path: str, method: str | None = None) -> int:
        """Requests for ``path``: with a ``?`` the whole target must match, else the path
        as sent or percent-decoded (so ``/npm/@s/p`` counts ``/npm/@s%2fp`` too)."""
        def matches(r: Recorded) -> bool:
            if "?" in path:
                return r.path == path
            sent = r.path.partition("?")[0]
            return path in (sent, unquote(sent))
        return sum(1 for r in self.requests if matches(r) and method in (None, r.method))

    def reset(self) -> None:
        """Forget the recorded requests (behaviours stay: see ``clear_behaviours``)."""
        self.requests.clear()
        self.max_in_flight = self.in_flight

    def _count_in_flight(self, request: server.Request) -> None:
        """Concurrency as the origin sees it: from a request's arrival to its end."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def ended(_):  # type: ignore[no-untyped-def]
            self.in_flight -= 1
        request.notifyFinish().addBoth(ended)

    # -- resolving paths --

    def resolve(self, path: str, headers: dict[str, str]) -> Representation | int:
        """The representation of the decoded ``path`` for these request headers, or
        404/406."""
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return 404
        target = self.root.joinpath(*parts)
        if target.is_file():
            return self._file(target, content_type_of(path), md5_etag(path))
        if not target.is_dir():
            return 404
        available = [(n, t) for n, t in VARIANTS if (target / n).is_file()]
        if not available:
            return 404
        chosen = choose_variant(headers.get("accept"), available)
        if chosen is None:
            return 406
        rep = self._file(target / chosen, dict(available)[chosen])
        rep.vary = "Accept" if len(available) > 1 else None
        if self.gzip_indexes:
            rep = _maybe_gzip(rep, headers.get("accept-encoding"))
        return rep

    def _file(self, file: Path, content_type: str, md5: bool = False) -> Representation:
        st = file.stat()
        key = (str(file), st.st_size, st.st_mtime_ns)
        if key not in self._etags:
            digest = hashlib.md5(file.read_bytes()).hexdigest() if md5 else _file_sha256(file)
            self._etags[key] = '"%s"' % digest[:32]
        return Representation(st.st_size, self._etags[key], st.st_mtime, content_type, file=file)


def md5_etag(path: str) -> bool:
    """Whether ``path``'s ETag is its body's MD5, as rubygems.org's compact index files
    have it: Bundler checks a download against it and falls back to the full index on a
    mismatch."""
    return path.startswith(MD5_ETAGS)


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip (an explicit entry beats ``*``)."""
    codings = dict(parse_accept(accept_encoding)) if accept_encoding else {}
    q = codings.get("gzip", codings.get("x-gzip", codings.get("*", 0.0)))
    return q > 0


def _maybe_gzip(rep: Representation, accept_encoding: str | None) -> Representation:
    """The gzip-encoded representation (its own strong ETag) when the client takes it."""
    vary = ", ".join(filter(None, [rep.vary, "Accept-Encoding"]))
    if not accepts_gzip(accept_encoding):
        rep.vary = vary
        return rep
    data = gzip.compress(rep.file.read_bytes(), mtime=0)  # type: ignore[union-attr]
    return Representation(len(data), rep.etag[:-1] + '-gzip"', rep.mtime, rep.content_type,
                          data=data, vary=vary, encoding="gzip")


def _from_bytes(data: bytes, path: str, mtime: float) -> Representation:
    etag = '"%s"' % hashlib.sha256(data).hexdigest()[:32]
    return Representation(len(data), etag, mtime, content_type_of(path), data=data)


def _headers_of(request: server.Request) -> dict[str, str]:
    return {k.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for k, values in request.requestHeaders.getAllRawHeaders()}


class OriginResource(Resource):
    isLeaf = True

    def __init__(self, origin: Origin) -> None:
        super().__init__()
        self.origin = origin

    def render(self, request: server.Request) -> int | bytes:
        target = _origin_form(request.uri.decode("latin-1"))
        path = unquote(target.partition("?")[0])
        if path.startswith(CONTROL):
            return _control(self.origin, request, path[len(CONTROL):])
        headers = _headers_of(request)
        method = request.method.decode("latin-1")
        self.origin.requests.append(Recorded(method, target, headers))
        self.origin._count_in_flight(request)
        behaviour = self.origin._behaviour_for(path)
        if behaviour.delay_headers:
            call = self.origin.reactor.callLater(
                behaviour.delay_headers, _answer, self.origin, request, path, headers, behaviour)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        else:
            _answer(self.origin, request, path, headers, behaviour)
        return server.NOT_DONE_YET


class ByHost(Resource):
    """The origin's tree for origin-form requests of TLS clients: ``Host: pypi.org`` reads
    under ``/pypi`` (the plain origin sees ``/pypi/...`` from the gateway)."""

    isLeaf = True

    def __init__(self, inner: OriginResource) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request):  # type: ignore[no-untyped-def]
        host = (request.getHeader("host") or "").split(":")[0].lower()
        request.uri = f"/{PROXY_HOSTS.get(host, '__unknown_host__')}".encode() + request.uri
        return self.inner.render(request)


def _origin_form(target: str) -> str:
    """``/<ecosystem>/path`` for an absolute-form target naming a PROXY_HOSTS host."""
    if not target.startswith("http://"):
        return target
    host, _, rest = target[len("http://"):].partition("/")
    ecosystem = PROXY_HOSTS.get(host.split(":")[0].lower())
    return f"/{ecosystem}/{rest}" if ecosystem else "/__unknown_host__/" + rest


def _answer(origin: Origin, request: server.Request, path: str, headers: dict[str, str],
            behaviour: Behaviour) -> None:
    """Decide the response (status, headers, which bytes) and start sending it."""
    if request._disconnected or request.finished:
        return
    if origin.down:
        return _send_text(origin, request, 500, b"origin: down\n", behaviour)
    if behaviour.status not in (None, 200, 304):  # any method: a test may answer a POST
        text = behaviour.body if behaviour.body is not None else \
            b"origin: behaving as %d\n" % behaviour.status
        return _send_text(origin, request, behaviour.status, text, behaviour)
    if request.method not in (b"GET", b"HEAD"):
        return _send_text(origin, request, 405, b"origin: GET and HEAD only\n", behaviour)
    rep = origin.resolve(path, headers)
    if behaviour.body is not None:
        mtime = rep.mtime if isinstance(rep, Representation) else origin.reactor.seconds()
        rep = _from_bytes(behaviour.body, path, mtime)
    if isinstance(rep, int):
        return _send_text(origin, request, rep, b"origin: %d\n" % rep, behaviour)
    _send_representation(origin, request, rep, headers, behaviour)


def _send_representation(origin: Origin, request: server.Request, rep: Representation,
                         headers: dict[str, str], behaviour: Behaviour) -> None:
    last_modified = http.datetimeToString(int(rep.mtime)).decode()
    request.setHeader("ETag", rep.etag)
    request.setHeader("Last-Modified", last_modified)
    request.setHeader("Accept-Ranges", "bytes")
    request.setHeader("Content-Type", rep.content_type)
    if rep.vary:
        request.setHeader("Vary", rep.vary)
    if rep.encoding:
        request.setHeader("Content-Encoding", rep.encoding)
    if behaviour.status == 304 or not_modified(headers, rep.etag, rep.mtime):
        request.setResponseCode(304)
        return _finish_headers_only(request, behaviour)
    span = parse_range(headers.get("range"), rep.size) \
        if range_allowed(headers, rep.etag, last_modified) else None
    if span == "unsatisfiable":
        request.setHeader("Content-Range", f"bytes */{rep.size}")
        return _send_text(origin, request, 416, b"origin: range not satisfiable\n", behaviour)
    start, end = span if isinstance(span, tuple) else (0, rep.size - 1)
    if isinstance(span, tuple):
        request.setResponseCode(206)
        request.setHeader("Content-Range", f"bytes {start}-{end}/{rep.size}")
    BodySender(origin.reactor, request, rep.open(), start, end - start + 1, behaviour).start()


def _send_text(origin: Origin, request: server.Request, status: int, text: bytes,
               behaviour: Behaviour) -> None:
    request.setResponseCode(status)
    request.setHeader("Content-Type", "text/plain; charset=utf-8")
    BodySender(origin.reactor, request, io.BytesIO(text), 0, len(text), behaviour).start()


def _finish_headers_only(request: server.Request, behaviour: Behaviour) -> None:
    _apply_headers(request, behaviour)
    request.finish()


def _apply_headers(request: server.Request, behaviour: Behaviour) -> None:
    for name, value in behaviour.headers.items():
        if value is None:
            request.responseHeaders.removeHeader(name)
        else:
            request.setHeader(name, value)


@implementer(IPushProducer)
class BodySender:
    """Sends ``length`` bytes of ``source`` from ``offset`` at the client's pace (a push
    producer that honours pause/resume), throttled, cut short or lied about as the
    behaviour says."""

    def __init__(self, reactor, request: server.Request, source: BinaryIO, offset: int,  # type: ignore[no-untyped-def]
                 length: int, behaviour: Behaviour) -> None:
        self.reactor, self.request, self.source = reactor, request, source
        self.behaviour = behaviour
        self.remaining = length if behaviour.fail_after is None else min(length, behaviour.fail_after)
        self.cut = behaviour.fail_after is not None and behaviour.fail_after < length
        self.paused = False
        self.done = False
        self.call = None
        self.sent = 0
        self.started: float | None = None  # a throttled body's pace counts from here
        source.seek(offset)
        request.setHeader("Content-Length", str(
            length if behaviour.lie_length is None else behaviour.lie_length))
        _apply_headers(request, behaviour)

    def start(self) -> None:
        if self.request.method == b"HEAD" or self.request.code in (204, 304):
            self._end()
            return
        self.request.write(b"")  # the status line and headers, even if no byte follows
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self.call is None and not self.done:
            self.call = self.reactor.callLater(delay, self._pump)

    def _pump(self) -> None:
        """Write up to a tick's worth (or a few chunks) unless the client pushed back."""
        self.call = None
        rate = self.behaviour.slow_bytes_per_s
        budget = self._budget(rate) if rate else 4 * _CHUNK
        if budget <= 0:  # resumed ahead of the pace: wait for it
            return self._schedule(-budget / rate + _TICK / 10)
        while not self.paused and not self.done and budget > 0 and self.remaining > 0:
            data = self.source.read(min(_CHUNK, budget, self.remaining))
            if not data:  # the file shrank under us: end as a truncated response
                self.cut, self.remaining = True, 0
                break
            self.remaining -= len(data)
            self.sent += len(data)
            budget -= len(data)
            self.request.write(data)
        if self.done:
            return
        if self.remaining <= 0:
            self._end()
        elif not self.paused:
            self._schedule(_TICK if rate else 0)

    def _budget(self, rate: int) -> int:
        """Bytes a throttled body may send now: the pace since its start, one tick ahead
        (a token bucket, so pauses by a slow client do not lower the average rate)."""
        now = self.reactor.seconds()
        if self.started is None:
            self.started = now
        return int(rate * (now - self.started + _TICK)) - self.sent

    def _end(self) -> None:
        self.done = True
        self.source.close()
        if self.request._disconnected:
            return
        if self.request.producer is not None:
            self.request.unregisterProducer()
        if self.cut or self.behaviour.lie_length is not None:
            # Short of the announced length: closing is the only honest end.
            self.request.channel.transport.loseConnection()
        else:
            self.request.finish()

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self._schedule(0)

    def stopProducing(self) -> None:  # noqa: N802
        if not self.done:
            self.done = True
            self.source.close()
            if self.call is not None and self.call.active():
                self.call.cancel()


class OriginSite(server.Site):
    """A quiet Site that remembers its connections so an outage can drop them."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self._connections: weakref.WeakSet = weakref.WeakSet()

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]  # noqa: N802
        protocol = super().buildProtocol(addr)
        self._connections.add(protocol)
        return protocol

    def abort_all(self) -> None:
        for protocol in list(self._connections):
            channel = getattr(protocol, "_channel", protocol)  # the HTTP/1.1-or-2 wrapper's
            transport = getattr(channel, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()

    def open_connections(self) -> int:
        """Connections currently open to the origin (keep-alive included)."""
        return sum(1 for p in list(self._connections)
                   if getattr(getattr(p, "_channel", p), "transport", None) is not None
                   and getattr(p, "_channel", p).transport.connected)

    def log(self, request: server.Request) -> None:
        """No access log: tests read ``Origin.requests``."""


# --- control endpoints (standalone use) ---------------------------------------------

def _control(origin: Origin, request: server.Request, action: str) -> bytes:
    request.setHeader("Content-Type", "application/json")
    if action == "requests" and request.method == b"GET":
        return _json([r._asdict() for r in origin.requests])
    if request.method != b"POST":
        request.setResponseCode(405)
        return _json({"error": "POST"})
    body = json.loads(request.content.read() or b"{}")
    if action == "reset":
        origin.reset()
    elif action == "behave":
        path = body.pop("path")
        if isinstance(body.get("body"), str):
            body["body"] = body["body"].encode()
        origin.behave(path, **body)
    elif action == "down":
        origin.down = bool(body.get("down", True))
    else:
        request.setResponseCode(404)
        return _json({"error": f"unknown control {action}"})
    return _json({"ok": True})


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _fixtures_module():  # type: ignore[no-untyped-def]
    try:
        from tests import fixtures  # python -m tests.origin
    except ImportError:
        import fixtures  # type: ignore[no-redef]  # python tests/origin.py, or tests/ on the path
    return fixtures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.origin", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the tree to serve")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--build-fixtures", action="store_true",
                        help="write the fixture tree into --root first")
    parser.add_argument("--files-base", default="http://files.pythonhosted.org",
                        help='PyPI file links; "self" links to this origin')
    parser.add_argument("--npm-base", default="http://registry.npmjs.org",
                        help='npm tarball links; "self" links to this origin')
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    origin = Origin(args.root, reactor)
    port = origin.listen(args.port, args.interface)
    if args.build_fixtures:
        files_base = f"{origin.url}/pypi" if args.files_base == "self" else args.files_base
        npm_base = f"{origin.url}/npm" if args.npm_base == "self" else args.npm_base
        _fixtures_module().build_fixtures(args.root, files_base, npm_base)
    print(port, flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def serve_tree(root: Path):  # type: ignore[no-untyped-def]
    """A fixture's body: an origin serving ``root`` for as long as the fixture lives."""
    import pytest_twisted
    from twisted.internet import reactor
    server = Origin(root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())
