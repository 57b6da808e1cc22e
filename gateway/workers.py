"""Worker processes: every core of the host serving clients from one store.

With ``[server] workers = N`` (N > 1; the default, "auto", is one per usable core)
``cachegate serve`` is a supervisor.  It binds every
client port once (HTTP, HTTPS, the proxy, the registry mirror) and hands the listening
sockets to N worker processes, which accept on them side by side (the kernel spreads the
connections).  The supervisor keeps what must happen once: cleaning ``partial/`` at start,
eviction, DNS, the CA, and the admin API, whose stats and metrics it gathers from the
workers over their internal sockets.  It restarts a worker that dies; the sockets stay
open in the supervisor meanwhile, so no connection is refused.

A worker serves hits straight from the shared store.  Each cache key has one owner
worker, whose flights do the key's single upstream fetch; the others relay its stream,
one relay per key shared by their clients (``front/owners.py``, ``Gateway._via_owner``).
A starting worker takes clients once its siblings' sockets exist.  The supervisor itself
is such an asker for the admin API's fetches (``cachegate warm``).

Each worker has a listening socket of its own on each port (``SO_REUSEPORT``): the kernel
spreads connections evenly (one shared socket woke every worker and let one take them all,
3:1 or worse).  The supervisor keeps them open, so while a worker restarts its share of new
connections waits in its socket's backlog instead of being refused.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.client import readBody
from twisted.web.resource import Resource

from gateway.cache.stats import FROM_CACHE, Stats
from gateway.cache.tiers import pooled_tiers
from gateway.config import Config
from gateway.front.handler import GatewayResource
from gateway.front.owners import Owners, socket_path
from gateway.ops.activity import RECENT, Activity
from gateway.ops.admin import TOP_OBJECTS, AdminAPI, AdminService
from gateway.ops.metrics import metrics_registry, pooled_metrics, render
from gateway.ops.upstream_edits import with_saved_edits
from gateway.service import GatewayService, client_factories, client_ports, make_service

log = Logger()

# How often the supervisor evicts: between two runs the store may pass its limit by what
# the workers commit in that time.
EVICT_SECONDS = 1.0
# How often the supervisor gathers the workers' counters for the admin API.
GATHER_SECONDS = 1.0
# A worker that dies is restarted after this pause (a crash loop costs a core at most).
RESTART_SECONDS = 0.5
# On stop, a worker gets this long to finish before it is killed.
STOP_SECONDS = 10.0
LISTEN_BACKLOG = 1024
# A starting worker waits this long at most for its siblings' sockets before it accepts.
SIBLINGS_SECONDS = 5.0
PR_SET_PDEATHSIG = 1
CONTROL_HOST = "cachegate.worker"  # the Host of the supervisor's own requests to a worker


def runtime_dir(config: Config) -> Path:
    """Where the workers' internal sockets live (in the state directory: only its owner
    can connect)."""
    return config.server.state_dir / "workers"


# -- the supervisor ------------------------------------------------------------------------

@dataclass
class WorkerState:
    index: int
    pid: int = 0
    started: float = 0.0
    restarts: int = 0
    exits: list[str] | None = None
    state: dict[str, Any] | None = None  # the latest counters gathered (``/_cachegate/state``)

    def describe(self, now: float) -> dict[str, Any]:
        state = ("up" if self.state else "starting") if self.pid else "down"
        return {"worker": self.index, "pid": self.pid, "state": state,
                "uptime": now - self.started if self.pid else 0.0, "restarts": self.restarts,
                "last_exit": (self.exits or [None])[-1]}


class WorkerPool(service.Service):
    """The supervisor's half: the bound sockets and the worker processes on them."""

    def __init__(self, top: GatewayService, reactor, count: int) -> None:  # type: ignore[no-untyped-def]
        self.top, self.reactor, self.count = top, reactor, count
        self.sockets: list[list[tuple[str, socket.socket]]] = [[] for _ in range(count)]
        self.workers = [WorkerState(i) for i in range(count)]
        self.processes: dict[int, protocol.ProcessProtocol] = {}
        self.directory = runtime_dir(top.config)
        self.loops = [task.LoopingCall(top.store.evict), task.LoopingCall(self.gather)]
        self.ended: dict[int, defer.Deferred] = {}

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        for stale in self.directory.glob("*.sock"):  # a previous run's: not answering
            stale.unlink()
        self.top.external_ports = {}
        for kind, address, port in client_ports(self.top.config, self.top.addresses):
            # The registry mirror's flights are its own (by digest, not by owner): one
            # worker serves it, so a blob is still fetched once.  Pulls are bandwidth
            # (sendfile), not CPU.
            for mine in self.sockets[:1] if kind == "images" else self.sockets:
                sock = bind(address, port)
                port = sock.getsockname()[1]  # the siblings share the port 0 picked
                mine.append((kind, sock))
            self.top.external_ports.setdefault(kind, []).append(port)
        for worker in self.workers:
            self.spawn(worker.index)
        for loop, seconds in zip(self.loops, (EVICT_SECONDS, GATHER_SECONDS)):
            loop.clock = self.reactor
            loop.start(seconds, now=False)

    def spawn(self, index: int) -> None:
        if not self.running:
            return
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        specs = []
        for n, (kind, sock) in enumerate(self.sockets[index]):
            fds[3 + n] = sock.fileno()
            specs.append(f"{kind}:{3 + n}:{sock.family.value}")
        child = _WorkerProcess(self, index)
        argv = [sys.executable, "-m", "gateway.workers", str(index), str(self.count), *specs]
        self.reactor.spawnProcess(child, sys.executable, argv, env=dict(os.environ),
                                  childFDs=fds)
        self.processes[index] = child
        state = self.workers[index]
        state.pid, state.started = child.transport.pid, self.reactor.seconds()
        child.transport.write(pickle.dumps(self.top.config))
        child.transport.closeStdin()
        log.info("worker {index} started (pid {pid})", index=index, pid=state.pid)

    def ended_worker(self, index: int, reason: Failure) -> None:
        state = self.workers[index]
        why = reason.getErrorMessage()
        state.pid, state.state = 0, None
        state.exits = (state.exits or [])[-9:] + [why]
        self.processes.pop(index, None)
        if index in self.ended:
            self.ended.pop(index).callback(None)
        if self.running:
            state.restarts += 1
            log.error("worker {index} exited ({why}): restarting it", index=index, why=why)
            self.reactor.callLater(RESTART_SECONDS, self.spawn, index)

    def gather(self) -> defer.Deferred:
        """The workers' counters and metrics, for the admin API (a worker that does not
        answer keeps its last figures until it is gone)."""
        calls = [self._ask(state) for state in self.workers if state.pid]
        return defer.DeferredList(calls, consumeErrors=True)

    @defer.inlineCallbacks
    def _ask(self, state: WorkerState):  # type: ignore[no-untyped-def]
        owners = self.top.gateway.owners
        assert owners is not None
        response = yield owners.fetcher.request(
            "GET", owners.url(state.index, "/_cachegate/state"), {"host": CONTROL_HOST})
        state.state = json.loads((yield readBody(response)))

    def notify(self, path: str) -> None:
        """Tell every worker something changed (e.g. the catalogue, edited at run time)."""
        owners = self.top.gateway.owners
        assert owners is not None
        for state in self.workers:
            if state.pid:
                d = owners.fetcher.request("POST", owners.url(state.index, path),
                                           {"host": CONTROL_HOST})
                d.addCallback(readBody)  # frees the connection for the next question
                d.addErrback(lambda f, i=state.index: log.error(
                    "worker {index} missed {path}: {error}", index=i, path=path,
                    error=f.getErrorMessage()))

    def describe(self) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        return [state.describe(now) for state in self.workers]

    def gathered(self, part: str) -> list[Any]:
        """One part of each live worker's ``/api/stats`` document."""
        return [w.state["stats"][part] for w in self.workers if w.state]

    def metrics_texts(self) -> dict[str, str]:
        return {str(w.index): w.state["metrics"] for w in self.workers if w.state}

    def overlay(self) -> dict[str, Any]:
        """What the admin API's stats take from the workers instead of the supervisor."""
        summed: dict[str, dict] = {"integrity": {}, "upstream": {}}
        for part, into in summed.items():
            for counts in self.gathered(part):
                _add_into(into, counts)
        recent = sorted((line for lines in self.gathered("recent") for line in lines),
                        key=lambda line: line["time"], reverse=True)
        objects: dict[str, dict] = {}
        for ranked in self.gathered("top"):
            for row in ranked:
                into = objects.setdefault(row["url"], {"url": row["url"], "requests": 0,
                                                       "bytes": 0})
                into["requests"] += row["requests"]
                into["bytes"] += row["bytes"]
        top = sorted(objects.values(), key=lambda r: (r["requests"], r["bytes"]), reverse=True)
        return {"gateway": self.top.stats.as_dict(),
                "passthrough": self.top.passthrough.stats.as_dict(),
                **summed,
                "downloads": {"active": sum(d["active"] for d in self.gathered("downloads"))},
                "recent": recent[:RECENT], "top": top[:TOP_OBJECTS],
                "tiers": pooled_tiers(self.gathered("tiers")),
                "workers": self.describe()}

    def stopService(self):  # type: ignore[no-untyped-def]  # noqa: N802
        super().stopService()
        for loop in self.loops:
            if loop.running:
                loop.stop()
        waits = []
        for index, child in list(self.processes.items()):
            self.ended[index] = d = defer.Deferred()
            d.addTimeout(STOP_SECONDS, self.reactor,
                         onTimeoutCancel=lambda _, c=child: _kill(c, signal.SIGKILL))
            waits.append(d)
            _kill(child, signal.SIGTERM)
        for mine in self.sockets:
            for _, sock in mine:
                sock.close()
            mine.clear()
        return defer.DeferredList(waits, consumeErrors=True)


