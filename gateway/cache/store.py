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
import shutil
import sqlite3
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import diskcache
from twisted.logger import Logger

from gateway.cache.policy import Freshness

log = Logger()

# Bases whose Vary names are memoised: a few MB, the working set of many builds.
VARY_MEMO_SIZE = 65536
# Entries whose metadata is kept in memory after a read: a hit on them costs no SQLite
# query and no JSON decoding (a third of a small hit's time).  About 2 KB each.
HOT_ENTRIES = 8192
MODE_OBJECT = 5  # beyond diskcache's own modes (0-4): JSON metadata + a body file
BODIES = "bodies"  # body files: bodies/<2 hex>/<30 hex>.val under objects/
# SQLite's busy timeout: a write meeting another process's transaction waits this long,
# then fails (a store that is not written is a miss served anyway).  diskcache's default,
# 60 s, would stall the reactor that asked.
BUSY_SECONDS = 0.25
# How often a worker asks SQLite whether another process committed: the question costs
# 5 us, a tenth of a small hit, so it is asked at most this often, not on every hit.
VERSION_SECONDS = 0.005
EXPECT_BATCH = 1000  # expected digests written per transaction
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
        """``asdict``'s JSON without its deep copies (a few percent of a small miss), in
        its field order: the content index finds ``sha256`` before ``extra``."""
        return json.dumps({"url": self.url, "ecosystem": self.ecosystem,
                           "status": self.status, "headers": self.headers,
                           "freshness": vars(self.freshness), "length": self.length,
                           "sha256": self.sha256, "extra": self.extra}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Meta":
        data = json.loads(raw)
        data["headers"] = [tuple(h) for h in data["headers"]]
        data["freshness"] = Freshness(**data["freshness"])
        return cls(**data)


class PinRefused(Exception):
    """A pin set that would not fit in the cache: refused, never evicted silently."""

    def __init__(self, pinned: int, limit: int) -> None:
        super().__init__(f"pinned objects would take {pinned} bytes, more than the cache's "
                         f"size_limit of {limit}: pin fewer or raise cache.size_limit")
        self.pinned, self.limit = pinned, limit


# The content index is an SQLite expression index over the sha256 in each object's row:
# always in step with the rows (eviction, clears and replacements need no bookkeeping).
# Found by position, not json_extract: SQLite rejects the ``Infinity`` that Python writes
# for an immutable object's lifetime.  Inside a JSON string a quote is escaped, so the
# first ``"sha256": "`` is Meta's own field.
_SHA256_OF_ROW = ("substr(CAST(value AS TEXT), instr(CAST(value AS TEXT), '\"sha256\": \"')"
                  " + 11, 64)")
# Small records beside the objects, in the same database (one transaction, one file).
_SIDE_TABLES = (
    # What an index (or a lockfile) says a path's body hashes to.
    "CREATE TABLE IF NOT EXISTS Expected (upstream TEXT NOT NULL, path TEXT NOT NULL,"
    " algorithm TEXT NOT NULL, hex TEXT NOT NULL, source TEXT NOT NULL,"
    " PRIMARY KEY (upstream, path))",
    # The sha256 an immutable URL had when first stored: a tombstone eviction keeps.
    "CREATE TABLE IF NOT EXISTS Seen (url TEXT PRIMARY KEY, sha256 TEXT NOT NULL,"
    " first REAL NOT NULL)",
    # Short-lived facts several worker processes must share (e.g. a client that rejects
    # our CA), each valid until a time.
    "CREATE TABLE IF NOT EXISTS Memo (kind TEXT NOT NULL, name TEXT NOT NULL,"
    " until REAL NOT NULL, PRIMARY KEY (kind, name))",
    "CREATE TABLE IF NOT EXISTS Pin (name TEXT NOT NULL, key TEXT NOT NULL,"
    " PRIMARY KEY (name, key))",
    "CREATE INDEX IF NOT EXISTS Pin_key ON Pin (key)",
)


def _content_index(cache: diskcache.Cache) -> bool:
    """Create the sha256 index; False when this SQLite cannot (then lookups scan)."""
    try:
        cache._sql("DROP INDEX IF EXISTS Cache_sha256")  # a first version's, by json_extract
        cache._sql(f"CREATE INDEX IF NOT EXISTS Cache_sha256_v2 ON Cache ({_SHA256_OF_ROW})"
                   f" WHERE mode = {MODE_OBJECT}")
    except sqlite3.OperationalError:
        return False
    return True


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
    filesystem is atomic and free.  Bodies live in ``bodies/<2 hex>/``: 256 directories
    made once (``make_tree``), where diskcache's own two levels would create a directory
    or two for most of the first 65,536 objects and remove them again as they empty
    (each a journalled metadata write costing more than the rest of a small miss).
    """

    def make_tree(self) -> None:
        for prefix in range(256):
            os.makedirs(os.path.join(self._directory, BODIES, f"{prefix:02x}"), exist_ok=True)

    def filename(self, key: Any = diskcache.core.UNKNOWN,
                 value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        name = uuid.uuid4().hex
        filename = os.path.join(BODIES, name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if not isinstance(value, _Commit):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        try:
            os.replace(value.partial, full_path)
        except FileNotFoundError:  # its directory removed by hand: made again
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.replace(value.partial, full_path)
        return value.meta.length, MODE_OBJECT, filename, sqlite3.Binary(value.meta.to_json())

    def remove(self, file_path: str) -> None:
        """A body file; the directories of the flat tree stay (diskcache's older two
        levels are removed as they empty, as diskcache does)."""
        if not file_path.startswith(BODIES + os.sep):
            return super().remove(file_path)
        try:
            os.remove(os.path.join(self._directory, file_path))
        except OSError:  # another process removed it first
            pass

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode != MODE_OBJECT:
            return super().fetch(mode, filename, value, read)
        return bytes(value), os.path.join(self._directory, filename)


class Store:
    """Objects by key, plus the small records that steer lookups (Vary, apt suites)."""

    def __init__(self, directory: Path, size_limit: int,
                 clock: Callable[[], float] = time.time, worker: str = "") -> None:
        """``worker`` names one of several processes sharing the store (``workers.py``):
        its downloads go to ``partial/<worker>/`` and only its own debris is cleaned; it
        never evicts (the supervisor does, ``evict``), and its memos notice other
        processes' commits.  Without it, this process is the only one."""
        self.directory = directory
        self.clock = clock
        self.worker = worker
        self.partial_dir = directory / "partial" / worker if worker else directory / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        removed = self._clean_partials()
        if removed:
            log.info("removed {count} unfinished downloads left by a previous run",
                     count=removed)
        self.size_limit = size_limit
        # Least-recently-used eviction, done here rather than by diskcache: its LRU policy
        # makes every hit a write transaction (access time), and its cull drops ten
        # entries per insert.  Hits are reads; their access times are written in batches
        # (``flush_access``), and ``evict`` drops only as many entries as the limit needs.
        self.cache = diskcache.Cache(str(directory / "objects"), disk=BodyDisk,
                                     size_limit=size_limit, cull_limit=0, eviction_policy="none",
                                     timeout=BUSY_SECONDS)
        self.cache.disk.make_tree()
        self._version = self._data_version() if worker else 0
        self._version_checked = 0.0
        self.cache._sql("CREATE INDEX IF NOT EXISTS Cache_access_time ON Cache (access_time)")
        self.by_digest = _content_index(self.cache)
        for statement in _SIDE_TABLES:
            self.cache._sql(statement)
        if not worker:  # what the workers of a previous run remembered (e.g. CA rejections)
            self.cache._sql("DELETE FROM Memo")
        self._touched: dict[str, float] = {}
        self._hot: OrderedDict[str, Entry] = OrderedDict()  # recently read entries
        self._vary: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.evictions = 0  # objects dropped to stay under the limit (metrics: churn)

    def _clean_partials(self) -> int:
        count = 0
        for path in self.partial_dir.iterdir():
            if path.is_dir():  # a worker's (at the supervisor's start: all are debris)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            count += 1
        return count

    def _data_version(self) -> int:
        """SQLite's counter of commits made by *other* connections to the database."""
        return self.cache._sql("PRAGMA data_version").fetchone()[0]

    def _notice_other_writers(self) -> None:
        """Forget the memos when another process has committed since we last looked (at
        most every ``VERSION_SECONDS``).  Within that window a memo may name a body that
        was evicted or replaced meanwhile: its file is gone, and opening it fails into a
        miss (bodies are never rewritten in place, so an open file is always whole)."""
        now = self.clock()
        if now < self._version_checked + VERSION_SECONDS:
            return
        self._version_checked = now
        version = self._data_version()
        if version != self._version:
            self._version = version
            self._hot.clear()
            self._vary.clear()

    def close(self) -> None:
        self.flush_access()
        self.cache.close()

    def new_partial(self) -> str:
        """A fresh path in ``partial/`` for a download (same filesystem as the store)."""
        return str(self.partial_dir / f"{uuid.uuid4().hex}.partial")

    def get(self, key: str) -> Entry | None:
        if self.worker:
            self._notice_other_writers()
        entry = self._hot.get(key)
        if entry is None:
            found = self.cache.get(key)
            if not isinstance(found, tuple):
                return None
            raw, path = found
            entry = Entry(key, Meta.from_json(raw), path)
            self._hot[key] = entry
            if len(self._hot) > HOT_ENTRIES:
                self._hot.popitem(last=False)
        else:
            self._hot.move_to_end(key)
        self._touched[key] = self.clock()
        return entry

    def flush_access(self) -> None:
        """Write the access times of the entries read since the last call."""
        if not self._touched:
            return
        rows, self._touched = list(self._touched.items()), {}
        try:
            with self.cache.transact():
                for key, when in rows:
                    self.cache._sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                                    (when, key))
        except (sqlite3.OperationalError, OSError, diskcache.Timeout) as e:
            # A full disk, or another process holding the database: only the LRU order
            # suffers, and an exception here would stop the timer that calls us for the
            # rest of the process's life.
            log.error("cannot record access times: {error}", error=e)

    def commit(self, key: str, meta: Meta, partial: str) -> None:
        """Make ``partial`` (a verified, complete body) the stored object of ``key``."""
        self._hot.pop(key, None)
        self.cache.set(key, _Commit(meta, partial))
        if not self.worker:
            self.evict()

    def evict(self) -> None:
        """Least recently used first, pinned objects never (``pin`` refuses a set of pins
        larger than the limit, so the unpinned ones always suffice)."""
        if self.cache.volume() <= self.size_limit:
            return
        self.flush_access()
        while self.cache.volume() > self.size_limit:
            row = self.cache._sql(
                "SELECT key FROM Cache WHERE key NOT IN (SELECT key FROM Pin)"
                " ORDER BY access_time LIMIT 1").fetchone()
            if row is None:
                return
            if self.delete(row[0]):
                self.evictions += 1

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
        self._hot.pop(key, None)
        return bool(self.cache.delete(key))

    def delete_variants(self, base: str) -> int:
        """Delete every stored response for ``base`` (each variant a ``Vary`` selects):
        what an unsafe request to that URI invalidates.  How many were deleted."""
        low, high = base + "\n", base + "\x0b"  # variant keys are base + "\n" + ...
        rows = self.cache._sql("SELECT key FROM Cache WHERE raw = 1 AND mode = ? AND "
                               "(key = ? OR (key >= ? AND key < ?))",
                               (MODE_OBJECT, base, low, high)).fetchall()
        return sum(self.delete(key) for (key,) in rows)

    def vary(self, base: str) -> tuple[str, ...]:
        """The header names the object at ``base`` was last seen to vary on (memoised:
        it is asked on every request, and changes only when a response says so)."""
        names = self._vary.get(base)
        if names is None:
            value = self.cache.get(_VARY_PREFIX + base)
            names = tuple(value.split(",")) if value else ()
            self._remember_vary(base, names)
        return names

    def _remember_vary(self, base: str, names: tuple[str, ...]) -> None:
        self._vary[base] = names
        self._vary.move_to_end(base)
        if len(self._vary) > VARY_MEMO_SIZE:
            self._vary.popitem(last=False)

    def set_vary(self, base: str, names: tuple[str, ...]) -> None:
        if names != self.vary(base):
            self.cache.set(_VARY_PREFIX + base, ",".join(names))
            self._remember_vary(base, names)

    def suite_changed_at(self, suite: str) -> float:
        """When the apt suite's ``InRelease``/``Release`` last changed (0: never seen)."""
        return float(self.cache.get(_SUITE_PREFIX + suite, 0.0))

    def set_suite_changed(self, suite: str, when: float) -> None:
        self.cache.set(_SUITE_PREFIX + suite, when)

    # -- the content index: stored objects by the sha256 of their body --------------------

    def find_sha256(self, hex_digest: str) -> list[Entry]:
        """Every stored object whose body has this sha256 (one SQL index lookup)."""
        hex_digest = hex_digest.lower()
        if not self.by_digest:  # no index: a scan
            return [e for e in self.entries() if e.meta.sha256 == hex_digest]
        rows = self.cache._sql(
            f"SELECT key, filename, value FROM Cache WHERE mode = {MODE_OBJECT}"
            f" AND {_SHA256_OF_ROW} = ?", (hex_digest,)).fetchall()
        return [Entry(key, Meta.from_json(bytes(value)), os.path.join(self.cache.directory, name))
                for key, name, value in rows]

    # -- expected digests: what indexes and lockfiles say a body must hash to -------------

    def expect(self, upstream: str, rows: Iterable[tuple[str, str, str, str]]) -> int:
        """Record ``(path, algorithm, digest, source)`` rows for ``upstream``'s paths (a
        newer index replaces what an older one said).  Callable from a thread."""
        rows = [(upstream, path, algorithm, value, source)
                for path, algorithm, value, source in rows]
        # In short transactions: a Packages index is tens of thousands of rows, and a
        # commit waiting on this write lock gives up after the busy timeout.
        for start in range(0, len(rows), EXPECT_BATCH):
            with self.cache.transact():
                for row in rows[start:start + EXPECT_BATCH]:
                    self.cache._sql("INSERT OR REPLACE INTO Expected VALUES (?, ?, ?, ?, ?)",
                                    row)
        return len(rows)

    def expected(self, upstream: str, path: str) -> tuple[str, str, str] | None:
        """(algorithm, digest, source) recorded for ``path``, or None."""
        row = self.cache._sql("SELECT algorithm, hex, source FROM Expected"
                              " WHERE upstream = ? AND path = ?", (upstream, path)).fetchone()
        return tuple(row) if row else None  # type: ignore[return-value]

    # -- what immutable URLs held when first stored (outlives eviction: drift) ------------

    def first_seen(self, url: str) -> tuple[str, float] | None:
        row = self.cache._sql("SELECT sha256, first FROM Seen WHERE url = ?", (url,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_seen(self, url: str, sha256: str, when: float) -> None:
        self.cache._sql("INSERT OR REPLACE INTO Seen VALUES (?, ?, ?)", (url, sha256, when))

    # -- memos shared by worker processes ----------------------------------------------

    def remember(self, kind: str, name: str, until: float) -> None:
        self.cache._sql("INSERT OR REPLACE INTO Memo VALUES (?, ?, ?)", (kind, name, until))

    def remembered(self, kind: str, name: str) -> float:
        """Until when ``name`` is remembered as ``kind`` (0: not at all)."""
        row = self.cache._sql("SELECT until FROM Memo WHERE kind = ? AND name = ?",
                              (kind, name)).fetchone()
        return float(row[0]) if row else 0.0

    # -- pins: named sets of keys kept out of eviction ------------------------------------

    def pin(self, name: str, keys: Iterable[str]) -> dict[str, int]:
        """Add ``keys`` to pin set ``name``; ``PinRefused`` (and nothing added) when all
        pinned bytes would exceed the size limit."""
        keys = list(keys)
        with self.cache.transact():
            added = [key for key in keys if self.cache._sql(
                "INSERT OR IGNORE INTO Pin VALUES (?, ?)", (name, key)).rowcount]
            pinned = self.pinned_bytes()
            if pinned > self.size_limit:
                for key in added:  # the set as it was before this call
                    self.cache._sql("DELETE FROM Pin WHERE name = ? AND key = ?", (name, key))
                raise PinRefused(pinned, self.size_limit)
        return {"keys": len(keys), "pinned_bytes": pinned}

    def unpin(self, name: str) -> int:
        with self.cache.transact():
            return self.cache._sql("DELETE FROM Pin WHERE name = ?", (name,)).rowcount

    def pins(self) -> dict[str, dict[str, int]]:
        """Per pin set: keys named, objects stored, their bytes."""
        rows = self.cache._sql(
            "SELECT Pin.name, COUNT(*), COUNT(Cache.key), COALESCE(SUM(Cache.size), 0)"
            " FROM Pin LEFT JOIN Cache ON Cache.key = Pin.key GROUP BY Pin.name").fetchall()
        return {name: {"keys": keys, "stored": stored, "bytes": size}
                for name, keys, stored, size in rows}

    def pinned_bytes(self) -> int:
        row = self.cache._sql("SELECT COALESCE(SUM(size), 0) FROM Cache WHERE key IN"
                              " (SELECT key FROM Pin)").fetchone()
        return int(row[0])

    def entries(self) -> Iterator[Entry]:
        """Every stored object (not the steering records), in no particular order; reading
        them does not count as a use."""
        rows = self.cache._sql("SELECT key, filename, value FROM Cache WHERE mode = ?",
                               (MODE_OBJECT,)).fetchall()
        for key, filename, value in rows:
            yield Entry(key, Meta.from_json(bytes(value)),
                        os.path.join(self.cache.directory, filename))

    def volume(self) -> int:
        return self.cache.volume()
