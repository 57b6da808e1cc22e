"""RubyGems: gems and gemspecs are immutable, the compact index is revalidated, the API
is never stored."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

ROWS = (
    Upstream("rubygems", ("rubygems.org", "index.rubygems.org"), (
        Rule(r"^/(gems/[^/]+\.gem|quick/Marshal\.4\.8/[^/]+\.gemspec\.rz)$", Policy.IMMUTABLE),
        Rule(r"^/(info/|versions$|names$|specs\.4\.8\.gz$|latest_specs\.4\.8\.gz$)",
             Policy.REVALIDATE, INDEX_TTL),
        Rule(r"^/api/", Policy.PASS),
    )),
)
