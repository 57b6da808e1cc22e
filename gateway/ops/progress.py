"""Progress of long downloads in the access log: bytes so far and the rate, every few seconds.

A download that ends before the first tick (nearly all of them) logs nothing here; its
access-log line says everything.  The timer is the reactor's, so tests drive it with a
``Clock``.
"""

from __future__ import annotations

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.cache.download import Download
from gateway.ops.humanize import human_bytes

log = Logger()

# Often enough to see a stalled or crawling upstream, rare enough not to flood the log.
PROGRESS_INTERVAL = 5.0


class ProgressLog:
    """Logs one download's progress every ``interval`` seconds until it finishes."""

    def __init__(self, reactor, download: Download, url: str,  # type: ignore[no-untyped-def]
                 interval: float) -> None:
        self.reactor, self.download, self.url = reactor, download, url
        self.last_size, self.last_time = download.size, reactor.seconds()
        self.loop = LoopingCall(self.tick)
        self.loop.clock = reactor
        self.interval = interval

    def start(self) -> None:
        self.download.on_finish(lambda _: self.stop())
        self.loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def tick(self) -> None:
        now, size = self.reactor.seconds(), self.download.size
        rate = (size - self.last_size) / (now - self.last_time) if now > self.last_time else 0.0
        self.last_size, self.last_time = size, now
        total = self.download.length
        log.info("downloading {url}: {bytes}B{of} at {rate}/s", url=self.url, bytes=size,
                 of=f" of {total}B ({size * 100 // total}%)" if total else "",
                 rate=human_bytes(rate), length=total, bytes_per_s=int(rate))


def watch_progress(reactor, download: Download, url: str,  # type: ignore[no-untyped-def]
                   interval: float | None = None) -> None:
    """Log ``download``'s progress at INFO while it lasts (see ``PROGRESS_INTERVAL``)."""
    if download.finished:
        return
    ProgressLog(reactor, download, url, interval or PROGRESS_INTERVAL).start()
