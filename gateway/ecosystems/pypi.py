"""PyPI: files named by their blake2b-256, simple and JSON indexes revalidated."""

from __future__ import annotations

import re

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

BLAKE2B = "pypi-blake2b"
# A wheel: {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl (names use "_").
_WHEEL = re.compile(r"^([^-]+)-([^-]+)(-[0-9][^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
# An sdist: {name}-{version}.tar.gz|.zip|...; the version starts after the last "-" that
# a digit follows.
_SDIST = re.compile(r"^(.+?)-([0-9][^-]*)\.(tar\.gz|tar\.bz2|tar\.xz|zip|tgz|egg)$")


def normalise(name: str) -> str:
    """PEP 503's normal form, as purl's pypi type wants it."""
    return re.sub(r"[-_.]+", "-", name).lower()


class PyPI(Ecosystem):
    """``files.pythonhosted.org/packages/xx/yy/<rest of the blake2b-256>/name``."""

    digest_schemes = frozenset({BLAKE2B})

    def expected_digest(self, rule: Rule, path: str) -> Digest | None:
        if rule.digest != BLAKE2B:
            return None
        parts = path.partition("?")[0].split("/")  # /packages/aa/bb/<60>/name
        return Digest("blake2b-256", "".join(parts[2:5]))

    def package_of(self, path: str) -> Package | None:
        bare = path.partition("?")[0]
        if not bare.startswith("/packages/"):
            return None
        filename = bare.rsplit("/", 1)[-1]
        m = _WHEEL.match(filename) or _SDIST.match(filename)
        return Package("pypi", normalise(m.group(1)), m.group(2)) if m else None


ROWS = (
    Upstream("pypi", ("pypi.org", "files.pythonhosted.org"), (
        # The path names the file's blake2b-256; a PEP 658 ``.metadata`` (or ``.asc``)
        # beside it shares the wheel's path, so its digest is not in its URL.
        Rule(r"^/packages/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}/[^/]+(?<!\.metadata)(?<!\.asc)$",
             Policy.IMMUTABLE, digest=BLAKE2B),
        Rule(r"^/packages/", Policy.IMMUTABLE),
        Rule(r"^/simple/", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"^/pypi/[^/]+/([^/]+/)?json$", Policy.REVALIDATE, INDEX_TTL),
    ), ecosystem=PyPI()),
)
