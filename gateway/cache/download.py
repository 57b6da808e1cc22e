"""A download in progress: an upstream body written to a partial file as it arrives, which
any number of readers follow at their own pace.

Memory stays bounded whatever the object size (bytes go straight to the file; readers
``pread`` them back), and a slow reader never slows the download.  A small body that is
never stored (a relay) goes to an anonymous memory file instead (``memfd``): creating a
file on disk costs more than the rest of such a request.  When the body ends it
is verified (length, and a digest where the URL names one) before anyone may treat it as
complete; a digest-checked body holds back its last byte until then, so no client ever
sees a complete-looking body that fails verification.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import TYPE_CHECKING, Callable, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cache.rules import Digest

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

log = Logger()

Watcher = Callable[[], None]

# A full cache filesystem must not fail a build: the rest of the body is streamed through
# from memory, never stored.  Past this many bytes held for the slowest reader the upstream
# is paused (TCP pushes back on it), and resumed below half of it.
MAX_SPILL = 4 * 2**20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class VerificationError(Exception):
    """The body does not match what the response or the URL promised; ``digest`` is the
    promise it broke (None: the length)."""

    def __init__(self, reason: str, digest: Digest | None = None) -> None:
        super().__init__(reason)
        self.digest = digest


def _compare(digest: Digest, got: str) -> None:
    if got != digest.hex:
        source = f" ({digest.source})" if digest.source else ""
        raise VerificationError(f"{digest.algorithm} {got} != {digest.hex} expected{source}",
                                digest)


def _file_digest(digest: Digest, path: str) -> str:
    """A digest of the whole body file (not a hash of its bytes: Go's ``h1:`` of a zip's
    files), read once after the last byte; an unreadable body matches nothing."""
    try:
        return digest.of_file(path)  # type: ignore[misc]
    except Exception as e:  # a malformed archive is a mismatch, not a crash
        return f"unreadable: {e}"


class Download:
    """An upstream body being written to ``path``; readers follow it with ``pread``."""

    def __init__(self, path: str | None, length: int | None,
                 expected: Digest | Sequence[Digest] | None = None,
                 in_thread: Callable[..., "Deferred"] | None = None) -> None:
        self.path = path
        self.length = length  # from Content-Length, when the upstream sent one
        # The digests the URL, an index, a lockfile or the first copy promise.
        self.checks: tuple[Digest, ...] = (expected,) if isinstance(expected, Digest) else \
            tuple(expected or ())
        self.expected = self.checks[0] if self.checks else None
        self.size = 0
        self.done = False
        self.error: Failure | None = None
        self.sha256 = hashlib.sha256()
        # Each promised digest's hasher, but for the sha256 every body gets anyway and
        # digests of the whole file (``Digest.of_file``), computed when the body ends.
        self._hashers = [(d, d.hasher()) for d in self.checks
                         if d.algorithm != "sha256" and d.of_file is None]
        # Whole-file digests read the body again: in a thread when given one (a module
        # zip of tens of MB must not stall the reactor), else here.
        self._in_thread = in_thread
        self._ending = False  # the body has ended; whole-file digests being computed
        if path is None:  # never stored: memory, read back like a file
            self._write_fd = os.memfd_create("cachegate-relay", os.MFD_CLOEXEC)
            self._read_fd: int | None = os.dup(self._write_fd)
        else:
            self._write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._read_fd = os.open(path, os.O_RDONLY)
        self._watchers: list[Watcher] = []
        self._on_finish: list[Callable[["Download"], None]] = []
        # Disk full: bytes from ``on_disk`` on live in ``_tail`` (from ``_tail_start``).
        self.spilled = False
        self.on_disk = 0
        self._tail = bytearray()
        self._tail_start = 0
        self._positions: dict[Watcher, int] = {}
        self._producer = None  # the upstream body's transport, to pause when spilling
        self._paused = False

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None

    def available(self) -> int:
        """How many bytes readers may send now."""
        if self.expected is not None and not self.done:
            return max(0, self.size - 1)
        return self.size

    # -- the writing side (a fetcher's body sink) ---------------------------------------

    def attach_producer(self, producer) -> None:  # type: ignore[no-untyped-def]
        """The upstream body's transport: paused while spilled bytes pile up."""
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self.finished or self._ending:
            return
        if self.spilled:
            self._tail += data
        else:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view):]
            except OSError as e:
                if e.errno not in _DISK_FULL:
                    log.error("cannot write download {path}: {error}", path=self.path, error=e)
                    self.finish(Failure(e))
                    return
                self._spill(bytes(view), e)
        self.size += len(data)
        self.sha256.update(data)
        for _, hasher in self._hashers:
            hasher.update(data)
        self._notify()
        if self.spilled:
            self._trim()

    def _spill(self, unwritten: bytes, error: OSError) -> None:
        log.error("cache filesystem full ({error}): streaming {path} through without "
                  "storing it", error=error.strerror, path=self.path)
        self.spilled = True
        self.on_disk = self._tail_start = os.fstat(self._write_fd).st_size
        self._tail += unwritten

    def read_spilled(self, pos: int, size: int) -> bytes:
        """Bytes from ``pos`` (at or past ``on_disk``) held in memory; b"" if trimmed."""
        if pos < self._tail_start:
            return b""
        start = pos - self._tail_start
        return bytes(self._tail[start:start + size])

    def position(self, watcher: Watcher, pos: int) -> None:
        """A reader's progress: spilled bytes every reader has sent are dropped."""
        self._positions[watcher] = pos
        if self.spilled:
            self._trim()

    def _trim(self) -> None:
        lowest = min(self._positions.values(), default=self._tail_start + len(self._tail))
        drop = min(len(self._tail), lowest - self._tail_start)
        if drop > 0:
            del self._tail[:drop]
            self._tail_start += drop
        self._push_back()

    def _push_back(self) -> None:
        if self._producer is None or self.finished:
            return
        if not self._paused and len(self._tail) > MAX_SPILL:
            self._paused = True
            self._producer.pauseProducing()
        elif self._paused and len(self._tail) < MAX_SPILL // 2:
            self._paused = False
            self._producer.resumeProducing()

    @property
    def pushing_back(self) -> bool:
        """The upstream is paused for slow readers: its silence is ours, not a stall."""
        return self._paused

    def joinable(self) -> bool:
        """Whether a new reader from byte 0 can still get every byte (spilled bytes are
        dropped once the readers present have sent them)."""
        return not self.spilled or self._tail_start == self.on_disk

    @property
    def storable(self) -> bool:
        """Complete, verified and wholly on disk."""
        return self.done and not self.spilled

    def finish(self, failure: Failure | None) -> None:
        if self.finished or self._ending:
            return
        os.close(self._write_fd)
        if failure is None:
            try:
                self._verify()
            except VerificationError as e:
                failure = Failure(e)
        if failure is None and any(d.of_file for d in self.checks):
            if self._in_thread is not None:
                self._ending = True
                d = self._in_thread(self._verify_files)
                d.addCallbacks(lambda _: self._complete(None), self._complete)
                return
            try:
                self._verify_files()
            except VerificationError as e:
                failure = Failure(e)
        self._complete(failure)

    def _complete(self, failure: Failure | None) -> None:
        self._ending = False
        if failure is None:
            self.done = True
        else:
            self.error = failure
        for callback in self._on_finish:
            callback(self)
        self._discard_uncommitted()
        self._notify()
        self._close_reader()

    def _discard_uncommitted(self) -> None:
        """Remove the partial file unless a finish callback committed (renamed) it."""
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _verify(self) -> None:
        if self.length is not None and self.size != self.length:
            raise VerificationError(f"got {self.size} bytes, Content-Length said {self.length}")
        hashers = dict((id(d), h) for d, h in self._hashers)
        for digest in self.checks:
            if digest.of_file is None:
                _compare(digest, hashers.get(id(digest), self.sha256).hexdigest())

    def _verify_files(self) -> None:
        """The whole-file digests (blocking: reads the body again)."""
        for digest in self.checks:
            if digest.of_file is not None:
                _compare(digest, _file_digest(digest, self.path))

    @property
    def verified(self) -> list[str]:
        """What a complete body was checked against: ``algorithm (source)`` each."""
        return [f"{d.algorithm} ({d.source})" if d.source else d.algorithm
                for d in self.checks]

    def on_finish(self, callback: Callable[["Download"], None]) -> None:
        """Run ``callback(self)`` when the body ends, before readers are told."""
        self._on_finish.append(callback)

    # -- the reading side ----------------------------------------------------------------

    def open_reader(self) -> int:
        """A file descriptor of the body for one reader, valid after commit or unlink."""
        assert self._read_fd is not None, "open_reader after the download finished"
        return os.dup(self._read_fd)

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        self._positions.pop(watcher, None)
        if self.spilled:
            self._trim()

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    def _close_reader(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
