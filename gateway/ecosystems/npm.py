"""npm: tarballs are immutable, packuments revalidated, audits never stored.

A packument lists each version's ``dist.integrity`` (SRI, sha512) or ``shasum`` (sha1):
when the gateway stores one it records them, and a later fill of that tarball is checked
against them (same upstream entry: registry.yarnpkg.com tarballs too)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Iterable, Iterator
from urllib.parse import unquote, urlsplit

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

_TARBALL = Rule(r"/-/[^/]+\.tgz$", Policy.IMMUTABLE)
_PACKUMENT = Rule(r"^/(@[^/]+(/|%2[fF]))?[^/@][^/]*/?$", Policy.REVALIDATE, INDEX_TTL)
# /<@scope/>?<name>/-/<name>-<version>.tgz (the scope's "/" may be spelt %2f)
_TARBALL_PARTS = re.compile(r"^/(?:(@[^/]+)/)?([^/@][^/]*)/-/(?:[^/]+)\.tgz$")
# SRI algorithms, strongest first (an entry may list several).
_SRI = ("sha512", "sha384", "sha256", "sha1")


def sri_digest(integrity: str, source: str = "") -> Digest | None:
    """The strongest digest of an SRI string (``sha512-<base64> sha1-<base64>``)."""
    found = {}
    for token in integrity.split():
        algorithm, _, value = token.partition("-")
        try:
            found[algorithm.lower()] = base64.b64decode(value.split("?")[0], validate=True).hex()
        except (binascii.Error, ValueError):
            continue
    for algorithm in _SRI:
        if algorithm in found:
            return Digest(algorithm, found[algorithm], source)
    return None


def dist_digest(dist: dict, source: str = "") -> Digest | None:
    integrity = dist.get("integrity")
    if isinstance(integrity, str) and (digest := sri_digest(integrity, source)):
        return digest
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and len(shasum) == 40:
        return Digest("sha1", shasum.lower(), source)
    return None


def packument_digests(data: bytes) -> Iterator[tuple[str, Digest]]:
    """(tarball path, digest) of every version a packument lists."""
    try:
        doc = json.loads(data)
    except ValueError:
        return
    versions = doc.get("versions") if isinstance(doc, dict) else None
    for manifest in (versions or {}).values():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
            continue
        digest = dist_digest(dist, "packument")
        if digest is not None:
            yield urlsplit(dist["tarball"]).path, digest


class Npm(Ecosystem):
    def package_of(self, path: str) -> Package | None:
        bare = unquote(path.partition("?")[0])
        m = _TARBALL_PARTS.match(bare)
        if m is None:
            return None
        scope, name = m.group(1) or "", m.group(2)
        filename = bare.rsplit("/", 1)[-1][:-len(".tgz")]
        if not filename.startswith(name + "-"):
            return None
        return Package("npm", name, filename[len(name) + 1:], scope)

    def publishes_digests(self, path: str) -> bool:
        return _TARBALL.matches(path)

    def learns_from(self, path: str) -> bool:
        return _PACKUMENT.matches(path) and not path.startswith("/-/")

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        for tarball, digest in packument_digests(body):
            yield tarball, digest
            if "%2f" in tarball.lower():  # a scoped name may be spelt either way
                yield unquote(tarball), digest


ROWS = (
    Upstream("npm", ("registry.npmjs.org", "registry.yarnpkg.com"), (
        Rule(r"^/-/npm/v1/security/", Policy.PASS),  # npm audit: POSTs, per-project answers
        _TARBALL,
        _PACKUMENT,  # packuments, scoped or not
    ), ecosystem=Npm()),
)
