"""RubyGems: gems and gemspecs are immutable, the compact index is revalidated, the API
is never stored.

The compact index's ``/info/<gem>`` lists every version with ``checksum:<sha256>`` of its
``.gem``: recorded when the gateway stores it, checked when a gem is filled."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

_INFO = re.compile(r"^/info/([^/]+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# /gems/<name>-<version>[-<platform>].gem: the version is the first "-" part that starts
# with a digit (a name with such a part is read wrongly: gem names rarely have one).
_GEM = re.compile(r"^/gems/(.+?)-([0-9][^-]*)(?:-(.+))?\.gem$")


def info_checksums(text: str) -> Iterator[tuple[str, str]]:
    """(version[-platform], sha256) of each line of a compact index info file:
    ``1.0.0 dep:>= 1|checksum:<hex>,ruby:>= 2.7``."""
    for line in text.splitlines():
        if not line or line == "---":
            continue
        version, _, rest = line.partition(" ")
        requirements = rest.rpartition("|")[2]
        for requirement in requirements.split(","):
            key, _, value = requirement.partition(":")
            if key.strip() == "checksum" and _SHA256.match(value.strip()):
                yield version, value.strip()


class RubyGems(Ecosystem):
    def package_of(self, path: str) -> Package | None:
        m = _GEM.match(path.partition("?")[0])
        if m is None:
            return None
        platform = (("platform", m.group(3)),) if m.group(3) else ()
        return Package("gem", m.group(1), m.group(2), "", platform)

    def publishes_digests(self, path: str) -> bool:
        return path.startswith("/gems/")

    def learns_from(self, path: str) -> bool:
        return _INFO.match(path) is not None

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        name = _INFO.match(path).group(1)  # type: ignore[union-attr]
        for version, sha256 in info_checksums(body.decode("utf-8", "replace")):
            yield f"/gems/{name}-{version}.gem", Digest("sha256", sha256, "compact index")


ROWS = (
    Upstream("rubygems", ("rubygems.org", "index.rubygems.org"), (
        Rule(r"^/(gems/[^/]+\.gem|quick/Marshal\.4\.8/[^/]+\.gemspec\.rz)$", Policy.IMMUTABLE),
        Rule(r"^/(info/|versions$|names$|(latest_|prerelease_)?specs\.4\.8\.gz$)",
             Policy.REVALIDATE, INDEX_TTL),
        # gem install's first request, HEAD index.rubygems.org/: a 200 there means "use the
        # compact index".  Revalidated like the index, so a warm build (and one during an
        # outage) needs nothing upstream; left to `standard`, it went upstream every time.
        Rule(r"^/$", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"^/api/", Policy.PASS),
    ), ecosystem=RubyGems()),
)
