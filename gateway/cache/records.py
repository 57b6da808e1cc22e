"""Build records: sessions and the responses served to their clients, kept in the store's
database (one file with the objects they name; they survive restarts and are shared by
worker processes, each writing its own rows).

A session is an id, a name, a set of client networks and a time span; a record row is one
response: time, client, URL, cache key, upstream, package (its ecosystem's purl parts, as
JSON), sha256, size, status, the X-Cache label and where the body came from.  Sessions
whose client sets overlap while both are open are each marked ``overlap``: a response to
a shared client is recorded in both, and neither can say the build was alone.

The alternative rejected: a JSONL file per session.  Worker processes would need a lock
or a file each, and replay and export would join them with the store's rows by hand.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from gateway.cache.rules import Package
from gateway.cache.store import Store

_TABLES = (
    "CREATE TABLE IF NOT EXISTS Session (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " clients TEXT NOT NULL, started REAL NOT NULL, stopped REAL,"
    " replay TEXT NOT NULL DEFAULT '', overlap INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS Session_name ON Session (name, started)",
    "CREATE TABLE IF NOT EXISTS Record (session TEXT NOT NULL, time REAL NOT NULL,"
    " client TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL, key TEXT NOT NULL,"
    " upstream TEXT NOT NULL, package TEXT NOT NULL, sha256 TEXT NOT NULL,"
    " size INTEGER NOT NULL, status INTEGER NOT NULL, label TEXT NOT NULL,"
    " source TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1)",
    "CREATE INDEX IF NOT EXISTS Record_session ON Record (session, time)",
)
_RECORD_FIELDS = ("session", "time", "client", "method", "url", "key", "upstream", "package",
                  "sha256", "size", "status", "label", "source", "count")

# Where a response's body came from, by the X-Cache label the handler gives it.
SOURCES = {"HIT": "cache", "REVALIDATED": "cache", "REPLAY": "cache", "MISS": "upstream",
           "STALE": "stale", "PASS": "passthrough", "PASSTHROUGH": "passthrough",
           "ERROR": "error"}


class UnknownSession(LookupError):
    """No session has that id or name."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"no session has the id or name {ref!r}")


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    clients: tuple[str, ...]  # networks, as ipaddress spells them
    started: float
    stopped: float | None = None
    replay: str = ""  # the id of the session this one replays ("" = records)
    overlap: bool = False

    @property
    def open(self) -> bool:
        return self.stopped is None

    def covers(self, client: str) -> bool:
        return covered(self.clients, client)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["clients"] = list(self.clients)
        return doc