def _kill(child: protocol.ProcessProtocol, signum: int) -> None:
    try:
        child.transport.signalProcess(signum)
    except Exception:  # already gone  # noqa: BLE001
        pass


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool, self.index = pool, index

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self.pool.ended_worker(self.index, reason)


def bind(address: str, port: int) -> socket.socket:
    """A listening TCP socket for one worker; its siblings have their own on the same
    port (``SO_REUSEPORT``), so the kernel spreads connections evenly over them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        from twisted.internet.error import CannotListenError
        raise CannotListenError(address, port, e) from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    sock.setblocking(False)  # Twisted's adoptStreamPort leaves the flag as it finds it
    return sock


class PooledStats(Stats):
    """The supervisor's ``Stats``: the sum of the workers' latest counters."""

    pool: WorkerPool | None = None

    def as_dict(self) -> dict:
        gathered = self.pool.gathered("gateway") if self.pool else []
        return add_stats(gathered) if gathered else super().as_dict()


class PooledPassthrough:
    """The supervisor's view of the workers' ``PassthroughStats`` (doctor, status page)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def as_dict(self) -> dict:
        clients: dict[tuple[str, str], dict] = {}
        for document in self.pool.gathered("passthrough"):
            for entry in document["untrusting_clients"]:
                into = clients.setdefault((entry["client"], entry["host"]),
                                          {"client": entry["client"], "host": entry["host"]})
                _add_into(into, {k: v for k, v in entry.items() if k not in into})
                for k in ("rejected", "tunnelled", "tunnel_failures"):
                    into[k] = into.get(k, 0) + entry[k] if k in entry else into.get(k, 0)
        entries = [clients[pair] for pair in sorted(clients)]
        return {"untrusting_clients": entries,
                "rejected": sum(e.get("rejected", 0) for e in entries),
                "tunnelled": sum(e.get("tunnelled", 0) for e in entries)}


