"""PyPI: files named by their blake2b-256, simple and JSON indexes revalidated."""

from __future__ import annotations

from gateway.cache.rules import Digest, Ecosystem, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

BLAKE2B = "pypi-blake2b"


class PyPI(Ecosystem):
    """``files.pythonhosted.org/packages/xx/yy/<rest of the blake2b-256>/name``."""

    digest_schemes = frozenset({BLAKE2B})

    def expected_digest(self, rule: Rule, path: str) -> Digest | None:
        if rule.digest != BLAKE2B:
            return None
        parts = path.partition("?")[0].split("/")  # /packages/aa/bb/<60>/name
        return Digest("blake2b-256", "".join(parts[2:5]))


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
