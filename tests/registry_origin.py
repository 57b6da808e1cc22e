"""A small recording registry for what Debian's ``docker-registry`` cannot do: a Bearer-token
realm (401 + ``WWW-Authenticate`` → a token endpoint), blobs answered with a 307 to a second
"CDN" listener (which records whether ``Authorization`` reached it), injected statuses
(429, 5xx), corrupted blobs, and a log of every request (HEAD and GET counted apart).

Content comes from ``tests/oci_images.Layout``: ``add(repo, tag, layout, top)``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.web import server
from twisted.web.resource import Resource

from tests.oci_images import Blob, Layout


class Seen(NamedTuple):
    where: str  # "registry", "token" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Fault:
    status: int
    remaining: int  # how many more requests get it (-1: until cleared)


@dataclass
class RegistryOrigin:
    """The fake registry's state; ``listen`` starts its three listeners."""

    reactor: object
    token_lifetime: int = 300
    auth: bool = True  # require a Bearer token on /v2/<name>/...
    redirect_blobs: bool = True  # blobs: 307 to the CDN listener
    head_digest: bool = True  # Docker-Content-Digest on manifest HEADs (some omit it)
    manifests: dict[str, Blob] = field(default_factory=dict)  # by digest
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    blobs: dict[str, Blob] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # digests served with a flipped byte
    stall: dict[str, int] = field(default_factory=dict)  # digest -> bytes sent, then silence
    faults: dict[str, Fault] = field(default_factory=dict)  # by path substring
    seen: list[Seen] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> scope
    ports: dict[str, object] = field(default_factory=dict)

    def add(self, repo: str, tag: str, layout: Layout, top: Blob) -> None:
        for blob in layout.blobs.values():
            is_manifest = blob.media_type.endswith(("manifest.v1+json", "index.v1+json",
                                                    "manifest.v2+json", "list.v2+json"))
            (self.manifests if is_manifest else self.blobs)[blob.digest] = blob
        self.tags[(repo, tag)] = top.digest

    def listen(self) -> "RegistryOrigin":
        for where in ("registry", "cdn"):
            site = server.Site(_Front(self, where))
            site.log = lambda request: None  # type: ignore[method-assign]
            self.ports[where] = self.reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        return self

    def url(self, where: str = "registry") -> str:
        return f"http://127.0.0.1:{self.ports[where].getHost().port}"  # type: ignore[attr-defined]

    def stop(self) -> defer.Deferred:
        ports, self.ports = list(self.ports.values()), {}
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])  # type: ignore[attr-defined]

    # -- what the tests ask ------------------------------------------------------------

    def fail(self, path_part: str, status: int, times: int = -1) -> None:
        """Answer requests whose path contains ``path_part`` with ``status``."""
        self.faults[path_part] = Fault(status, times)

    def heal(self) -> None:
        self.faults.clear()

    def count(self, method: str | None = None, part: str = "", where: str = "registry") -> int:
        return sum(1 for s in self.seen if s.where == where and part in s.path and
                   (method is None or s.method == method))

    def reset(self) -> None:
        self.seen.clear()

    # -- answering ---------------------------------------------------------------------

    def _fault(self, path: str) -> int | None:
        for part, fault in self.faults.items():
            if part in path and fault.remaining != 0:
                fault.remaining -= fault.remaining > 0
                return fault.status
        return None

    def answer(self, where: str, request: server.Request) -> bytes:
        path = request.uri.decode()
        headers = {k.decode().lower(): b", ".join(v).decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append(Seen(where if not path.startswith("/token") else "token",
                              request.method.decode(), path, headers))
        status = self._fault(path)
        if status is not None:
            return _error(request, status, "FAULT", "injected")
        if where == "cdn":
            return self._cdn(request, path)
        if path.startswith("/token"):
            return self._token(request, path)
        if path.rstrip("/") == "/v2":
            return _json(request, {})
        parts = urlsplit(path).path.split("/")
        if len(parts) < 5 or parts[-2] not in ("manifests", "blobs"):
            return _error(request, 404, "NAME_UNKNOWN", "not served here")
        name, kind, ref = "/".join(parts[2:-2]), parts[-2], parts[-1]
        if self.auth and not self._authorised(headers, name):
            scope = f"repository:{name}:pull"
            request.setHeader("WWW-Authenticate", f'Bearer realm="{self.url()}/token",'
                              f'service="fake-registry",scope="{scope}"')
            return _error(request, 401, "UNAUTHORIZED", "authentication required")
        if kind == "manifests":
            return self._manifest(request, name, ref)
        return self._blob(request, ref)

    def _authorised(self, headers: dict[str, str], name: str) -> bool:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        return self.tokens.get(token) == f"repository:{name}:pull"

    def _token(self, request: server.Request, path: str) -> bytes:
        query = parse_qs(urlsplit(path).query)
        token = secrets.token_hex(8)
        self.tokens[token] = query.get("scope", [""])[0]
        return _json(request, {"token": token, "expires_in": self.token_lifetime})

    def _manifest(self, request: server.Request, name: str, ref: str) -> bytes:
        digest = ref if ref.startswith("sha256:") else self.tags.get((name, ref))
        blob = self.manifests.get(digest or "")
        if blob is None:
            return _error(request, 404, "MANIFEST_UNKNOWN", "manifest unknown")
        request.setHeader("Content-Type", blob.media_type)
        if self.head_digest or request.method != b"HEAD":
            request.setHeader("Docker-Content-Digest", blob.digest)
        return _body(request, blob.data)

    def _blob(self, request: server.Request, digest: str) -> bytes:
        blob = self.blobs.get(digest) or self.manifests.get(digest)
        if blob is None:
            return _error(request, 404, "BLOB_UNKNOWN", "blob unknown")
        if self.redirect_blobs:
            request.setResponseCode(307)
            request.setHeader("Location", f"{self.url('cdn')}/cdn/{digest}?sig=s3cr3t")
            return b""
        return self._blob_body(request, blob)

    def _cdn(self, request: server.Request, path: str) -> bytes:
        digest = urlsplit(path).path.rpartition("/")[2]
        blob = self.blobs.get(digest) or self.manifests.get(digest)
        if blob is None or "sig=s3cr3t" not in path:
            return _error(request, 404, "BLOB_UNKNOWN", "no such object")
        return self._blob_body(request, blob)

    def _blob_body(self, request: server.Request, blob: Blob) -> bytes:
        data = blob.data
        if blob.digest in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        request.setHeader("Content-Type", "application/octet-stream")
        request.setHeader("Docker-Content-Digest", blob.digest)
        if blob.digest in self.stall and request.method != b"HEAD":
            request.setHeader("Content-Length", str(len(data)))
            request.write(data[:self.stall[blob.digest]])
            return server.NOT_DONE_YET  # type: ignore[return-value]
        return _body(request, data)


class _Front(Resource):
    isLeaf = True

    def __init__(self, origin: RegistryOrigin, where: str) -> None:
        super().__init__()
        self.origin, self.where = origin, where

    def render(self, request: server.Request) -> bytes:
        return self.origin.answer(self.where, request)


def _body(request: server.Request, data: bytes) -> bytes:
    request.setHeader("Content-Length", str(len(data)))
    return b"" if request.method == b"HEAD" else data


def _json(request: server.Request, value: object) -> bytes:
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Docker-Distribution-API-Version", "registry/2.0")
    return _body(request, json.dumps(value).encode())


def _error(request: server.Request, status: int, code: str, message: str) -> bytes:
    request.setResponseCode(status)
    return _json(request, {"errors": [{"code": code, "message": message}]})
