"""Single flight across worker processes: every cache key has one owner worker.

The owner is chosen by rendezvous hashing (highest ``hash(key, worker)`` wins, as squid's
CARP picks a parent), so every worker agrees without talking.  A worker serves hits from
the shared store itself; a miss or a revalidation of a key it does not own is sent to the
owner over the owner's UNIX socket (an internal parent hop, marked ``X-Cachegate-Hop``),
whose ``Flights`` make the one upstream request; the asking worker relays the stream to
its client without storing it.  When the owner does not answer (dead, restarting), the
asking worker fetches on its own: a build never waits on a dead worker.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from gateway.cache.fetcher import Fetcher

HOP_HEADER = "x-cachegate-hop"
# A live owner answers its socket at once; past this the asking worker fetches itself.
HOP_CONNECT_SECONDS = 1.0
# Idle connections kept to each sibling: hops come in bursts when a build starts.
HOP_CONNECTIONS = 64
# Request headers a hop does not pass on: they belong to the client's own connection.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "content-length"})


def socket_path(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.sock"


def _score(key: str, worker: int) -> int:
    digest = hashlib.blake2b(f"{worker}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(key: str, workers: int) -> int:
    """The worker (0..workers-1) that fetches ``key``: the same answer in every process,
    and a change in the worker count moves only the keys of the workers added or gone."""
    return max(range(workers), key=lambda worker: _score(key, worker))


def hop_headers(headers: dict[str, str], host: str) -> dict[str, str]:
    """The client's request as the owner should see it: same Host, marked as a hop."""
    sent = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
    sent["host"] = host
    sent[HOP_HEADER] = "1"
    return sent


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """``http://worker-N/...`` connects to worker N's UNIX socket."""

    def __init__(self, reactor, directory: Path) -> None:  # type: ignore[no-untyped-def]
        self.reactor, self.directory = reactor, directory

    def endpointForURI(self, uri):  # type: ignore[no-untyped-def]  # noqa: N802
        worker = int(uri.host.decode().rpartition("-")[2])
        return UNIXClientEndpoint(self.reactor, str(socket_path(self.directory, worker)),
                                  timeout=HOP_CONNECT_SECONDS)


class Owners:
    """This worker's view of the others: who owns a key, and how to reach it."""

    def __init__(self, reactor, me: int, workers: int, directory: Path,  # type: ignore[no-untyped-def]
                 idle_timeout: float) -> None:
        self.me, self.workers, self.directory = me, workers, directory
        self.fetcher = Fetcher(reactor, endpoints=_WorkerSockets(reactor, directory),
                               connect_timeout=HOP_CONNECT_SECONDS, idle_timeout=idle_timeout)
        self.fetcher.pool.maxPersistentPerHost = HOP_CONNECTIONS

    def elsewhere(self, key: str) -> int | None:
        """The owner of ``key`` when it is another worker, else None."""
        owner = owner_of(key, self.workers)
        return None if owner == self.me else owner

    @staticmethod
    def url(worker: int, path: str) -> str:
        return f"http://worker-{worker}{path}"
