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
        # gem install's first request, HEAD index.rubygems.org/: a 200 there means "use the
        # compact index".  Revalidated like the index, so a warm build (and one during an
        # outage) needs nothing upstream; left to `standard`, it went upstream every time.
        Rule(r"^/$", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"^/api/", Policy.PASS),
    )),
)
