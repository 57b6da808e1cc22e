"""Which names we answer ourselves: every hostname of the upstream catalogue and the local
names resolve to the gateway, so clients fetch through the cache.

Names are compared as tuples of lower-cased wire labels, not as dotted strings: a label
that itself contains a dot (legal on the wire) must not pass for two labels.
"""

from __future__ import annotations

from typing import Iterable

from gateway.cache.rules import Upstream

Labels = tuple[bytes, ...]


def name_labels(name: str | Labels) -> Labels:
    """``"Deb.Debian.ORG."`` or wire labels → lower-cased labels, root = ``()``."""
    if isinstance(name, str):
        name = tuple(label.encode("ascii") for label in name.rstrip(".").split(".") if label)
    return tuple(label.lower() for label in name)


class RedirectRules:
    """Exact names and ``*.suffix`` patterns (names strictly below ``suffix``), as in
    ``gateway.cache.rules.host_matches``; case-insensitive."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[Labels] = set()
        self.suffixes: set[Labels] = set()
        for pattern in patterns:
            if pattern.startswith("*."):
                self.suffixes.add(name_labels(pattern[2:]))
            else:
                self.exact.add(name_labels(pattern))
        self.deepest = max((len(s) for s in self.suffixes), default=0)

    @classmethod
    def from_catalogue(cls, upstreams: Iterable[Upstream], local_names: Iterable[str]
                       ) -> "RedirectRules":
        """Every host pattern of every upstream entry, plus the local names."""
        return cls([*(h for u in upstreams for h in u.hosts), *local_names])

    def matches(self, name: str | Labels) -> bool:
        """Also true for service names under a redirected name (``_http._tcp.NAME``, the SRV
        records apt asks for): forwarding those would let the real zone point clients
        around the cache, and waits on the forwarders for nothing."""
        labels = name_labels(name)
        while labels and labels[0].startswith(b"_"):
            labels = labels[1:]
        if labels in self.exact:
            return True
        # A suffix must leave at least one label in front of it ("strictly below").
        first = max(1, len(labels) - self.deepest)
        return any(labels[i:] in self.suffixes for i in range(first, len(labels)))
