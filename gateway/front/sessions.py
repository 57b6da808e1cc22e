"""The handler's side of build records: which open sessions a client belongs to, the rows
waiting to be written, and what a replayed session may serve.

Asked on every response, so cheap when nothing is open (one attribute test) and memoised
per client address when something is.  Rows are written in batches (``FLUSH_SECONDS``)
by whichever process served them; a worker reloads the open sessions when the supervisor
says they changed (``/_cachegate/sessions``) and on a timer, in case it missed that.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from gateway.cache.records import SOURCES, Records, Row, Session, UnknownSession, package_json
from gateway.cache.rules import Package, Upstream
from gateway.cache.store import PinRefused
from gateway.config import SessionsConfig

log = Logger()

_REPLAYABLE = ("cache", "upstream", "stale")  # bodies that were stored
# Rows are written this often (and at stop, and when asked): one transaction per batch;
# short batches keep the reactor's pause for the write short under heavy load.
FLUSH_SECONDS = 0.1
PACKAGE_MEMO = 16384  # URLs whose package JSON is kept
RELOAD_SECONDS = 5.0  # a worker re-reads the open sessions this often, whatever it heard
DOCKER_BRIDGE = "docker0"
_SIOCGIFADDR, _SIOCGIFNETMASK = 0x8915, 0x891B  # linux/sockios.h


def interface_network(name: str) -> str | None:
    """The IPv4 network of interface ``name`` (``172.17.0.0/16``), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = struct.pack("256s", name[:15].encode())
            address = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, packed)[20:24])
            mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, packed)[20:24])
        except OSError:
            return None
    return str(ipaddress.ip_network(f"{address}/{mask}", strict=False))


def client_networks(clients: tuple[str, ...] | list[str]) -> list[str]:
    """Networks for a client set: "docker" is the Docker bridge's network (none when
    there is no bridge: a session on it records nothing, and says so when started)."""
    out: list[str] = []
    for item in clients:
        if item == "docker":
            found = interface_network(DOCKER_BRIDGE)
            if found:
                out.append(found)
        else:
            out.append(str(ipaddress.ip_network(item, strict=False)))
    return out


@dataclass(frozen=True)
class Recorded:
    """What a replayed session may serve for one URL."""

    key: str
    sha256: str
    status: int
    source: str


class Replay:
    """A session replaying another's record: its served URLs, by base key."""

    def __init__(self, session: Session, source: Session, rows: list[Row]) -> None:
        self.session, self.source = session, source
        self.by_base: dict[str, list[Recorded]] = {}
        for row in rows:
            self.by_base.setdefault(row.base, []).append(
                Recorded(row.key, row.sha256 if row.source in _REPLAYABLE else "",
                         row.status, row.source))

    def lookup(self, base: str, key: str) -> Recorded | None:
        """The recorded response for this URL: the same variant when recorded, else the
        last one with a body."""
        found = self.by_base.get(base)
        if not found:
            return None
        with_body = [r for r in found if r.sha256] or found
        same = [r for r in with_body if r.key == key]
        return (same or with_body)[-1]

    def sha256s(self) -> set[str]:
        return {r.sha256 for rows in self.by_base.values() for r in rows if r.sha256}


def _rows(pending: dict[tuple, list]) -> list[tuple]:
    """Buffered responses as rows in ``Record``'s column order."""
    return [fields[:1] + (first,) + fields[1:] + (count,)
            for fields, (first, count) in pending.items()]


