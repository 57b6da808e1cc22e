"""Send a body from a file to one client at the client's pace, following a download that is
still growing.  A push producer: the HTTP channel pauses it when the client's socket buffer
is full and resumes it when drained, so memory per client is one chunk."""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.cache.download import Download

log = Logger()

# Large enough that per-chunk overhead vanishes at loopback speeds, small enough that 500
# clients' worth of chunks is a few tens of MB at most.
CHUNK = 256 * 1024
# A reader that has caught up with a download waits for this much more before writing
# again: fifty readers each writing every 16 KiB the upstream delivers would spend the
# core on per-write overhead (a cold 50-client herd took 10x a single fetch; now ~2x).
MIN_FOLLOW = 128 * 1024


def plain_tcp(transport: object) -> bool:
    """A TCP connection without TLS (not even one upgraded by ``startTLS``)."""
    return isinstance(transport, tcp.Server) and not transport.TLS


def write_now(transport: tcp.Server, data: bytes) -> None:
    """``transport.write``, but sent at once when nothing is queued before it: Twisted
    would queue it and send on the next reactor turn, an extra epoll round trip that is a
    third of a small hit's cost.  What the socket does not take is queued as usual."""
    if len(transport.dataBuffer) - transport.offset + transport._tempDataLen == 0:
        try:
            data = data[transport.socket.send(data):]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # let the transport meet the error its own way
            pass
    if data:
        transport.write(data)


@implementer(IPushProducer)
class FileStreamer:
    """Writes bytes ``start..end`` (inclusive; ``end`` None = until the download ends) of
    ``fd`` to ``request``, then finishes it; aborts the connection if the download fails."""

    def __init__(self, request, fd: int, start: int, end: int | None,  # type: ignore[no-untyped-def]
                 download: Download | None, on_done: Callable[[int, bool], None]) -> None:
        self.request = request
        self.fd = fd
        self.pos = start
        self.end = end
        self.download = download
        self.on_done = on_done  # (bytes sent, completed)
        self.sent = 0
        self.socket = None  # the TCP transport, when the body may go by sendfile
        self.paused = False
        self.closed = False
        self._pumping = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self._close(completed=False))
        if self.download is not None:
            self.download.watch(self._pump)
            self.download.position(self._pump, self.pos)
        self.request.write(b"")  # the status line and headers go out now, not with the body
        if plain_tcp(self.request.transport) and not self.request.chunked:
            self.socket = self.request.transport
        self._pump()

    def _limit(self) -> int | None:
        """One past the last byte we may send now; None once there is nothing more."""
        if self.download is None or self.download.done:
            total = self.download.size if self.download is not None else None
            last = self.end if self.end is not None else (total - 1 if total is not None else -1)
            return last + 1
        available = self.download.available()
        return available if self.end is None else min(available, self.end + 1)

    def _pump(self) -> None:
        if self._pumping or self.closed:
            return
        self._pumping = True
        try:
            while not self.paused and not self.closed:
                limit = self._limit()
                if self.pos < limit and self._worth_sending(limit):
                    self._send(min(CHUNK, limit - self.pos))
                elif self.download is not None and self.download.error is not None:
                    self._abort()
                elif self.download is None or self.download.done or \
                        (self.end is not None and self.pos > self.end):
                    self._finish()
                else:
                    return  # wait for the download to grow
        finally:
            self._pumping = False

    def _worth_sending(self, limit: int) -> bool:
        """Everything we may send, once the body is complete; else a batch of it."""
        if self.download is None or self.download.finished:
            return True
        return limit - self.pos >= MIN_FOLLOW or (self.end is not None and limit == self.end + 1)

    def _send(self, size: int) -> None:
        download = self.download
        if download is not None and download.spilled:
            if self.pos >= download.on_disk:
                return self._send_spilled(size)
            size = min(size, download.on_disk - self.pos)
        if self.socket is not None:
            return self._sendfile(size)
        data = os.pread(self.fd, size, self.pos)
        if not data:  # the file is shorter than promised: never pretend it is complete
            log.error("body file ended early at {pos}", pos=self.pos)
            self._abort()
            return
        self.pos += len(data)
        self.sent += len(data)
        self.request.write(data)

    def _send_spilled(self, size: int) -> None:
        """Bytes the full disk could not take, from the download's memory."""
        data = self.download.read_spilled(self.pos, size)
        if not data:
            log.error("spilled bytes at {pos} already dropped", pos=self.pos)
            return self._abort()
        self.pos += len(data)
        self.sent += len(data)
        self.request.write(data)
        self.download.position(self._pump, self.pos)

    def _sendfile(self, size: int) -> None:
        """Kernel-to-socket copy (``sendfile``): for plain-TCP clients of a body with a
        known length.  Once Twisted's own buffer (the headers) is empty we write past it;
        when the socket is full we wait as Twisted's own producers do: mark the transport's
        producer paused and ask for a write event, whose ``doWrite`` finds the buffer empty
        and resumes the channel, which resumes us."""
        transport = self.socket
        if len(transport.dataBuffer) - transport.offset + transport._tempDataLen == 0:
            try:
                sent = os.sendfile(transport.fileno(), self.fd, self.pos, size)
            except BlockingIOError:
                sent = -1
            except OSError as e:
                log.info("client gone mid-body: {error}", error=e)
                return self._abort()
            if sent == 0:  # end of file before the promised length
                log.error("body file ended early at {pos}", pos=self.pos)
                return self._abort()
            if sent > 0:
                self.pos += sent
                self.sent += sent
                if sent == size:
                    return
        self.paused = True
        transport.producerPaused = True
        transport.startWriting()

    def _finish(self) -> None:
        self._close(completed=True)
        self.request.unregisterProducer()
        self.request.finish()

    def _abort(self) -> None:
        self._close(completed=False)
        self.request.unregisterProducer()
        self.request.transport.abortConnection()

    def _close(self, completed: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.download is not None:
            self.download.unwatch(self._pump)
        os.close(self.fd)
        self.on_done(self.sent, completed)

    # IPushProducer
    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:  # noqa: N802
        self._close(completed=False)
