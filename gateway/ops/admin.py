"""The admin API and status page, on ``server.admin`` (default 127.0.0.1:3129), its own Site.

Endpoints (JSON unless said otherwise; errors are ``{"error": reason}`` with a 4xx status):

- ``GET /`` the HTML status page; ``GET /healthz``; ``GET /metrics`` (Prometheus text);
- ``GET /api/stats``: requests, hit ratio and bytes from cache vs upstream in total, per
  ecosystem and per client address; DNS and TLS counters; the store's size; uptime;
  recent requests and the most requested objects;
- ``GET /api/cache[?ecosystem=E][&prefix=P][&limit=N]`` lists stored objects (``limit=0``:
  all); ``DELETE /api/cache[?ecosystem=E][&prefix=P]`` drops them (no filter: all);
  ``POST /api/cache/verify`` re-hashes every stored body and drops the corrupt ones;
- ``GET /api/cache?sha256=HEX`` and ``GET /api/objects/sha256/HEX``: stored objects by
  the sha256 of their body (the store's content index);
- ``POST /api/warm`` ``{"url", "digest"?: {"algorithm", "hex"}, "headers"?, "body"?}``:
  fetch one URL through the gateway, checked against the digest (``cachegate warm``);
- ``GET /api/integrity`` (bodies refused: digest mismatches and drift, counts and recent
  events), ``GET /api/drift`` (drift only);
- ``GET /api/pins``; ``PUT /api/pins/NAME`` ``{"keys": [...]}`` (409 when the pinned
  bytes would exceed ``size_limit``); ``DELETE /api/pins/NAME``;
- ``GET /ca.crt``: the CA certificate (PEM);
- ``GET /api/upstreams[/NAME]``; ``PUT /api/upstreams/NAME`` (a JSON ``[upstreams.NAME]``
  table) and ``DELETE /api/upstreams/NAME`` edit the catalogue at run time
  (``gateway/upstream_edits.py``).

Mutating calls (PUT, DELETE, POST): when the admin address is loopback they are allowed,
but only addressed by IP or ``localhost`` (a web page cannot reach them through DNS
rebinding); otherwise each needs ``Authorization: Bearer <token>``, the token being
``<state_dir>/admin.token`` (created 0600 at first start).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.application import internet, service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from gateway.cache import verify
from gateway.front.passthrough import advice
from gateway.addresses import DOCKER_BRIDGE, interface_ipv4
from gateway.ops.activity import Activity
from gateway.ops.history import SAMPLE_SECONDS, History, reading
from gateway.ops.admin_client import TOKEN_FILE
from gateway.cache.rules import Upstream
from gateway.ecosystems.catalogue import BUILTIN
from gateway.config import ConfigError
from gateway.ops.metrics import CONTENT_TYPE as METRICS_TYPE
from gateway.ops.metrics import Live, metrics_registry, render
from gateway.ops.status_page import render_status
from gateway.cache.store import MODE_OBJECT, Entry, PinRefused, Store
from gateway.ops.prefetch import Prefetcher, WarmError
from gateway.ops.upstream_edits import apply_edits, describe, load_edits, save_edits
from tls.ca import missing_domains, permitted_domains
from gateway.ops.sessions import SessionService, admin_routes

log = Logger()

MAX_BODY = 64 * 1024  # an upstream table is a few hundred bytes
MAX_PINS_BODY = 64 * 2**20  # a pin set's keys: a big lockfile's worth
LIST_LIMIT = 1000  # GET /api/cache entries unless ?limit= says otherwise
TOP_OBJECTS = 10
IDLE_TIMEOUT = 60
JSON_TYPE = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def load_or_create_token(state_dir: Path) -> str:
    """The admin token, created on first use: written 0600 (before a byte of it is in
    the file) to a partial file renamed into place, so it is never seen half-written."""
    path = Path(state_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    partial = path.with_name(TOKEN_FILE + ".partial")
    partial.unlink(missing_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(partial, path)
    log.info("created the admin API token in {path}", path=str(path))
    return token


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cache_summary(store: Store) -> dict[str, dict[str, int]]:
    """Objects and body bytes per ecosystem, from one SQL aggregate over the store's rows
    (decoding every entry's metadata in Python costs ~10x more on a large cache)."""
    try:
        rows = store.cache._sql(
            "SELECT json_extract(CAST(value AS TEXT), '$.ecosystem'), COUNT(*),"
            " COALESCE(SUM(size), 0) FROM Cache WHERE mode = ? GROUP BY 1",
            (MODE_OBJECT,)).fetchall()
    except sqlite3.OperationalError:  # an SQLite without JSON functions
        out: dict[str, dict[str, int]] = {}
        for entry in store.entries():
            figures = out.setdefault(entry.meta.ecosystem, {"objects": 0, "bytes": 0})
            figures["objects"] += 1
            figures["bytes"] += entry.meta.length
        return out
    return {str(name): {"objects": count, "bytes": size} for name, count, size in rows}


class AdminAPI:
    """What the endpoints do, on a running ``GatewayService`` (``top``)."""

    def __init__(self, top, static_upstreams: tuple[Upstream, ...], activity: Activity,  # type: ignore[no-untyped-def]
                 reactor, token: str, token_required: bool) -> None:
        self.top, self.static_upstreams, self.reactor = top, static_upstreams, reactor
        self.activity = activity
        self.token, self.token_required = token, token_required
        self.started = reactor.seconds()
        self.prefetcher = Prefetcher(top, reactor)
        self.registry = metrics_registry(self.stats, self.live)
        self.history = History(reactor.seconds)  # the status page's last hour
        self.sessions = SessionService(top, reactor)  # build records (ops/sessions.py)

    # -- reading -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        doc = {"status": "ok", "uptime": self.reactor.seconds() - self.started,
               "docker_dns": self.top.advertise_ipv4, "addresses": self.top.addresses,
               "listeners": self.listeners(),
               "untrusting": advice(self.top.passthrough.stats.as_dict()),
               "integrity": self.integrity_brief()}
        pool = getattr(self.top, "pool", None)  # worker processes (workers.py)
        if pool is not None:
            doc["workers"] = pool.describe()
            doc["integrity"] = {"counts": pool.overlay()["integrity"], "recent": []}
        return doc

    def integrity_brief(self) -> dict[str, Any]:
        """Refused bodies for doctor: counts and the last few events."""
        summary = self.top.gateway.flights.integrity.summary()
        return {"counts": summary["counts"], "recent": summary["events"][-3:]}

    def listeners(self) -> dict[str, list[int]]:
        return {kind: self.top.ports(kind)
                for kind in ("http", "https", "proxy", "dns", "admin", "images", "cluster")}

    def stats(self, store_figures: bool = True) -> dict[str, Any]:
        """The ``/api/stats`` document; a worker leaves out the store's figures (a scan of
        every row, asked each second), which its supervisor has."""
        top = self.top
        store = top.store
        stored = cache_summary(store) if store_figures else {}
        doc = {
            "uptime": self.reactor.seconds() - self.started,
            "addresses": top.addresses,
            "docker_dns": top.advertise_ipv4,
            "bridge": interface_ipv4(DOCKER_BRIDGE),
            "local_names": list(top.config.dns.local_names),
            "listeners": self.listeners(),
            "gateway": top.stats.as_dict(),
            "dns": asdict(top.dns_stats),
            "tls": {"refused": top.tls.refused, "minted": top.tls.leaves.minted},
            "passthrough": top.passthrough.stats.as_dict(),
            "cache": {"objects": sum(e["objects"] for e in stored.values()),
                      "bytes": store.volume() if store_figures else 0,
                      "limit": store.size_limit, "ecosystems": stored,
                      "pinned": store.pinned_bytes() if store_figures else 0},
            "integrity": dict(top.gateway.flights.integrity.counts),
            "downloads": {"active": len(top.gateway.flights.active)},
            "upstream": self.upstream_totals(),
            "tiers": top.tiers_state(),  # parents and the S3 store (issue 18)
            # The registry mirror: upstream pulls and tag revalidations per registry (its
            # requests by label are under "gateway", by registry name).
            "images": top.mirror.summary() if top.mirror is not None else None,
            "recent": self.activity.recent_lines(),
            "top": self.activity.top(TOP_OBJECTS),
        }
        pool = getattr(top, "pool", None)  # worker processes serve the clients (workers.py)
        if pool is not None:
            doc.update(pool.overlay())
        return doc

    def sample_history(self) -> None:
        """One point of the status page's plots (every ``SAMPLE_SECONDS``); with worker
        processes, of their summed counters."""
        total = self.top.stats.as_dict()["total"]
        self.history.sample(reading(total["requests"], total["bytes_from_cache"],
                                    total["bytes_from_upstream"],
                                    self.upstream_totals()["errors"]))

    def upstream_totals(self) -> dict[str, int]:
        """Upstream requests and failed ones (every kind), summed over the workers when
        there are worker processes."""
        pool = getattr(self.top, "pool", None)
        if pool is not None:
            parts = pool.gathered("upstream")
            return {k: sum(p.get(k, 0) for p in parts) for k in ("requests", "errors")}
        events = self.top.gateway.flights.events
        return {"requests": sum(events.requests.values()),
                "errors": sum(events.upstream_errors.values())}

    def live(self) -> Live:
        top = self.top
        return Live(top.stats.durations, top.gateway.flights.events,
                    top.dns_stats.forward_seconds, top.store.evictions,
                    tuple(u.name for u in top.config.upstreams))

    def cache_list(self, ecosystem: str | None, prefix: str | None, limit: int,
                   sha256: str | None = None) -> dict[str, Any]:
        return list_cache(self.top.store, ecosystem, prefix, limit, sha256)

    def integrity(self, kind: str | None = None) -> dict[str, Any]:
        summary = self.top.gateway.flights.integrity.summary()
        if kind is not None:
            summary["events"] = [e for e in summary["events"] if e["kind"] == kind]
        return summary

    def pins(self) -> dict[str, Any]:
        store = self.top.store
        return {"pins": store.pins(), "pinned_bytes": store.pinned_bytes(),
                "limit": store.size_limit}

    def pin(self, name: str, doc: Any) -> dict[str, Any]:
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError(400, 'body must be {"keys": ["<cache key>", ...]}')
        try:
            result = self.top.store.pin(name, keys)
        except PinRefused as e:
            raise ApiError(409, str(e)) from None
        log.info("admin: pinned {count} objects as {name}", count=len(keys), name=name)
        return dict(result, name=name)

    def unpin(self, name: str) -> dict[str, Any]:
        removed = self.top.store.unpin(name)
        if not removed:
            raise ApiError(404, f"no pin set named {name!r}")
        return {"name": name, "removed": removed}

    def upstreams(self) -> dict[str, Any]:
        edits = load_edits(self.top.config.server.state_dir)
        builtin = {u.name: u for u in BUILTIN}
        static = {u.name: u for u in self.static_upstreams}
        out = []
        for upstream in self.top.config.upstreams:
            source = "runtime" if upstream.name in edits else \
                "builtin" if builtin.get(upstream.name) == static.get(upstream.name) else "config"
            out.append({**describe(upstream), "source": source})
        return {"upstreams": out, "edits": edits}

    # -- changing ------------------------------------------------------------------------

    def cache_clear(self, ecosystem: str | None, prefix: str | None) -> dict[str, Any]:
        result = clear_cache(self.top.store, ecosystem, prefix)
        log.info("admin: cleared {count} cached objects (ecosystem={ecosystem}, "
                 "prefix={prefix})", count=result["deleted"], ecosystem=ecosystem,
                 prefix=prefix)
        return result

    @defer.inlineCallbacks
    def cache_verify(self):  # type: ignore[no-untyped-def]
        entries = list(self.top.store.entries())
        checked, size, problems = yield threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), verify.find_problems, entries)
        dropped = verify.drop(self.top.store, problems)
        for problem in dropped:
            log.warn("cache verify: dropped {url}: {reason}", url=problem.entry.meta.url,
                     reason=problem.reason)
            self.top.gateway.flights.events.integrity_failure(problem.entry.meta.ecosystem,
                                                              "stored")
        return verify.report(checked, size, dropped)

    def put_upstream(self, name: str, table: Any) -> dict[str, Any]:
        edits = load_edits(self.top.config.server.state_dir)
        edits[name] = table
        upstreams = self._apply(edits)
        save_edits(self.top.config.server.state_dir, edits)
        self.top.replace_upstreams(upstreams)
        log.info("admin: upstream {name} edited at run time", name=name)
        entry = next((u for u in upstreams if u.name == name), None)
        return {"upstream": describe(entry) if entry else None, "enabled": entry is not None}

    def delete_upstream(self, name: str) -> dict[str, Any]:
        edits = load_edits(self.top.config.server.state_dir)
        if name not in edits:
            raise ApiError(404, f"no run-time edit of {name!r} (entries of the config file "
                                "are changed there)")
        del edits[name]
        upstreams = self._apply(edits)
        save_edits(self.top.config.server.state_dir, edits)
        self.top.replace_upstreams(upstreams)
        log.info("admin: run-time edit of upstream {name} removed", name=name)
        return {"removed": name}

    def _apply(self, edits: dict[str, Any]) -> tuple[Upstream, ...]:
        try:
            upstreams = apply_edits(self.static_upstreams, edits, "request")
        except ConfigError as e:
            raise ApiError(400, f"{e.key}: {e.reason}") from None
        missing = missing_domains(self.top.ca, permitted_domains(
            upstreams, self.top.config.dns.local_names))
        if missing:
            raise ApiError(409, f"the CA's name constraints do not cover {', '.join(missing)}: "
                                "add the entry to the config file, run `cachegate ca rotate` "
                                "and restart (images must then trust the new CA)")
        return upstreams

    def authorise(self, request: server.Request) -> None:
        """Raise ``ApiError`` unless ``request`` may change something."""
        if self.token_required:
            scheme, _, given = (request.getHeader("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self.token.encode()):
                raise ApiError(401, f"needs Authorization: Bearer <the token in "
                                    f"{self.top.config.server.state_dir / TOKEN_FILE}>",
                               {"WWW-Authenticate": 'Bearer realm="cachegate"'})
        elif not _names_an_address(request.getHeader("host")):
            raise ApiError(403, "address the admin API by IP or localhost to change anything")


# -- the store's objects, selected by ecosystem and URL prefix (also the CLI's offline path)

def select_entries(store: Store, ecosystem: str | None, prefix: str | None,
                   sha256: str | None = None) -> list[Entry]:
    """Stored objects of ``ecosystem`` whose URL (host + path) starts with ``prefix``
    (``None``: any; a leading ``http(s)://`` is ignored) and whose body has ``sha256``
    (the content index), sorted by key."""
    prefix = _strip_scheme(prefix) if prefix else None
    candidates = store.find_sha256(sha256) if sha256 else store.entries()
    return sorted((e for e in candidates
                   if (ecosystem is None or e.meta.ecosystem == ecosystem)
                   and (prefix is None or e.meta.url.startswith(prefix))),
                  key=lambda e: e.key)


def list_cache(store: Store, ecosystem: str | None, prefix: str | None,
               limit: int = 0, sha256: str | None = None) -> dict[str, Any]:
    """The ``GET /api/cache`` document; ``limit=0``: every match."""
    matches = select_entries(store, ecosystem, prefix, sha256)
    shown = matches if limit == 0 else matches[:limit]
    return {"count": len(matches), "bytes": sum(e.meta.length for e in matches),
            "truncated": len(shown) < len(matches), "entries": [entry_json(e) for e in shown]}


def clear_cache(store: Store, ecosystem: str | None, prefix: str | None) -> dict[str, Any]:
    """Delete the selected objects: the ``DELETE /api/cache`` document."""
    matches = select_entries(store, ecosystem, prefix)
    deleted = [e for e in matches if store.delete(e.key)]
    return {"deleted": len(deleted), "bytes": sum(e.meta.length for e in deleted)}


def entry_json(entry: Entry) -> dict[str, Any]:
    meta = entry.meta
    return {"key": entry.key, "url": meta.url, "ecosystem": meta.ecosystem,
            "status": meta.status, "length": meta.length, "sha256": meta.sha256,
            "stored": meta.freshness.response_time, "verified": meta.extra.get("verified")}


def _strip_scheme(prefix: str) -> str:
    for scheme in ("http://", "https://"):
        if prefix.startswith(scheme):
            return prefix[len(scheme):]
    return prefix


def _names_an_address(host_header: str | None) -> bool:
    """Whether Host is an IP literal or localhost (with or without a port)."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# -- the twisted.web side ----------------------------------------------------------------

Reply = tuple[int, bytes, str]  # status, body, content type
_QUERY_KEYS = {"GET /api/cache": {"ecosystem", "prefix", "limit", "sha256"},
               "DELETE /api/cache": {"ecosystem", "prefix"}}


def _json(doc: Any, status: int = 200) -> Reply:
    return status, (json.dumps(doc, indent=2) + "\n").encode(), JSON_TYPE


class AdminResource(Resource):
    """Routes every request to ``AdminAPI``; any error is a JSON answer, never a crash."""

    isLeaf = True

    def __init__(self, api: AdminAPI) -> None:
        super().__init__()
        self.api = api

    def render(self, request: server.Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.maybeDeferred(self.route, request)
        d.addErrback(self._error)
        d.addCallback(self._send, request, gone)
        d.addErrback(lambda f: log.failure("admin: cannot answer", f))
        return server.NOT_DONE_YET

    def route(self, request: server.Request):  # type: ignore[no-untyped-def]
        method = request.method.decode("latin-1")
        method = "GET" if method == "HEAD" else method
        parts = urlsplit(request.uri.decode("latin-1"))
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        handler, allowed = self._handler(method, path)
        if handler is None:
            if allowed:
                raise ApiError(405, f"{method} not allowed on {path}",
                               {"Allow": ", ".join(sorted(allowed))})
            raise ApiError(404, f"no such endpoint: {path}")
        # A misspelt filter must not widen what DELETE /api/cache drops; elsewhere a query
        # is ignored (as scrapers and browsers may add one).
        known = _QUERY_KEYS.get(f"{method} {path}", set())
        unknown = set(query) - known
        if unknown and (f"{method} {path}" in _QUERY_KEYS or method in ("PUT", "DELETE",
                                                                        "POST")):
            raise ApiError(400, f"unknown query parameter {sorted(unknown)[0]!r}"
                                f" (known: {', '.join(sorted(known)) or 'none'})")
        if method in ("PUT", "DELETE", "POST"):
            self.api.authorise(request)
        return handler(request, query)

    def _handler(self, method: str, path: str) -> tuple[Callable | None, set[str]]:
        routes = self._routes(path)
        return routes.get(method), set(routes) | ({"HEAD"} if "GET" in routes else set())

    def _routes(self, path: str) -> dict[str, Callable]:
        api = self.api
        sessions = admin_routes(api.sessions, path, _body_json)
        if sessions is not None:
            return sessions
        if path.startswith("/api/upstreams/"):
            name = unquote(path[len("/api/upstreams/"):])
            return {"GET": lambda r, q: self._upstream(name),
                    "PUT": lambda r, q: _json(api.put_upstream(name, _body_json(r))),
                    "DELETE": lambda r, q: _json(api.delete_upstream(name))}
        if path.startswith("/api/pins/"):
            name = unquote(path[len("/api/pins/"):])
            return {"PUT": lambda r, q: _json(api.pin(name, _body_json(r, MAX_PINS_BODY))),
                    "DELETE": lambda r, q: _json(api.unpin(name))}
        if path.startswith("/api/objects/sha256/"):
            digest = path[len("/api/objects/sha256/"):]
            return {"GET": lambda r, q: _json(list_cache(api.top.store, None, None, 0,
                                                         _sha256_arg(digest)))}
        return {
            "/": {"GET": lambda r, q: (200, render_status(api.stats(), history=api.history),
                                       "text/html; charset=utf-8")},
            "/healthz": {"GET": lambda r, q: _json(api.health())},
            "/metrics": {"GET": lambda r, q: (200, render(api.registry), METRICS_TYPE)},
            "/api/stats": {"GET": lambda r, q: _json(api.stats())},
            "/api/cache": {"GET": self._cache_list,
                           "DELETE": lambda r, q: _json(api.cache_clear(
                               _nonempty(q, "ecosystem"), _nonempty(q, "prefix")))},
            "/api/cache/verify": {"POST": lambda r, q: api.cache_verify().addCallback(_json)},
            "/ca.crt": {"GET": lambda r, q: (200, api.top.ca.cert_pem(),
                                             "application/x-pem-file")},
            "/api/upstreams": {"GET": lambda r, q: _json(api.upstreams())},
            "/api/warm": {"POST": lambda r, q: api.prefetcher.warm(_body_json(r))
                          .addCallback(_json)},
            "/api/integrity": {"GET": lambda r, q: _json(api.integrity())},
            "/api/drift": {"GET": lambda r, q: _json(api.integrity("drift"))},
            "/api/pins": {"GET": lambda r, q: _json(api.pins())},
        }.get(path, {})

    def _cache_list(self, request: server.Request, query: dict[str, str]) -> Reply:
        raw = query.get("limit", str(LIST_LIMIT))
        if not raw.isdigit():
            raise ApiError(400, f"limit must be a whole number (0: all), got {raw!r}")
        sha256 = _nonempty(query, "sha256")
        return _json(self.api.cache_list(_nonempty(query, "ecosystem"),
                                         _nonempty(query, "prefix"), int(raw),
                                         _sha256_arg(sha256) if sha256 else None))

    def _upstream(self, name: str) -> Reply:
        for upstream in self.api.upstreams()["upstreams"]:
            if upstream["name"] == name:
                return _json(upstream)
        raise ApiError(404, f"no upstream named {name!r}")

    @staticmethod
    def _error(failure: Failure):  # type: ignore[no-untyped-def]
        if failure.check(ApiError):
            e = failure.value
            return e.status, _json({"error": e.reason})[1], JSON_TYPE, e.headers
        if failure.check(WarmError):
            return _json({"error": str(failure.value)}, 400)
        if failure.check(ConfigError):  # a broken upstreams.json on disk
            return _json({"error": str(failure.value)}, 500)
        log.failure("admin API error", failure)
        return _json({"error": "internal error (see the gateway's log)"}, 500)

    @staticmethod
    def _send(reply: tuple, request: server.Request, gone: list[bool]) -> None:
        if gone:
            return
        status, body, content_type = reply[:3]
        for name, value in (reply[3] if len(reply) > 3 else {}).items():
            request.setHeader(name, value)
        request.setResponseCode(status)
        request.setHeader("Content-Type", content_type)
        request.setHeader("Content-Length", str(len(body)))
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Content-Type-Options", "nosniff")
        request.write(body)
        request.finish()


def _nonempty(query: dict[str, str], name: str) -> str | None:
    value = query.get(name)
    if value == "":
        raise ApiError(400, f"{name} is empty (leave it out to mean any)")
    return value


def _sha256_arg(value: str) -> str:
    value = value.lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ApiError(400, f"not a sha256 in hex: {value!r}")
    return value


def _body_json(request: server.Request, limit: int = MAX_BODY) -> Any:
    raw = request.content.read(limit + 1) if request.content is not None else b""
    if len(raw) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"body is not JSON: {e}") from None


class AdminSite(server.Site):
    """No access log: scrapes and status-page reloads are not worth a line each."""

    displayTracebacks = False
    noisy = False

    def log(self, request: server.Request) -> None:
        pass


class AdminService(service.MultiService):
    """The admin listener.  ``static_upstreams`` are the config file's (the base of run-time
    edits); ``activity`` is the access log the handler writes through."""

    def __init__(self, top, static_upstreams: tuple[Upstream, ...], activity: Activity,  # type: ignore[no-untyped-def]
                 reactor) -> None:
        super().__init__()
        host, port = top.config.server.admin
        token = load_or_create_token(top.config.server.state_dir)
        self.api = AdminAPI(top, static_upstreams, activity, reactor, token,
                            not is_loopback(host))
        self.site = AdminSite(AdminResource(self.api), timeout=IDLE_TIMEOUT)
        self.listener = internet.TCPServer(port, self.site, interface=host, reactor=reactor)
        self.listener.setServiceParent(self)
        sampler = internet.TimerService(SAMPLE_SECONDS, self.api.sample_history)
        sampler.clock = reactor
        sampler.setServiceParent(self)

    @property
    def port(self) -> int:
        return self.listener._port.getHost().port
