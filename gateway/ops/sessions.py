"""Build records for the operator: ``cachegate session start|stop|ls|show|sbom|run|replay``,
``cachegate export`` and ``cachegate import``, and their admin API endpoints.

- ``GET /api/sessions``; ``POST /api/sessions`` ``{"name"?, "clients"?, "replay"?}`` opens
  one (``replay``: a recorded session's id or name, served hermetically to ``clients``);
- ``GET /api/sessions/REF`` (the session and its rows), ``POST /api/sessions/REF/stop``,
  ``GET /api/sessions/REF/sbom`` (CycloneDX 1.6); REF is an id or a name (the latest);
- ``POST /api/export`` ``{"session"|"pin"|"all", "path"}`` and ``POST /api/import``
  ``{"path", "pin"?}``: bundles written and read by the gateway (files on its host);
  ``GET /api/bundles/progress``: bytes done of the last one.

The gateway process keeps the sessions (``front/sessions.py``); with worker processes the
supervisor tells each worker when they change (``/_cachegate/sessions``) and waits for
them, so a stop returns once every row served before it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from twisted.internet import defer, threads
from twisted.logger import Logger

from gateway.cache.records import Records, Session, UnknownSession
from gateway.cache.store import PinRefused, Store
from gateway.config import Config
from gateway.front.sessions import client_networks
from gateway.ops import bundles
from gateway.ops.sbom import components, sbom_json

log = Logger()

EXIT_OK, EXIT_ERROR = 0, 1
EXIT_NOT_RUN = 127  # a wrapped command that could not be started (as a shell says)


class SessionError(Exception):
    """A request about sessions that cannot be done: ``status`` for the admin API."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def pin_name(session: Session) -> str:
    """The pin set that keeps a replayed session's objects."""
    return f"session:{session.id}"


def replay_missing(store: Store, records: Records, source: Session) -> tuple[list[str], list[str]]:
    """(keys of the stored objects the record names, URLs of those not stored)."""
    keys, missing = [], []
    for row in records.rows(source):
        if not row.sha256 or row.source not in ("cache", "upstream", "stale"):
            continue
        entries = [e for e in store.find_sha256(row.sha256) if os.path.exists(e.path)]
        if entries:
            keys.extend(e.key for e in entries)
        else:
            missing.append(f"{row.url} (sha256 {row.sha256})")
    return sorted(set(keys)), sorted(set(missing))


def session_doc(session: Session, records: Records, with_rows: bool = False) -> dict[str, Any]:
    rows = records.rows(session)
    doc = session.as_dict()
    doc["responses"] = sum(r.count for r in rows)
    doc["packages"] = len(components(rows))
    if with_rows:
        doc["rows"] = [r.as_dict() for r in rows]
    return doc


# -- the live side (the gateway process) ---------------------------------------------------

