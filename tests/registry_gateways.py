"""The registry mirror in the test process, on a loopback port, with chosen registries'
``origin`` pointed at a test upstream (the fake of tests/registry_origin.py, or Debian's
docker-registry of tests/oci_images.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from twisted.internet import defer, reactor

from gateway.cache.fetcher import Fetcher
from gateway.cache.stats import Stats
from gateway.cache.store import Store
from gateway.ecosystems.images import REGISTRIES
from gateway.front.registry import MirrorResource, MirrorSite, RegistryClient, RegistryMirror
from tests.http_client import fetch
from tests.oci_images import ACCEPT_ALL


class Mirror:
    """A mirror on 127.0.0.1 with the ``names`` registries fetched from ``origin_url``."""

    def __init__(self, directory: Path, origin_url: str,
                 names: tuple[str, ...] = ("dockerhub", "ghcr"), port: int = 0,
                 credentials: dict[str, str] | None = None,
                 **options) -> None:  # type: ignore[no-untyped-def]
        registries = tuple(replace(r, origin=origin_url) if r.name in names else r
                           for r in REGISTRIES)
        self.store = Store(directory / "cache", 2**30, reactor.seconds)
        self.fetcher = Fetcher(reactor, connect_timeout=2, idle_timeout=5)
        self.client = RegistryClient(reactor, self.fetcher, credentials)
        self.stats = Stats()
        self.mirror = RegistryMirror(reactor, self.store, self.client, registries,
                                     stats=self.stats, **options)
        self.listener = reactor.listenTCP(port, MirrorSite(MirrorResource(self.mirror)),
                                          interface="127.0.0.1")

    @property
    def port(self) -> int:
        return self.listener.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, method: str = "GET", **headers: str):  # type: ignore[no-untyped-def]
        """``method path`` as a registry client sends it (accepting every manifest type);
        keyword headers with ``_`` for ``-``."""
        sent = {"accept": ACCEPT_ALL, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return fetch(self.port, "127.0.0.1", path, sent, method)

    @defer.inlineCallbacks
    def close(self):  # type: ignore[no-untyped-def]
        yield self.listener.stopListening()
        yield self.fetcher.close()
        self.store.close()
