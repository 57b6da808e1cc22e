"""npm: tarballs are immutable, packuments revalidated, audits never stored."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

ROWS = (
    Upstream("npm", ("registry.npmjs.org", "registry.yarnpkg.com"), (
        Rule(r"^/-/npm/v1/security/", Policy.PASS),  # npm audit: POSTs, per-project answers
        Rule(r"/-/[^/]+\.tgz$", Policy.IMMUTABLE),
        # packuments, scoped or not
        Rule(r"^/(@[^/]+(/|%2[fF]))?[^/@][^/]*/?$", Policy.REVALIDATE, INDEX_TTL),
    )),
)