class SessionService:
    """What the admin endpoints do, on a running ``GatewayService`` (``top``)."""

    def __init__(self, top, reactor) -> None:  # type: ignore[no-untyped-def]
        self.top, self.reactor = top, reactor
        self.live = top.gateway.sessions
        self.records: Records = self.live.records
        self.in_thread = lambda f, *a: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), f, *a)
        self.work = Progress("", 0)  # the bundle being written or read, if any

    def find(self, ref: str) -> Session:
        try:
            return self.records.find(ref)
        except UnknownSession as e:
            raise SessionError(404, str(e)) from None

    def listing(self) -> dict[str, Any]:
        return {"sessions": [s.as_dict() for s in self.records.all()],
                "open": [s.id for s in self.records.open()]}

    def start(self, doc: Any) -> defer.Deferred:
        if not isinstance(doc, dict) or set(doc) - {"name", "clients", "replay"}:
            raise SessionError(400, 'body must be {"name"?, "clients"?: [CIDR...], "replay"?}')
        name, replay = doc.get("name") or "", doc.get("replay") or ""
        clients = doc.get("clients") or list(self.top.config.sessions.clients)
        if not isinstance(name, str) or not isinstance(replay, str) or \
                not isinstance(clients, list) or not all(isinstance(c, str) for c in clients):
            raise SessionError(400, "name and replay are strings, clients a list of networks")
        if name and (len(name) > 100 or not name.isprintable() or "/" in name):
            raise SessionError(400, "a session name is 1-100 printable characters, no '/'")
        try:
            networks = client_networks(clients)
        except ValueError as e:
            raise SessionError(400, f"clients: {e}") from None
        if not networks:
            raise SessionError(400, "no client network: the Docker bridge (docker0) has no "
                                    "address here; name the clients (--clients CIDR)")
        source = self._prepare_replay(replay) if replay else None
        session = self.records.start(name, networks, self.reactor.seconds(),
                                     source.id if source else "")
        log.info("session {id} ({name}) started for {clients}{replay}", id=session.id,
                 name=session.name or "-", clients=" ".join(networks),
                 replay=f", replaying {source.id}" if source else "")
        return self.changed().addCallback(lambda _: self.records.get(session.id).as_dict())

    def _prepare_replay(self, ref: str) -> Session:
        """The replayed session, its objects present and pinned; else an error naming
        what is missing."""
        source = self.find(ref)
        keys, missing = replay_missing(self.top.store, self.records, source)
        if missing:
            raise SessionError(409, f"{len(missing)} objects recorded in session {source.id} "
                                    f"are not in the store: {', '.join(missing[:10])}")
        try:
            self.top.store.pin(pin_name(source), keys)
        except PinRefused as e:
            raise SessionError(409, str(e)) from None
        return source

    def stop(self, ref: str) -> defer.Deferred:
        session = self.find(ref)
        self.records.stop(session.id, self.reactor.seconds())
        d = self.changed()
        d.addCallback(lambda _: session_doc(self.records.get(session.id), self.records))
        d.addCallback(self._stopped)
        return d

    @staticmethod
    def _stopped(doc: dict[str, Any]) -> dict[str, Any]:
        log.info("session {id} stopped: {responses} responses, {packages} packages",
                 **{k: doc[k] for k in ("id", "responses", "packages")})
        return doc

    def show(self, ref: str) -> defer.Deferred:
        return self.changed().addCallback(
            lambda _: session_doc(self.find(ref), self.records, with_rows=True))

    def sbom(self, ref: str) -> defer.Deferred:
        def build(_: Any) -> str:
            session = self.find(ref)
            return sbom_json(session, self.records.rows(session))
        return self.changed().addCallback(build)

    def changed(self) -> defer.Deferred:
        """Reload here, and in every worker (which writes its rows first)."""
        self.live.reload()
        d = self.live.idle()
        d.addCallback(lambda _: tell_workers(self.top, "/_cachegate/sessions"))
        return d

    def export(self, doc: Any) -> defer.Deferred:
        if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
            raise SessionError(400, 'body must be {"session"|"pin"|"all", "path": FILE}')
        d = self.changed()
        d.addCallback(lambda _: self.in_thread(export_to, self.top.store, self.records,
                                               self.top.config, doc, doc["path"],
                                               self._progress("export", 0)))
        return d

    def _progress(self, action: str, total: int) -> Progress:
        """A bundle's progress as ``GET /api/bundles/progress`` reports it (the CLI's bar
        while it waits); told of bytes from the thread doing the work."""
        self.work = work = Progress(action, total)
        return work

    def import_(self, doc: Any) -> defer.Deferred:
        if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
            raise SessionError(400, 'body must be {"path": FILE, "pin"?: NAME}')
        path, pin = doc["path"], doc.get("pin") or bundles.pin_name_for(doc["path"])
        d = self.in_thread(import_from, self.top.store, path, pin, self.reactor.seconds(),
                           self._progress("import", bundles.bundle_size(path)))
        d.addCallback(self._imported)
        return d

    def _imported(self, result: dict[str, Any]) -> dict[str, Any]:
        self.live.reload()  # imported sessions may be replayed now
        return result


class Progress:
    """Bytes done of a bundle's total (``total`` set by ``export_to`` once it knows)."""

    def __init__(self, action: str, total: int) -> None:
        self.action, self.total, self.done = action, total, 0

    def __call__(self, count: int) -> None:
        self.done += count

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "total": self.total, "done": self.done}