def covered(networks: Iterable[str], client: str) -> bool:
    try:
        address = ipaddress.ip_address(client.split("%")[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:  # a dual-stack socket's v4 client
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def networks_overlap(a: Iterable[str], b: Iterable[str]) -> bool:
    nets = [ipaddress.ip_network(n, strict=False) for n in b]
    return any(x.overlaps(y) for x in (ipaddress.ip_network(n, strict=False) for n in a)
               for y in nets if x.version == y.version)


@dataclass(frozen=True)
class Row:
    """One response served to a session's client."""

    session: str
    time: float
    client: str
    method: str
    url: str  # scheme://host/path?query
    key: str  # the store key it was looked up under (the base key when none)
    upstream: str
    package: str  # JSON of the ecosystem's Package, "" when it is not one
    sha256: str  # "" when no complete body was served from a known object
    size: int
    status: int
    label: str
    source: str  # cache | upstream | stale | passthrough | error
    # Identical responses within one written batch (0.1 s) are one row: ``time`` is the
    # first's.  A build that asks for the same URL a thousand times costs a row, not 1000.
    count: int = 1

    @property
    def base(self) -> str:
        return self.key.split("\n", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["package"] = json.loads(self.package) if self.package else None
        return doc


def package_json(package: Package | None) -> str:
    if package is None:
        return ""
    doc = asdict(package)
    doc["qualifiers"] = dict(package.qualifiers)
    return json.dumps(doc, sort_keys=True)


def package_from(doc: dict[str, Any] | str | None) -> Package | None:
    if isinstance(doc, str):
        doc = json.loads(doc) if doc else None
    if not doc:
        return None
    return Package(doc["type"], doc["name"], doc["version"], doc.get("namespace", ""),
                   tuple(sorted((doc.get("qualifiers") or {}).items())))


class Records:
    """The sessions and record rows in ``store``'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        for statement in _TABLES:
            self._sql(statement)

    def _sql(self, *args: Any) -> sqlite3.Cursor:
        """The calling thread's connection (diskcache keeps one per thread)."""
        return self.store.cache._sql(*args)

    def start(self, name: str, clients: Iterable[str], now: float,
              replay: str = "") -> Session:
        """Open a session; an open one on overlapping clients marks both ``overlap``."""
        clients = tuple(str(ipaddress.ip_network(c, strict=False)) for c in clients)
        session = Session(uuid.uuid4().hex[:12], name or "", clients, now, None, replay)
        with self.store.cache.transact():
            others = [s for s in self.open() if networks_overlap(s.clients, clients)]
            self._sql("INSERT INTO Session VALUES (?, ?, ?, ?, NULL, ?, ?)",
                      (session.id, session.name, json.dumps(clients), now, replay,
                       int(bool(others))))
            for other in others:
                self._sql("UPDATE Session SET overlap = 1 WHERE id = ?", (other.id,))
        return self.get(session.id)

    def stop(self, session_id: str, now: float) -> Session:
        self._sql("UPDATE Session SET stopped = ? WHERE id = ? AND stopped IS NULL",
                  (now, session_id))
        return self.get(session_id)

    def get(self, session_id: str) -> Session:
        row = self._sql("SELECT * FROM Session WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise UnknownSession(session_id)
        return _session(row)

    def find(self, ref: str) -> Session:
        """By id, else the latest session of that name."""
        row = self._sql("SELECT * FROM Session WHERE id = ?", (ref,)).fetchone() or \
            self._sql("SELECT * FROM Session WHERE name = ? ORDER BY started DESC LIMIT 1",
                      (ref,)).fetchone()
        if row is None:
            raise UnknownSession(ref)
        return _session(row)

    def open(self) -> list[Session]:
        return [_session(r) for r in self._sql(
            "SELECT * FROM Session WHERE stopped IS NULL ORDER BY started").fetchall()]

    def all(self) -> list[Session]:
        return [_session(r) for r in self._sql(
            "SELECT * FROM Session ORDER BY started").fetchall()]

    def add(self, rows: list[Row] | list[tuple]) -> None:
        """Append rows (``Row``s, or tuples in its field order: what the handler buffers,
        cheaper per response) in one transaction: one write per batch, not per response."""
        values = [row if isinstance(row, tuple) else
                  tuple(getattr(row, f) for f in _RECORD_FIELDS) for row in rows]
        # This thread's own connection and transaction, not diskcache's ``transact``:
        # that one tracks a single transacting thread per cache, and this runs in a
        # thread while the reactor's may be committing an object.
        con = self.store.cache._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                f"INSERT INTO Record VALUES ({', '.join('?' * len(_RECORD_FIELDS))})", values)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def rows(self, session: Session) -> list[Row]:
        """The session's rows in time order (those written after it stopped are not its:
        a worker may serve a response between the stop and hearing of it)."""
        end = session.stopped if session.stopped is not None else float("inf")
        found = self._sql("SELECT * FROM Record WHERE session = ? AND time <= ?"
                          " ORDER BY time, rowid", (session.id, end)).fetchall()
        return [Row(*r) for r in found]

    def add_imported(self, session: Session, rows: list[dict[str, Any]]) -> bool:
        """A session from a bundle, kept with its id (False when it is here already)."""
        try:
            with self.store.cache.transact():
                self._sql("INSERT INTO Session VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (session.id, session.name, json.dumps(list(session.clients)),
                           session.started, session.stopped, session.replay,
                           int(session.overlap)))
                for doc in rows:
                    doc = dict(doc, session=session.id, count=doc.get("count", 1),
                               package=package_json(package_from(doc.get("package"))))
                    self._sql(f"INSERT INTO Record VALUES "
                              f"({', '.join('?' * len(_RECORD_FIELDS))})",
                              tuple(doc[f] for f in _RECORD_FIELDS))
        except sqlite3.IntegrityError:
            return False
        return True


def _session(row: tuple) -> Session:
    sid, name, clients, started, stopped, replay, overlap = row
    return Session(sid, name, tuple(json.loads(clients)), started, stopped, replay,
                   bool(overlap))
