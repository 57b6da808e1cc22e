"""Catalogue entries as data: an upstream's hostnames, its path rules, and its ecosystem.

Policies are data: each entry (``Upstream``) is hostnames plus ordered path rules, read by
``find_upstream`` and ``rule_for``; the first rule whose regular expression is found in the
path wins; a path no rule matches gets ``standard`` (the response's own caching headers,
RFC 9111).  What only an ecosystem knows (the digest a URL promises, which index governs
another) the engine asks through ``Ecosystem``, never by the ecosystem's name; the built-in
rows live in ``gateway/ecosystems/``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable
from enum import Enum


class Policy(str, Enum):
    IMMUTABLE = "immutable"  # cache forever, never revalidated
    REVALIDATE = "revalidate"  # fresh for ``ttl`` seconds, then a conditional request
    PASS = "pass"  # streamed through, never stored
    STANDARD = "standard"  # the response's own Cache-Control / Expires, as a shared cache


@dataclass(frozen=True)
class Rule:
    """One path rule: ``pattern`` is searched (``re.search``) in the request path."""

    pattern: str
    policy: Policy
    ttl: int = 0  # freshness lifetime for ``revalidate``, seconds
    digest: str = ""  # a digest scheme the entry's ecosystem checks ("" = none)
    # Its shared fetches carry every end-to-end request header, not only the narrow list
    # (``headers.shared_request_headers``): set for rules users add in the config.
    end_to_end_headers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def matches(self, path: str) -> bool:
        return self._regex.search(path) is not None  # type: ignore[attr-defined]


STANDARD_RULE = Rule("", Policy.STANDARD)


@dataclass(frozen=True)
class Digest:
    """What a body must hash to: ``algorithm`` as ``hashlib`` names it (or
    ``blake2b-256``) and the digest in hex."""

    algorithm: str
    hex: str
    source: str = ""  # who promised it: "" (the URL), an index's path, "lockfile", ...
    # For a digest not of the bytes (Go's ``h1:`` of a zip's files): a function of the
    # complete body file, run once after the last byte (``Download``).
    of_file: Callable[[str], str] | None = field(default=None, compare=False)

    def hasher(self):  # type: ignore[no-untyped-def]
        if self.algorithm == "blake2b-256":
            return hashlib.blake2b(digest_size=32)
        return hashlib.new(self.algorithm)


@dataclass(frozen=True)
class Package:
    """The package a URL's body is, as its ecosystem names it: the parts of a package URL
    (purl: ``pkg:<type>/<namespace>/<name>@<version>?<qualifiers>``)."""

    type: str  # the purl type: deb, apk, pypi, npm, maven, golang, cargo, gem
    name: str
    version: str
    namespace: str = ""
    qualifiers: tuple[tuple[str, str], ...] = ()


class Ecosystem:
    """What the engine may ask an entry's ecosystem.  This base knows nothing special
    (user-added entries); an ecosystem module subclasses it for what it knows."""

    digest_schemes: frozenset[str] = frozenset()  # the ``Rule.digest`` names it checks

    def expected_digest(self, rule: Rule, path: str) -> Digest | None:
        """The digest the body at ``path`` must have, when the URL itself says."""
        return None

    def publishes_digests(self, path: str) -> bool:
        """Whether an immutable ``path`` is one this ecosystem's indexes give a digest for:
        stored "unverified" when none was known."""
        return False

    def learns_from(self, path: str) -> bool:
        """Whether the stored body of ``path`` is an index naming digests of other paths
        (cheap: asked on the reactor after every commit)."""
        return False

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        """``(path, digest)`` of each object the index ``body`` (content-decoded) promises:
        run in a thread, recorded in the store for later fills of those paths."""
        return ()

    def digest_source(self, path: str) -> str | None:
        """A small file beside ``path`` that names its digest, fetched and read before
        ``path`` when no digest of it is known yet (Maven's ``.sha1`` sidecar)."""
        return None

    def file_digest(self, algorithm: str, path: str) -> Callable[[str], str] | None:
        """The whole-file function for an ``algorithm`` that is not a hash of the bytes."""
        return None

    def package_of(self, path: str) -> Package | None:
        """The package whose file ``path`` is (a build record's component); None for
        indexes, metadata, checksums and anything else that is not a package."""
        return None

    def index_group(self, key: str) -> str | None:
        """The group of indexes ``key`` belongs to that must be revalidated together
        when the group's marker changes (apt: a suite's indexes and its InRelease)."""
        return None

    def marked_group(self, key: str) -> str | None:
        """The group ``key`` marks: when its bytes change, that group is stale."""
        return None


PLAIN = Ecosystem()


@dataclass(frozen=True)
class Upstream:
    """One catalogue entry: an ecosystem's hostnames and their path rules.

    ``origin`` (``scheme://host[:port][/prefix]``), when set, replaces the real host: the
    request path is appended to it.  Otherwise requests go to ``scheme://<Host>``.
    """

    name: str
    hosts: tuple[str, ...]  # exact names, or "*.suffix"
    rules: tuple[Rule, ...] = ()
    scheme: str = "https"
    origin: str = ""
    ecosystem: Ecosystem = PLAIN
    # Every end-to-end request header goes upstream (entries users add: an artifact
    # server may need an API version or a custom header); built-in ones keep the narrow
    # list, which tells the public registries nothing about the builds.
    end_to_end_headers: bool = False

    def serves(self, host: str) -> bool:
        return any(host_matches(pattern, host) for pattern in self.hosts)

    def rule_for(self, path: str) -> Rule:
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return STANDARD_RULE

    def forwards_end_to_end(self, rule: Rule) -> bool:
        """Whether a shared fetch under ``rule`` carries every end-to-end header."""
        return self.end_to_end_headers or rule.end_to_end_headers

    def upstream_url(self, host: str, path_and_query: str) -> str:
        base = self.origin.rstrip("/") if self.origin else f"{self.scheme}://{host}"
        return base + path_and_query


def host_matches(pattern: str, host: str) -> bool:
    """Exact name, or ``*.suffix`` for any name strictly below ``suffix``."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def find_upstream(upstreams: tuple[Upstream, ...], host: str) -> Upstream | None:
    """The first entry serving ``host`` (exact names before wildcards), or None."""
    host = host.lower().rstrip(".")
    for upstream in upstreams:
        if host in upstream.hosts:
            return upstream
    for upstream in upstreams:
        if upstream.serves(host):
            return upstream
    return None