def tell_workers(top, path: str) -> defer.Deferred:  # type: ignore[no-untyped-def]
    """POST ``path`` to every live worker's control socket and wait for them all."""
    pool = getattr(top, "pool", None)
    if pool is None:
        return defer.succeed(None)
    from twisted.web.client import readBody

    from gateway.workers import CONTROL_HOST

    owners = top.gateway.owners
    calls = []
    for state in pool.workers:
        if state.pid:
            d = owners.fetcher.request("POST", owners.url(state.index, path),
                                       {"host": CONTROL_HOST})
            d.addCallback(readBody)
            d.addErrback(lambda f, i=state.index: log.error(
                "worker {index} missed {path}: {error}", index=i, path=path,
                error=f.getErrorMessage()))
            calls.append(d)
    return defer.DeferredList(calls, consumeErrors=True)


def export_to(store: Store, records: Records, config: Config, doc: dict[str, Any],
              path: str, progress: bundles.Progress = lambda n: None) -> dict[str, Any]:
    """Write the selected objects' bundle to ``path`` ("-": stdout) via ``partial``."""
    selection = {k: doc[k] for k in ("session", "pin", "all") if doc.get(k)}
    if len(selection) != 1:
        raise SessionError(400, "choose one of session, pin, all")
    session = None
    if "session" in selection:
        try:
            record, entries = bundles.select_session(store, records, selection["session"])
        except UnknownSession as e:
            raise SessionError(404, str(e)) from None
        rows = [r.as_dict() for r in records.rows(record)]
        session = (record, rows, sbom_json(record, records.rows(record)))
    elif "pin" in selection:
        entries = bundles.select_pin(store, selection["pin"])
    else:
        entries = list(store.entries())
    total = sum(e.meta.length for e in {e.meta.sha256: e for e in entries}.values())
    progress = progress if progress is not None else (lambda n: None)
    if hasattr(progress, "total"):
        progress.total = max(total, 1)  # type: ignore[attr-defined]
    if path == "-":
        result = bundles.export_bundle(store, entries, sys.stdout.buffer, config.upstreams,
                                       selection, session, progress)
    else:
        partial = f"{path}.partial"
        with open(partial, "wb") as out:
            result = bundles.export_bundle(store, entries, out, config.upstreams, selection,
                                           session, progress)
        os.replace(partial, path)
    return dict(result.as_dict(), path=path)


def import_from(store: Store, path: str, pin: str, now: float,
                progress: bundles.Progress = lambda n: None) -> dict[str, Any]:
    try:
        source = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise SessionError(400, f"cannot read {path}: {e.strerror}") from None
    with source:
        return bundles.import_bundle(store, source, pin, now, progress).as_dict()


# -- the admin API ----------------------------------------------------------------------

def routes(service: SessionService, path: str, body: Callable[[Any], Any]
           ) -> dict[str, Callable] | None:
    """The handlers for ``path`` (method -> f(request, query) -> JSON-able or Deferred), or
    None when it is not a session or bundle endpoint.  ``body(request)`` reads JSON."""
    if path == "/api/sessions":
        return {"GET": lambda r, q: service.listing(),
                "POST": lambda r, q: service.start(body(r))}
    if path == "/api/export":
        return {"POST": lambda r, q: service.export(body(r))}
    if path == "/api/import":
        return {"POST": lambda r, q: service.import_(body(r))}
    if path == "/api/bundles/progress":
        return {"GET": lambda r, q: service.work.as_dict()}
    if not path.startswith("/api/sessions/"):
        return None
    rest = path[len("/api/sessions/"):]
    if rest.endswith("/stop"):
        ref = unquote(rest[:-len("/stop")])
        return {"POST": lambda r, q: service.stop(ref)}
    if rest.endswith("/sbom"):
        ref = unquote(rest[:-len("/sbom")])
        return {"GET": lambda r, q: service.sbom(ref).addCallback(_Raw)}
    ref = unquote(rest)
    return {"GET": lambda r, q: service.show(ref)}


class _Raw(str):
    """A document already serialised (the SBOM): sent as it is."""


# -- the CLI ----------------------------------------------------------------------------

