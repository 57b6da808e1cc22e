"""Counters of what the gateway served: per ecosystem and per client address."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

# Labels a response is served with; "bytes from cache" are the first three.
FROM_CACHE = frozenset({"HIT", "REVALIDATED", "STALE"})


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # by label
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0

    def add(self, label: str, sent: int) -> None:
        self.requests[label] += 1
        if label in FROM_CACHE:
            self.bytes_from_cache += sent
        else:
            self.bytes_from_upstream += sent

    def as_dict(self) -> dict:
        hits = sum(self.requests[label] for label in FROM_CACHE)
        total = sum(self.requests.values())
        return {"requests": dict(self.requests), "hit_ratio": hits / total if total else 0.0,
                "bytes_from_cache": self.bytes_from_cache,
                "bytes_from_upstream": self.bytes_from_upstream}


@dataclass
class Stats:
    total: Tally = field(default_factory=Tally)
    by_ecosystem: defaultdict = field(default_factory=lambda: defaultdict(Tally))
    by_client: defaultdict = field(default_factory=lambda: defaultdict(Tally))

    def record(self, ecosystem: str, client: str, label: str, sent: int) -> None:
        for tally in (self.total, self.by_ecosystem[ecosystem], self.by_client[client]):
            tally.add(label, sent)

    def as_dict(self) -> dict:
        return {"total": self.total.as_dict(),
                "ecosystems": {k: v.as_dict() for k, v in sorted(self.by_ecosystem.items())},
                "clients": {k: v.as_dict() for k, v in sorted(self.by_client.items())}}