def add_stats(documents: list[dict]) -> dict:
    """Several ``Stats.as_dict()`` documents as one: counts added, hit ratios recomputed."""
    total: dict = {}
    for document in documents:
        _add_into(total, document)
    _hit_ratios(total)
    return total


def _add_into(into: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            _add_into(into.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            into.setdefault(key, value)


def _hit_ratios(document: dict) -> None:
    for value in document.values():
        if isinstance(value, dict):
            _hit_ratios(value)
    if "hit_ratio" in document and isinstance(document.get("requests"), dict):
        requests = document["requests"]
        total = sum(requests.values())
        document["hit_ratio"] = sum(requests.get(k, 0) for k in FROM_CACHE) / total \
            if total else 0.0


def make_supervisor(config: Config, reactor, access_log=None) -> GatewayService:  # type: ignore[no-untyped-def]
    """``cachegate serve`` with workers: DNS, admin and the store here, clients there."""
    top = make_service(config, reactor, access_log, clients=False)
    top.stats = PooledStats()
    top.gateway.stats = top.stats
    top.pool = WorkerPool(top, reactor, config.server.workers)
    top.stats.pool = top.pool
    top.passthrough.stats = PooledPassthrough(top.pool)
    top.pool.setServiceParent(top)
    top.after_upstreams.append(lambda: top.pool.notify("/_cachegate/upstreams"))
    for child in top:
        if isinstance(child, AdminService):
            child.api.registry = pooled_metrics(child.api.registry, top.pool)
    # The supervisor's own fetches (warm, prefetch) go to the owning worker too.
    top.gateway.owners = Owners(reactor, -1, config.server.workers, runtime_dir(config),
                                config.cache.idle_timeout)
    return top


# -- a worker ---------------------------------------------------------------------------

class InternalChannel(http.HTTPChannel):
    """The internal socket's connections: hops from sibling workers (``Exchange.hop``)
    and the supervisor's questions; no fast path (a hop is never counted here)."""

    internal = True


class InternalSite(server.Site):
    protocol = InternalChannel
    noisy = False

    def log(self, request: server.Request) -> None:
        """Hops are in the access log already; the supervisor's questions need no line."""


class ControlResource(Resource):
    """``Host: cachegate.worker``: the supervisor's questions; anything else is a hop."""

    isLeaf = True

    def __init__(self, api: AdminAPI, config: Config) -> None:
        super().__init__()
        self.api, self.top, self.config = api, api.top, config
        self.gateway = GatewayResource(api.top.gateway)

    def render(self, request: server.Request):  # type: ignore[no-untyped-def]
        if request.getHeader("host") != CONTROL_HOST:
            return self.gateway.render(request)
        if request.path == b"/_cachegate/state":
            request.setHeader("content-type", "application/json")
            return json.dumps({"stats": self.api.stats(store_figures=False),
                               "metrics": render(self.api.registry).decode()}).encode()
        if request.path == b"/_cachegate/sessions" and request.method == b"POST":
            sessions = self.top.gateway.sessions
            sessions.reload()  # writes this worker's rows, then re-reads
            sessions.idle().addCallback(lambda _: (request.write(b"ok\n"), request.finish()))
            return server.NOT_DONE_YET
        if request.path == b"/_cachegate/upstreams" and request.method == b"POST":
            self.top.replace_upstreams(with_saved_edits(self.config).upstreams)
            return b"ok\n"
        request.setResponseCode(404)
        return b"no such control\n"


def make_worker(config: Config, reactor, index: int, count: int,  # type: ignore[no-untyped-def]
                sockets: list[tuple[str, int, int]], access_log) -> GatewayService:
    """One worker: the gateway on inherited sockets, plus its internal socket."""
    activity = Activity(access_log, reactor.seconds)
    top = GatewayService(with_saved_edits(config), reactor, activity, worker=f"w{index}")
    factories = client_factories(top, reactor)
    top.external_ports = {}
    directory = runtime_dir(config)
    top.gateway.owners = Owners(reactor, index, count, directory, config.cache.idle_timeout)
    api = AdminAPI(top, config.upstreams, activity, reactor, "", True)
    api.registry = metrics_registry(lambda: api.stats(store_figures=False), api.live)
    site = InternalSite(ControlResource(api, config))
    path = socket_path(directory, index)
    path.unlink(missing_ok=True)  # a predecessor's, killed before it could remove it
    reactor.listenUNIX(str(path), site, backlog=LISTEN_BACKLOG, mode=0o600)
    siblings = [socket_path(directory, i) for i in range(count) if i != index]
    d = _appeared(reactor, siblings, SIBLINGS_SECONDS)
    d.addCallback(lambda _: _accept_clients(top, reactor, sockets, factories))
    return top


def _appeared(reactor, paths: list[Path], seconds: float) -> defer.Deferred:  # type: ignore[no-untyped-def]
    """Fires once every path exists, or after ``seconds`` (then the missing ones are
    logged): a worker takes clients only once it can reach the owners of their keys, so
    the first requests after a start are not fetched twice."""
    deadline = reactor.seconds() + seconds

    def look() -> defer.Deferred | None:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return None
        if reactor.seconds() >= deadline:
            log.error("workers not answering: {missing}: taking clients anyway",
                      missing=", ".join(str(p) for p in missing))
            return None
        return task.deferLater(reactor, 0.05, look)
    return defer.maybeDeferred(look)


def _accept_clients(top: GatewayService, reactor, sockets: list[tuple[str, int, int]],  # type: ignore[no-untyped-def]
                    factories: dict) -> None:
    for kind, fd, family in sockets:
        port = reactor.adoptStreamPort(fd, socket.AddressFamily(family), factories[kind])
        os.close(fd)
        top.external_ports.setdefault(kind, []).append(port.getHost().port)


def _die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, however it dies (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor was gone before the prctl
        sys.exit(1)


def main(argv: list[str]) -> int:
    """``python -m gateway.workers INDEX COUNT KIND:FD:FAMILY…``, the config pickled on
    stdin (the supervisor's, with its overrides)."""
    from twisted.internet import reactor
    from twisted.logger import LogLevel, globalLogBeginner

    from gateway.front.accesslog import AccessLog
    from gateway.ops.logging import LineObserver

    _die_with_parent()
    index, count = int(argv[0]), int(argv[1])
    sockets = [(kind, int(fd), int(family))
               for kind, fd, family in (spec.split(":") for spec in argv[2:])]
    config: Config = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo([LineObserver(sys.stdout, LogLevel.info)],
                                     redirectStandardIO=False)
    top = make_worker(config, reactor, index, count, sockets, AccessLog(sys.stdout))
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