def add_parsers(commands: Any) -> None:
    session = commands.add_parser(
        "session", help="record what builds fetch; SBOMs; hermetic replay",
        description="A session records every response served to its clients (default: "
                    "the Docker bridge network) while it is open.")
    sub = session.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="open a session; prints its id")
    _who(start)
    stop = sub.add_parser("stop", help="close a session")
    stop.add_argument("ref", metavar="ID", help="a session id or name (the latest)")
    sub.add_parser("ls", help="every session").add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="a session's packages (--json: every response)")
    show.add_argument("ref", metavar="ID")
    show.add_argument("--json", action="store_true")
    sbom = sub.add_parser("sbom", help="a session's CycloneDX 1.6 SBOM")
    sbom.add_argument("ref", metavar="ID")
    sbom.add_argument("-o", "--output", default="-", metavar="FILE", help="default: stdout")
    run = sub.add_parser("run", help="record a command: start, run it, stop; exits with "
                                     "its status",
                         description="cachegate session run [--name N] -- docker build .")
    _who(run)
    run.add_argument("--sbom", metavar="FILE", help="write the SBOM here after the command")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    replay = sub.add_parser(
        "replay", help="run a command served only what a session recorded",
        description="The clients get only the recorded URLs, with the recorded bytes; "
                    "anything else is 403 and nothing goes upstream.")
    replay.add_argument("ref", metavar="ID")
    _who(replay)
    replay.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    export = commands.add_parser(
        "export", help="write stored objects to a tar bundle",
        description="An uncompressed tar (pipe it to zstd): metadata, bodies by sha256, "
                    "and for a session its record and SBOM.")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="ID")
    which.add_argument("--pin", metavar="NAME")
    which.add_argument("--all", action="store_true")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="'-': stdout")
    imp = commands.add_parser(
        "import", help="store a bundle's objects (verified, pinned)",
        description="Each body is checked (sha256, length) before it is stored; objects "
                    "stored with other bytes are drift and are kept.")
    imp.add_argument("file", metavar="FILE", help="'-': stdin")
    imp.add_argument("--pin", metavar="NAME", help="pin set (default: import:<file name>)")
    imp.add_argument("--json", action="store_true")


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="", help="a name to find it by")
    parser.add_argument("--clients", nargs="+", metavar="CIDR", default=None,
                        help='client networks (default: [sessions] clients, "docker")')


def run(args: argparse.Namespace, config: Config) -> int:
    """``cachegate session|export|import``; a known failure is one ``CliError`` line."""
    from gateway.ops.cli import CliError

    try:
        return _run(args, config)
    except (SessionError, bundles.BundleError, UnknownSession) as e:
        raise CliError(str(e)) from None


def _run(args: argparse.Namespace, config: Config) -> int:
    from gateway.ops.admin_client import AdminClient

    if args.command == "export":
        return _export(args, config)
    if args.command == "import":
        return _import(args, config)
    client = AdminClient(config, timeout=None)
    action = args.action
    if action in ("start", "run", "replay"):
        return _start_like(client, args)
    if action == "stop":
        _print_stopped(client.json("POST", f"/api/sessions/{_q(args.ref)}/stop"))
        return EXIT_OK
    if action == "ls":
        return _ls(client, config, args)
    if action == "show":
        return _show(client, config, args)
    assert action == "sbom"
    text = _sbom(client, config, args.ref)
    _write(args.output, text)
    return EXIT_OK


def _q(ref: str) -> str:
    from urllib.parse import quote
    return quote(ref, safe="")


