"""The built-in catalogue: every ecosystem module's rows, in one table.

Adding an ecosystem is one module with ``ROWS`` (and an ``Ecosystem`` subclass for what
only it knows) plus its name here.  Users extend or override entries in the config.
"""

from __future__ import annotations

from gateway.cache.rules import Upstream
from gateway.ecosystems import alpine, apt, crates, go, gradle, maven, npm, pypi, rubygems

_MODULES = (apt, alpine, pypi, npm, maven, go, crates, rubygems, gradle)

BUILTIN: tuple[Upstream, ...] = tuple(row for module in _MODULES for row in module.ROWS)

# The ``digest`` names a rule in the config may give: those some ecosystem checks.
DIGEST_SCHEMES = frozenset().union(*(u.ecosystem.digest_schemes for u in BUILTIN))
