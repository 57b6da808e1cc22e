"""The object store: a size-bounded, least-recently-used diskcache of responses.

One diskcache row per object holds the response's metadata (status, headers, freshness,
digest) and names the body file, so eviction removes both together.  A download is
written to ``partial/`` in the same directory and committed by ``os.replace`` into the
diskcache tree (``BodyDisk.store``), never copied; a partial file is never a cache entry,
and whatever ``partial/`` holds at start is the debris of a crash and is deleted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import diskcache
from twisted.logger import Logger

from gateway.policy import Freshness

log = Logger()

MODE_OBJECT = 5  # beyond diskcache's own modes (0-4): JSON metadata + a body file
_VARY_PREFIX = "vary\n"
_SUITE_PREFIX = "apt-suite\n"


@dataclass
class Meta:
    """Everything stored with a body, JSON-serialisable so a cache outlives code changes."""

    url: str  # the base key: host + path + query
    ecosystem: str
    status: int
    headers: list[tuple[str, str]]  # replayable end-to-end response headers
    freshness: Freshness
    length: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Meta":
        data = json.loads(raw)
        data["headers"] = [tuple(h) for h in data["headers"]]
        data["freshness"] = Freshness(**data["freshness"])
        return cls(**data)


@dataclass(frozen=True)
class Entry:
    """A stored object: its metadata and the path of its body file."""

    key: str
    meta: Meta
    path: str


@dataclass(frozen=True)
class _Commit:
    meta: Meta
    partial: str


class BodyDisk(diskcache.Disk):
    """Commits a finished download by renaming its partial file into the cache tree.

    ``Cache.set(read=True)`` would copy the bytes a second time; a rename within one
    filesystem is atomic and free.
    """

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if not isinstance(value, _Commit):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        os.replace(value.partial, full_path)
        return value.meta.length, MODE_OBJECT, filename, sqlite3.Binary(value.meta.to_json())

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode != MODE_OBJECT:
            return super().fetch(mode, filename, value, read)
        return bytes(value), os.path.join(self._directory, filename)


class Store:
    """Objects by key, plus the small records that steer lookups (Vary, apt suites)."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self.partial_dir = directory / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        removed = self._clean_partials()
        if removed:
            log.info("removed {count} unfinished downloads left by a previous run",
                     count=removed)
        self.size_limit = size_limit
        # cull_limit=0: diskcache would drop ten entries per insert; ``_evict`` drops
        # only as many least-recently-used ones as the limit needs.
        self.cache = diskcache.Cache(str(directory / "objects"), disk=BodyDisk,
                                     size_limit=size_limit, cull_limit=0,
                                     eviction_policy="least-recently-used")

    def _clean_partials(self) -> int:
        count = 0
        for path in self.partial_dir.iterdir():
            path.unlink(missing_ok=True)
            count += 1
        return count

    def close(self) -> None:
        self.cache.close()

    def new_partial(self) -> str:
        """A fresh path in ``partial/`` for a download (same filesystem as the store)."""
        return str(self.partial_dir / f"{uuid.uuid4().hex}.partial")

    def get(self, key: str) -> Entry | None:
        found = self.cache.get(key)
        if not isinstance(found, tuple):
            return None
        raw, path = found
        return Entry(key, Meta.from_json(raw), path)

    def commit(self, key: str, meta: Meta, partial: str) -> None:
        """Make ``partial`` (a verified, complete body) the stored object of ``key``."""
        self.cache.set(key, _Commit(meta, partial))
        self._evict()

    def _evict(self) -> None:
        while self.cache.volume() > self.size_limit:
            row = self.cache._sql("SELECT key FROM Cache ORDER BY access_time LIMIT 1").fetchone()
            if row is None:
                return
            self.cache.delete(row[0])

    def refresh(self, entry: Entry, meta: Meta) -> Entry | None:
        """Store new metadata for an unchanged body (after a 304), without copying it.

        The body is hard-linked to a new partial name and committed like a download; the
        old row's file name is then removed by diskcache.  None if the body was evicted.
        """
        partial = self.new_partial()
        try:
            os.link(entry.path, partial)
        except FileNotFoundError:
            return None
        self.commit(entry.key, meta, partial)
        return self.get(entry.key)

    def delete(self, key: str) -> bool:
        return bool(self.cache.delete(key))

    def vary(self, base: str) -> tuple[str, ...]:
        """The header names the object at ``base`` was last seen to vary on."""
        value = self.cache.get(_VARY_PREFIX + base)
        return tuple(value.split(",")) if value else ()

    def set_vary(self, base: str, names: tuple[str, ...]) -> None:
        if names != self.vary(base):
            self.cache.set(_VARY_PREFIX + base, ",".join(names))

    def suite_changed_at(self, suite: str) -> float:
        """When the apt suite's ``InRelease``/``Release`` last changed (0: never seen)."""
        return float(self.cache.get(_SUITE_PREFIX + suite, 0.0))

    def set_suite_changed(self, suite: str, when: float) -> None:
        self.cache.set(_SUITE_PREFIX + suite, when)

    def entries(self) -> Iterator[Entry]:
        """Every stored object (not the steering records), in no particular order."""
        for key in list(self.cache.iterkeys()):
            if isinstance(key, str) and not key.startswith((_VARY_PREFIX, _SUITE_PREFIX)):
                entry = self.get(key)
                if entry is not None:
                    yield entry

    def volume(self) -> int:
        return self.cache.volume()