def _start_like(client, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    argv = _command(args)
    doc: dict[str, Any] = {"name": args.name}
    if args.clients:
        doc["clients"] = args.clients
    if args.action == "replay":
        doc["replay"] = args.ref
    if args.action != "start" and not argv:
        raise SessionError(2, f"session {args.action} needs a command after --")
    session = client.json("POST", "/api/sessions", body=doc)
    if args.action == "start":
        print(session["id"])
        return EXIT_OK
    print(f"cachegate: session {session['id']} started for {' '.join(session['clients'])}",
          file=sys.stderr)
    try:
        code = subprocess.call(argv)
    except OSError as e:
        print(f"cachegate: error: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        code = EXIT_NOT_RUN
    finally:
        stopped = client.json("POST", f"/api/sessions/{session['id']}/stop")
        _print_stopped(stopped, sys.stderr)
    if getattr(args, "sbom", None):
        _write(args.sbom, client.request("GET", f"/api/sessions/{session['id']}/sbom").decode())
    return code


def _command(args: argparse.Namespace) -> list[str]:
    """The wrapped command: what follows ``--``.  Options before it (argparse leaves them
    to the remainder after a positional: ``replay ID --clients X -- cmd``) are read here."""
    argv = list(getattr(args, "argv", None) or [])
    if "--" not in argv:
        return argv
    cut = argv.index("--")
    if argv[:cut]:
        extra = argparse.ArgumentParser(prog=f"cachegate session {args.action}")
        _who(extra)
        more = extra.parse_args(argv[:cut])
        args.name = more.name or args.name
        args.clients = more.clients or args.clients
    return argv[cut + 1:]


def _print_stopped(doc: dict[str, Any], stream=None) -> None:  # type: ignore[no-untyped-def]
    stream = stream or sys.stdout
    overlap = " (overlapping another session)" if doc.get("overlap") else ""
    print(f"cachegate: session {doc['id']} stopped: {doc['responses']} responses, "
          f"{doc['packages']} packages{overlap}", file=stream)


def _offline_records(config: Config) -> tuple[Store, Records]:
    store = _open_store(config)
    return store, Records(store)


def _open_store(config: Config) -> Store:
    from gateway.ops.cli import CliError, state_locked

    state = config.server.state_dir
    if not (state / "cache" / "objects").is_dir():
        if state_locked(state):
            raise CliError(f"a cachegate serve holds {state} but its admin API does not answer")
        raise CliError(f"no cache in {state}: the gateway has not run with this state "
                       "directory (see --state-dir)")
    return Store(state / "cache", config.cache.size_limit)


def _ls(client, config: Config, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    if client.running():
        doc = client.json("GET", "/api/sessions")
    else:
        store, records = _offline_records(config)
        with _closing(store):
            doc = {"sessions": [s.as_dict() for s in records.all()],
                   "open": [s.id for s in records.open()]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for s in doc["sessions"]:
        state = "open" if s["stopped"] is None else "stopped"
        flags = " overlap" * bool(s["overlap"]) + (f" replays {s['replay']}" if s["replay"] else "")
        print(f"{s['id']}  {s['name'] or '-':<20} {state:<8} {' '.join(s['clients'])}{flags}")
    return EXIT_OK


def _show(client, config: Config, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    if client.running():
        doc = client.json("GET", f"/api/sessions/{_q(args.ref)}")
    else:
        store, records = _offline_records(config)
        with _closing(store):
            doc = session_doc(_find(records, args.ref), records, with_rows=True)
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    from gateway.cache.records import Row
    rows = [Row(**dict(r, package=json.dumps(r["package"]) if r["package"] else ""))
            for r in doc["rows"]]
    for found in components(rows):
        print(f"{found['purl']:<60} {found['sha256'][:16]}  {','.join(found['sources'])}")
    print(f"{doc['packages']} packages in {doc['responses']} responses")
    return EXIT_OK


def _find(records: Records, ref: str) -> Session:
    try:
        return records.find(ref)
    except UnknownSession as e:
        raise SessionError(404, str(e)) from None


def _sbom(client, config: Config, ref: str) -> str:  # type: ignore[no-untyped-def]
    if client.running():
        return client.request("GET", f"/api/sessions/{_q(ref)}/sbom").decode()
    store, records = _offline_records(config)
    with _closing(store):
        session = _find(records, ref)
        return sbom_json(session, records.rows(session))


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    partial = Path(f"{path}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _export(args: argparse.Namespace, config: Config) -> int:
    from gateway.ops.admin_client import AdminClient

    doc = {"session": args.session, "pin": args.pin, "all": args.all}
    client = AdminClient(config, timeout=None)
    if args.output != "-" and client.running():
        with _watching(client, "export"):
            result = client.json("POST", "/api/export",
                                 body=dict(doc, path=str(Path(args.output).resolve())))
    else:
        store, records = _offline_records(config)
        bar = bundles.Bar(1, "export")
        with _closing(store):
            result = export_to(store, records, config, doc, args.output, bar)
        bar.close()
    print(f"exported {result['objects']} objects ({result['bodies']} bodies, "
          f"{result['bytes'] / 2**20:,.1f} MiB) to {result['path']} in "
          f"{result['seconds']:.1f} s", file=sys.stderr)
    return EXIT_OK


def _import(args: argparse.Namespace, config: Config) -> int:
    from gateway.ops.admin_client import AdminClient

    pin = args.pin or bundles.pin_name_for(args.file)
    client = AdminClient(config, timeout=None)
    if args.file != "-" and client.running():
        with _watching(client, "import"):
            result = client.json("POST", "/api/import",
                                 body={"path": str(Path(args.file).resolve()), "pin": pin})
    else:
        import time
        store = _open_store_for_import(config)
        bar = bundles.Bar(bundles.bundle_size(args.file), "import")
        with _closing(store):
            result = import_from(store, args.file, pin, time.time(), bar)
        bar.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in result["drift"]:
            print(f"drift: {line}")
        for line in result["refused"]:
            print(f"refused: {line}")
        print(f"imported {len(result['imported'])} objects "
              f"({result['bytes'] / 2**20:,.1f} MiB), {len(result['identical'])} identical, "
              f"{len(result['drift'])} drift, {len(result['refused'])} refused; "
              f"pinned as {result['pin']}")
    return EXIT_ERROR if result["refused"] else EXIT_OK


class _watching:
    """While the gateway exports or imports, a bar from its progress (on a terminal)."""

    def __init__(self, client, action: str) -> None:  # type: ignore[no-untyped-def]
        import threading
        self.client, self.action = client, action
        self.bar = bundles.Bar(1, action)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.3):
            try:
                work = self.client.json("GET", "/api/bundles/progress", timeout=2.0)
            except Exception:  # noqa: BLE001 - only the bar suffers
                continue
            if work.get("action") == self.action and work.get("total"):
                self.bar.total = work["total"]
                self.bar(work["done"] - self.bar.done)

    def __enter__(self) -> "_watching":
        if self.bar.on:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.bar.close()


def _open_store_for_import(config: Config) -> Store:
    """A stopped gateway's store, created when the state directory is new (seeding a
    fresh host)."""
    from gateway.ops.cli import CliError, state_locked

    state = config.server.state_dir
    if state_locked(state):
        raise CliError(f"a cachegate serve holds {state} but its admin API does not answer")
    (state / "cache").mkdir(parents=True, exist_ok=True)
    return Store(state / "cache", config.cache.size_limit)


class _closing:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: Any) -> None:
        self.store.close()


def admin_routes(service: SessionService, path: str, body: Callable[[Any], Any]
                 ) -> dict[str, Callable] | None:
    """``routes`` as the admin resource wants them: each handler answers a reply tuple,
    and the errors of sessions and bundles become API errors."""
    found = routes(service, path, body)
    if found is None:
        return None
    return {method: _replying(handler) for method, handler in found.items()}


def _replying(handler: Callable) -> Callable:
    def call(request: Any, query: dict[str, str]) -> defer.Deferred:
        d = defer.maybeDeferred(handler, request, query)
        d.addCallbacks(_reply, _api_error)
        return d
    return call


def _reply(doc: Any) -> tuple:
    if isinstance(doc, _Raw):
        return 200, doc.encode(), "application/vnd.cyclonedx+json; version=1.6"
    return 200, (json.dumps(doc, indent=2) + "\n").encode(), "application/json"


def _api_error(failure):  # type: ignore[no-untyped-def]
    from gateway.ops.admin import ApiError

    if failure.check(SessionError):
        raise ApiError(failure.value.status, str(failure.value))
    if failure.check(bundles.BundleError):
        raise ApiError(400, str(failure.value))
    if failure.check(UnknownSession):
        raise ApiError(404, str(failure.value))
    return failure
