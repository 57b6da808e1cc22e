"""Go module proxy: versions are immutable, version lists revalidated."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

ROWS = (
    Upstream("go", ("proxy.golang.org",), (
        Rule(r"/@v/[^/]+\.(zip|mod|info)$", Policy.IMMUTABLE),
        Rule(r"/@v/list$|/@latest$", Policy.REVALIDATE, INDEX_TTL),
    )),
)
