"""crates.io: ``.crate`` files are immutable, the sparse index is revalidated."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

ROWS = (
    Upstream("crates", ("static.crates.io", "index.crates.io"), (
        Rule(r"^/crates/", Policy.IMMUTABLE),
        Rule(r"^/config\.json$|^/[^/]+(/[^/]+){0,2}$", Policy.REVALIDATE, INDEX_TTL),
    )),
)