class Sessions:
    """The open sessions of this process's view, and its unwritten rows."""

    def __init__(self, reactor, records: Records, config: SessionsConfig,  # type: ignore[no-untyped-def]
                 worker: str = "") -> None:
        self.reactor, self.records, self.config, self.worker = reactor, records, config, worker
        self.open: list[Session] = []
        self.replays: dict[str, Replay] = {}  # by the replaying session's id
        self._by_client: dict[str, tuple[list[Session], Replay | None]] = {}
        # Row fields but time and count, in order -> [first time, count]: identical
        # responses within a batch are one row.
        self._pending: dict[tuple, list] = {}
        self._flush_call = None
        self._writing: defer.Deferred | None = None  # a batch being written in a thread
        self._idle: list[defer.Deferred] = []
        self._packages: dict[tuple[str, str], str] = {}
        if not worker:
            self.open_standing()
        self.reload()
        if worker:  # in case a word from the supervisor was missed
            self._reloader = task.LoopingCall(self.reload)
            self._reloader.clock = reactor
            self._reloader.start(RELOAD_SECONDS, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", self.flush)

    # -- the sessions ---------------------------------------------------------------------

    def open_standing(self) -> None:
        """``[sessions] record`` names and ``replay``: reopened (or kept) at each start."""
        now = self.reactor.seconds()
        names = {s.name: s for s in self.records.open()}
        for name in self.config.record:
            if name not in names:
                self.records.start(name, client_networks(self.config.clients), now)
        if self.config.replay:
            try:
                source = self.records.find(self.config.replay)
            except UnknownSession:
                log.error("[sessions] replay names no recorded session: {ref}",
                          ref=self.config.replay)
                return
            name = f"replay of {source.name or source.id}"
            self._pin(source)
            if not any(s.replay == source.id for s in names.values()):
                self.records.start(name, client_networks(self.config.clients), now, source.id)

    def _pin(self, source: Session) -> None:
        """Keep a replayed record's objects (``session:<id>``); name those already gone."""
        store = self.records.store
        keys, missing = set(), set()
        for row in self.records.rows(source):
            if row.sha256 and row.source in _REPLAYABLE:
                found = [e.key for e in store.find_sha256(row.sha256)]
                keys.update(found)
                if not found:
                    missing.add(row.url)
        for url in sorted(missing):
            log.error("replayed session {id}: {url} is not in the store", id=source.id,
                      url=url)
        try:
            store.pin(f"session:{source.id}", keys)
        except PinRefused as e:
            log.error("replayed session {id}: {error}", id=source.id, error=e)

    def reload(self) -> None:
        """Re-read the open sessions (after a start or stop, here or in the supervisor)."""
        self.flush()
        self.open = self.records.open()
        replays = {}
        for session in self.open:
            if session.replay:
                replays[session.id] = self.replays.get(session.id) or self._replay(session)
        self.replays = {k: v for k, v in replays.items() if v is not None}
        self._by_client = {}

    def _replay(self, session: Session) -> Replay | None:
        try:
            source = self.records.get(session.replay)
        except UnknownSession:
            log.error("session {id} replays {source}, which is not recorded here",
                      id=session.id, source=session.replay)
            return None
        return Replay(session, source, self.records.rows(source))

    def of_client(self, client: str) -> tuple[list[Session], Replay | None]:
        """The open sessions ``client`` belongs to, and the replay it is held to."""
        found = self._by_client.get(client)
        if found is None:
            sessions = [s for s in self.open if s.covers(client)]
            replay = next((self.replays[s.id] for s in sessions if s.id in self.replays), None)
            found = self._by_client[client] = (sessions, replay)
        return found

    def replay_for(self, client: str) -> Replay | None:
        if not self.replays:
            return None
        return self.of_client(client)[1]

    # -- recording ------------------------------------------------------------------------

    def note(self, client: str, method: str, url: str, key: str, upstream: Upstream,
             path: str, status: int, label: str, sha256: str, size: int) -> None:
        """A response served to ``client``: a row for each open session it belongs to."""
        if not self.open or not self.of_client(client)[0]:
            return
        package = self._package(upstream, path) if sha256 else ""
        self._add(client, method, url, key, upstream.name, package, status, label, sha256,
                  size)

    def note_package(self, client: str, method: str, url: str, key: str, upstream: str,
                     package: Package | None, status: int, label: str, sha256: str,
                     size: int) -> None:
        """``note`` for a front that names the package itself (the registry mirror)."""
        if self.open and self.of_client(client)[0]:
            self._add(client, method, url, key, upstream, package_json(package), status,
                      label, sha256, size)

    def _add(self, client: str, method: str, url: str, key: str, upstream: str, package: str,
             status: int, label: str, sha256: str, size: int) -> None:
        sessions = self.of_client(client)[0]
        now = self.reactor.seconds()
        for session in sessions:
            fields = (session.id, client, method, url, key or url, upstream, package, sha256,
                      size, status, label, SOURCES.get(label, label.lower()))
            seen = self._pending.get(fields)
            if seen is None:
                self._pending[fields] = [now, 1]
            else:
                seen[1] += 1
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(FLUSH_SECONDS, self._flush_in_thread)

    def _package(self, upstream: Upstream, path: str) -> str:
        """The row's package JSON, memoised: a build asks for the same URLs again."""
        found = self._packages.get((upstream.name, path))
        if found is None:
            found = package_json(upstream.ecosystem.package_of(path))
            if len(self._packages) >= PACKAGE_MEMO:
                self._packages.clear()
            self._packages[(upstream.name, path)] = found
        return found

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._pending:
            return
        rows, self._pending = _rows(self._pending), {}
        try:
            self.records.add(rows)
        except Exception as e:  # noqa: BLE001 - a busy or full database: keep them
            log.error("cannot write {count} record rows yet: {error}", count=len(rows),
                      error=e)
            self._keep(rows)

    def _flush_in_thread(self) -> None:
        """The timer's flush: the batch is written in a thread (thousands of rows are
        milliseconds of SQLite that the reactor's other clients need not wait for)."""
        self._flush_call = None
        if not self._pending:
            return
        if self._writing is not None:  # one batch at a time: the next waits its turn
            self._flush_call = self.reactor.callLater(FLUSH_SECONDS, self._flush_in_thread)
            return
        rows, self._pending = _rows(self._pending), {}
        self._writing = d = threads.deferToThreadPool(self.reactor,
                                                      self.reactor.getThreadPool(),
                                                      self.records.add, rows)

        def failed(failure):  # type: ignore[no-untyped-def]
            log.error("cannot write {count} record rows yet: {error}", count=len(rows),
                      error=failure.getErrorMessage())
            self._keep(rows)

        def written(_: Any) -> None:
            self._writing = None
            waiting, self._idle = self._idle, []
            for waiter in waiting:
                waiter.callback(None)
        d.addErrback(failed)
        d.addBoth(written)

    def idle(self) -> defer.Deferred:
        """Fires once no batch is being written in a thread (``flush`` writes the rest):
        after ``reload()`` and this, every row served before is in the database."""
        if self._writing is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _keep(self, rows: list[tuple]) -> None:
        """Rows that could not be written go back in front of the newer ones."""
        kept = {row[:1] + row[2:-1]: [row[1], row[-1]] for row in rows}
        for fields, seen in self._pending.items():
            if fields in kept:
                kept[fields][1] += seen[1]
            else:
                kept[fields] = seen
        self._pending = kept

    def describe(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.open]
