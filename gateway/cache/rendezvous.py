"""Rendezvous (highest random weight) hashing: which of a few nodes owns a key.

Every node's score for a key is a hash of (node, key); the highest score owns it, the
next highest takes over when the owner is down.  Every client computes the same order
without talking to the others, and adding or removing a node moves only that node's keys
(squid's CARP, Traffic Server's ``consistent_hash``, varnish's shard director).
"""

from __future__ import annotations

import hashlib
from typing import Sequence


def score(key: str, node: str) -> int:
    digest = hashlib.blake2b(f"{node}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(key: str, nodes: Sequence[str]) -> list[str]:
    """``nodes`` best first for ``key``: the owner, then who takes over from it."""
    return sorted(nodes, key=lambda node: score(key, node), reverse=True)
