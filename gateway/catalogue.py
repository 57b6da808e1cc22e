"""The upstream catalogue: which hostnames we serve and how each path is cached.

Policies are data: every ecosystem is one row of ``BUILTIN`` (hostnames, path rules), read
by ``find_upstream`` and ``rule_for``.  Rules are ordered; the first whose regular
expression is found in the path wins; a path no rule matches gets ``standard`` (the
response's own caching headers, RFC 9111).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    digest: str = ""  # "pypi-blake2b": the path names the body's blake2b-256
    apt_index: bool = False  # a dists/ index: revalidated when its suite's InRelease changes

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def matches(self, path: str) -> bool:
        return self._regex.search(path) is not None  # type: ignore[attr-defined]


STANDARD_RULE = Rule("", Policy.STANDARD)


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

    def serves(self, host: str) -> bool:
        return any(host_matches(pattern, host) for pattern in self.hosts)

    def rule_for(self, path: str) -> Rule:
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return STANDARD_RULE

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


# Ten minutes keeps builds fast while letting a new upload show up within one coffee;
# indexes of immutable artifacts change only by addition, so stale-by-minutes is harmless.
INDEX_TTL = 600
# apt's dists/ and Alpine's APKINDEX are signed snapshots that mirrors replace in place.
APT_INDEX_TTL = 300

I, R, P = Policy.IMMUTABLE, Policy.REVALIDATE, Policy.PASS
_APT_RULES = (
    Rule(r"/by-hash/", I),
    Rule(r"/pool/.*\.(deb|udeb|dsc|tar\.[a-z0-9]+|diff\.gz|buildinfo|changes)$", I),
    Rule(r"/dists/", R, APT_INDEX_TTL, apt_index=True),
)
_MAVEN_RULES = (
    Rule(r"/maven-metadata\.xml(\.[a-z0-9]+)?$", R, INDEX_TTL),
    Rule(r"-SNAPSHOT/", R, INDEX_TTL),
    Rule(r"\.(jar|pom|war|aar|module|zip|tar\.gz|asc|md5|sha1|sha256|sha512)$", I),
)

BUILTIN: tuple[Upstream, ...] = (
    Upstream("debian", ("deb.debian.org", "security.debian.org", "cdn-fastly.deb.debian.org",
                        "ftp.debian.org", "debian.map.fastlydns.net"), _APT_RULES),
    # Country mirrors (*.archive.ubuntu.com) and ports often lack HTTPS; apt verifies
    # signatures either way.
    Upstream("ubuntu", ("archive.ubuntu.com", "*.archive.ubuntu.com", "security.ubuntu.com",
                        "ports.ubuntu.com"), _APT_RULES, "http"),
    Upstream("alpine", ("dl-cdn.alpinelinux.org",), (
        Rule(r"/APKINDEX\.tar\.gz$", R, APT_INDEX_TTL),
        Rule(r"\.apk$", I),
    )),
    Upstream("pypi", ("pypi.org", "files.pythonhosted.org"), (
        # The path names the file's blake2b-256; a PEP 658 ``.metadata`` (or ``.asc``)
        # beside it shares the wheel's path, so its digest is not in its URL.
        Rule(r"^/packages/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}/[^/]+(?<!\.metadata)(?<!\.asc)$", I,
             digest="pypi-blake2b"),
        Rule(r"^/packages/", I),
        Rule(r"^/simple/", R, INDEX_TTL),
        Rule(r"^/pypi/[^/]+/([^/]+/)?json$", R, INDEX_TTL),
    )),
    Upstream("npm", ("registry.npmjs.org", "registry.yarnpkg.com"), (
        Rule(r"^/-/npm/v1/security/", P),  # npm audit: POSTs and per-project answers
        Rule(r"/-/[^/]+\.tgz$", I),
        Rule(r"^/(@[^/]+(/|%2[fF]))?[^/@][^/]*/?$", R, INDEX_TTL),  # packuments, scoped or not
    )),
    Upstream("maven", ("repo1.maven.org", "repo.maven.apache.org"), _MAVEN_RULES),
    Upstream("go", ("proxy.golang.org",), (
        Rule(r"/@v/[^/]+\.(zip|mod|info)$", I),
        Rule(r"/@v/list$|/@latest$", R, INDEX_TTL),
    )),
    Upstream("crates", ("static.crates.io", "index.crates.io"), (
        Rule(r"^/crates/", I),
        Rule(r"^/config\.json$|^/[^/]+(/[^/]+){0,2}$", R, INDEX_TTL),
    )),
    Upstream("rubygems", ("rubygems.org", "index.rubygems.org"), (
        Rule(r"^/(gems/[^/]+\.gem|quick/Marshal\.4\.8/[^/]+\.gemspec\.rz)$", I),
        Rule(r"^/(info/|versions$|names$|specs\.4\.8\.gz$|latest_specs\.4\.8\.gz$)", R, INDEX_TTL),
        Rule(r"^/api/", P),
    )),
    Upstream("gradle", ("services.gradle.org",), (
        Rule(r"^/distributions/[^/]+\.(zip|sha256)$", I),
    )),
)
del I, R, P
