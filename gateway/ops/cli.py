"""The ``cachegate`` command.

    cachegate [--config FILE] [--state-dir DIR] [--debug] COMMAND
      serve                                  run the gateway in the foreground
      ca export [-o FILE] | path | rotate [--yes]
      cache ls [--ecosystem E] [--prefix P] [--sha256 HEX] [--json]
      cache clear [--ecosystem E] [--prefix P] [--yes]
      cache verify [--json]
      stats [--watch [--interval S] [--count N]] [--json] [--wide]
      monitoring rules | scrape               Prometheus rules; a scrape job for this host
      doctor [--daemon-json FILE] [--trust-bundle FILE] [--forwarded-name NAME]
      warm [--format F] [--jobs N] [--dry-run] [--json] [--pin NAME] LOCKFILE...
      pin add NAME (--key-from LOCKFILE... | LOCKFILE...) | ls | rm NAME

Commands that need live state (``stats``; ``cache …`` while the gateway runs) talk to
the running gateway through its admin API (``server.admin``); the others, and ``cache …``
when it is stopped, work on the state directory directly.  A running ``cachegate serve``
holds a lock on ``<state_dir>/serve.lock``, so an offline command never touches a store
that a gateway is using.

Exit codes: 0 success (``doctor``: every check passed); 1 a known error, one line on
stderr (``cachegate: error: …``; ``--debug`` shows the traceback), or a failed ``doctor``
check; 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Callable

from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, Logger, globalLogBeginner

from gateway.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from gateway.ops.humanize import human_bytes, human_duration, percent
from gateway.front.accesslog import AccessLog
from gateway.ops.logging import LineObserver
from gateway.ops.tier_status import tiers_lines
from gateway.ops import images_setup, trust
from tls.ca import CAError

log = Logger()

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
LOCK_FILE = "serve.lock"
STATS_WIDTH = 100  # columns `cachegate stats` fits in unless --wide
DAEMON_JSON_ENV = "CACHEGATE_DOCKER_DAEMON_JSON"


class CliError(Exception):
    """A known failure: reported as one line, no traceback."""


# -- the parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachegate",
        description="Transparent caching gateway for package repositories on build hosts.",
        epilog="Exit codes: 0 ok, 1 error (or a failed doctor check), 2 usage.")
    _add_global_options(parser, None, False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trust.add_parser(commands)
    images_setup.add_parser(commands)
    from gateway.ops import sessions, warm
    warm.add_parsers(commands)
    sessions.add_parsers(commands)
    commands.add_parser("serve", help="run the gateway in the foreground",
                        description="Run every listener until SIGTERM/SIGINT; tell systemd "
                                    "when ready (Type=notify).")
    _ca_parser(commands)
    _cache_parser(commands)
    stats = commands.add_parser(
        "stats", help="hit ratio, bytes from cache vs upstream, top objects",
        description="Figures of the running gateway (its admin API).")
    stats.add_argument("--watch", action="store_true", help="refresh until interrupted")
    stats.add_argument("--interval", type=_positive, default=2.0, metavar="S",
                       help="seconds between refreshes with --watch (default 2)")
    stats.add_argument("--count", type=int, default=0, metavar="N",
                       help="with --watch: stop after N refreshes (default: never)")
    stats.add_argument("--json", action="store_true", help="the raw /api/stats document")
    stats.add_argument("--wide", action="store_true",
                       help=f"URLs whole (default: the table fits {STATS_WIDTH} columns)")
    _monitoring_parser(commands)
    doctor = commands.add_parser(
        "doctor", help="check ports, DNS, TLS, trust, Docker and upstreams",
        description="Check the whole chain, one line per check, with the fix for each "
                    "failure.  Exit 1 when a check fails.")
    doctor.add_argument("--daemon-json", type=Path, default=None, metavar="FILE",
                        help=f"Docker's daemon.json (default: ${DAEMON_JSON_ENV} or "
                             "/etc/docker/daemon.json)")
    doctor.add_argument("--trust-bundle", type=Path, default=None, metavar="FILE",
                        help="the host's CA bundle (default: OpenSSL's)")
    doctor.add_argument("--forwarded-name", default="example.com", metavar="NAME",
                        help="a name outside the catalogue to resolve (default example.com)")
    doctor.add_argument("--timeout", type=_positive, default=3.0, metavar="S",
                        help="per network check (default 3)")
    _globals_after_commands(parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any, debug: Any) -> None:
    parser.add_argument("--config", type=Path, default=default,
                        help=f"configuration file (default: {DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--state-dir", type=Path, default=default,
                        help="state directory, instead of server.state_dir")
    parser.add_argument("--debug", action="store_true", default=debug,
                        help="debug logging, and tracebacks on errors")


def _globals_after_commands(parser: argparse.ArgumentParser) -> None:
    """Let ``--config``, ``--state-dir`` and ``--debug`` follow any (sub)command too
    (``cachegate serve --config FILE``).  Their defaults there are suppressed, so a value
    given before the command is kept."""
    for action in parser._actions:  # argparse has no public walk over its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_global_options(sub, argparse.SUPPRESS, argparse.SUPPRESS)
                _globals_after_commands(sub)


def _ca_parser(commands: Any) -> None:
    ca = commands.add_parser("ca", help="the local CA: export, path, rotate",
                             description="The CA that signs the gateway's certificates.")
    sub = ca.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = sub.add_parser("export", help="print the CA certificate (PEM)",
                            description="Print the CA certificate, for images to trust.")
    export.add_argument("-o", "--output", type=Path, help="write it to FILE instead")
    sub.add_parser("path", help="print the CA certificate's path",
                   description="Print the path of the CA certificate file.")
    rotate = sub.add_parser("rotate", help="replace the CA (the old one is kept aside)",
                            description="Create a new CA; the old one moves to "
                                        "ca.old-<time>/.  Images must trust the new one, "
                                        "and the gateway must be restarted.")
    rotate.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _cache_parser(commands: Any) -> None:
    cache = commands.add_parser("cache", help="list, clear or verify stored objects",
                                description="The objects in the store.")
    sub = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("ls", help="list stored objects",
                        description="List stored objects: size, ecosystem, status, URL.")
    clear = sub.add_parser("clear", help="delete stored objects",
                           description="Delete stored objects (all, or those selected).")
    for p in (ls, clear):
        p.add_argument("--ecosystem", metavar="E", help="only this upstream entry (e.g. pypi)")
        p.add_argument("--prefix", metavar="P",
                       help="only URLs starting with P (host/path, e.g. deb.debian.org/debian/)")
    ls.add_argument("--sha256", metavar="HEX", help="only objects whose body has this sha256")
    ls.add_argument("--json", action="store_true", help="the raw listing")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    verify = sub.add_parser("verify", help="re-hash stored objects, drop corrupt ones",
                            description="Re-hash every stored body against its recorded "
                                        "length and sha256; drop those that differ.")
    verify.add_argument("--json", action="store_true", help="the raw report")


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return number


# -- dispatch --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.ops.admin_client import ApiFailure, GatewayDown

    try:
        config = load_config(args.config)
        if args.state_dir is not None:
            config = replace(config, server=replace(config.server,
                                                    state_dir=args.state_dir.expanduser()))
        if args.command == "trust":
            return trust.run(args, config)
        if args.command == "images":
            return images_setup.run(args, config)
        if args.command in ("warm", "pin"):
            from gateway.ops import warm
            return warm.run(args, config)
        if args.command in ("session", "export", "import"):
            from gateway.ops import sessions
            return sessions.run(args, config)
        return COMMANDS[args.command](config, args)
    except (ConfigError, CAError, CliError, GatewayDown, ApiFailure) as e:
        if args.debug:
            raise
        print(f"cachegate: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _serve(config: Config, args: argparse.Namespace) -> int:
    return serve(config, args.debug)


def _ca(config: Config, args: argparse.Namespace) -> int:
    return {"export": ca_export, "path": ca_path, "rotate": ca_rotate}[args.action](config, args)


def _monitoring_parser(commands: Any) -> None:
    monitoring = commands.add_parser(
        "monitoring", help="Prometheus rules and scrape config",
        description="What Prometheus needs to watch cachegate: the recording and alerting "
                    "rules shipped with it, and a scrape job for this configuration.")
    monitoring.add_argument("action", choices=["rules", "scrape"],
                            help="rules: print rules.yml (rule_files); scrape: print a "
                                 "scrape_configs entry for server.admin")


def monitoring(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.monitoring import rules_text

    if args.action == "rules":
        sys.stdout.write(rules_text())
        return EXIT_OK
    host, port = config.server.admin
    host = f"[{host}]" if ":" in host else host
    print("# prometheus.yml: scrape_configs (the rules expect job_name: cachegate)\n"
          "  - job_name: cachegate\n"
          "    scrape_interval: 15s\n"
          "    metrics_path: /metrics\n"
          "    static_configs:\n"
          f'      - targets: ["{host}:{port}"]')
    return EXIT_OK


def _cache(config: Config, args: argparse.Namespace) -> int:
    return {"ls": cache_ls, "clear": cache_clear, "verify": cache_verify}[args.action](
        config, args)


# -- serve -----------------------------------------------------------------------------

def serve(config, debug: bool) -> int:  # type: ignore[no-untyped-def]
    """Start every listener, tell systemd we are ready, run until stopped."""
    from twisted.internet import reactor

    from gateway.service import make_service
    from gateway.workers import make_supervisor

    lock = hold_state_lock(config.server.state_dir)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo(
        [LineObserver(sys.stdout, LogLevel.debug if debug else LogLevel.info)],
        redirectStandardIO=False)
    build = make_supervisor if config.server.workers > 1 else make_service
    top = build(config, reactor, AccessLog(sys.stdout))
    try:
        top.startService()
    except CannotListenError as e:
        raise CliError(f"cannot listen on {e.interface or '*'}:{e.port}: "
                       f"{e.socketError}") from None
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("cachegate serving on {addresses} (http :{port}, admin {admin}), state in {state}",
             addresses=", ".join(top.addresses), port=config.server.http_port,
             admin="%s:%d" % config.server.admin, state=config.server.state_dir)
    notify_systemd("READY=1")
    reactor.run()
    lock.close()
    return EXIT_OK


def hold_state_lock(state_dir: Path) -> IO[str]:
    """Lock ``state_dir`` for this process (released when it exits, however it exits):
    a second gateway on the same store would delete the first one's downloads."""
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        lock = open(Path(state_dir) / LOCK_FILE, "a+")
    except OSError as e:
        raise CliError(f"{state_dir}: cannot use the state directory: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise CliError(f"{state_dir} is in use by another cachegate serve "
                       f"(pid {lock.read().strip() or '?'})") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def state_locked(state_dir: Path) -> bool:
    """Whether a running ``cachegate serve`` holds ``state_dir``."""
    try:
        with open(Path(state_dir) / LOCK_FILE) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    except OSError:  # unreadable: assume the worst
        return True
    return False


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


# -- ca --------------------------------------------------------------------------------

def ca_pem(config: Config) -> bytes:
    """The CA certificate: from the state directory, else from the running gateway (the
    state directory may be the service user's alone)."""
    from gateway.ops.admin_client import AdminClient, ApiFailure, GatewayDown
    from tls.store import export_pem

    try:
        return export_pem(config.server.state_dir)
    except CAError as first:
        try:
            return AdminClient(config, timeout=2.0).request("GET", "/ca.crt")
        except (GatewayDown, ApiFailure):
            raise first from None


def ca_export(config: Config, args: argparse.Namespace) -> int:
    pem = ca_pem(config)
    if args.output:
        args.output.write_bytes(pem)
        print(f"wrote the CA certificate to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(pem.decode())
    return EXIT_OK


def ca_path(config: Config, args: argparse.Namespace) -> int:
    from tls.store import ca_paths

    cert, _ = ca_paths(config.server.state_dir)
    if not cert.exists():
        raise CAError(f"{cert}: no CA yet: `cachegate serve` creates it on first start")
    print(cert)
    return EXIT_OK


def ca_rotate(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.admin_client import AdminClient
    from gateway.ops.upstream_edits import with_saved_edits
    from tls.ca import permitted_domains
    from tls.store import rotate_ca

    state = config.server.state_dir
    confirm(f"Replace the CA in {state}? Every image that trusts the current one must be "
            "given the new one.", args.yes)
    config = with_saved_edits(config)
    _, old = rotate_ca(state, permitted_domains(config.upstreams, config.dns.local_names),
                       config.tls.key_type, config.tls.name_constraints, time.time())
    print(f"new CA: {state / 'ca' / 'ca.crt'}")
    if old is not None:
        print(f"the old CA is kept in {old}")
    if AdminClient(config, timeout=2.0).running() or state_locked(state):
        print("the running gateway still uses the old CA: restart it "
              "(systemctl restart cachegate, or scripts/stop.sh && scripts/start.sh)")
    return EXIT_OK


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question.split('?')[0]}? Not a terminal to ask on: add --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled")


# -- cache -----------------------------------------------------------------------------

def _store_access(config: Config) -> tuple[Any, Any]:
    """(admin client, None) when the gateway runs, else (None, the store, opened here)."""
    from gateway.ops.admin_client import AdminClient
    from gateway.cache.store import Store

    client = AdminClient(config)
    if client.running():
        return client, None
    state = config.server.state_dir
    if state_locked(state):
        raise CliError(f"a cachegate serve holds {state} but its admin API at "
                       f"{':'.join(map(str, config.server.admin))} does not answer")
    if not (state / "cache" / "objects").is_dir():
        raise CliError(f"no cache in {state}: the gateway has not run with this state "
                       "directory (see --state-dir)")
    return None, Store(state / "cache", config.cache.size_limit)


def _filters(args: argparse.Namespace) -> dict[str, str | None]:
    for name in ("ecosystem", "prefix"):
        if getattr(args, name) == "":
            raise CliError(f"--{name} is empty")
    return {"ecosystem": args.ecosystem, "prefix": args.prefix}


def cache_ls(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.admin import list_cache

    filters = _filters(args)
    sha256 = args.sha256.lower() if args.sha256 else None
    client, store = _store_access(config)
    if client is not None:
        listing = client.json("GET", "/api/cache", {**filters, "limit": 0, "sha256": sha256})
    else:
        try:
            listing = list_cache(store, filters["ecosystem"], filters["prefix"], 0, sha256)
        finally:
            store.close()
    if args.json:
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    for entry in listing["entries"]:
        print(f"{human_bytes(entry['length']):>10}  {entry['ecosystem']:<9} "
              f"{entry['status']}  {entry['key']}".replace("\n", " "))
    print(f"{listing['count']} objects, {human_bytes(listing['bytes'])}")
    return EXIT_OK


def cache_clear(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.admin import clear_cache

    filters = _filters(args)
    what = " and ".join([f"of ecosystem {args.ecosystem}"] * bool(args.ecosystem) +
                        [f"under {args.prefix}"] * bool(args.prefix)) or "(all of them)"
    confirm(f"Delete the stored objects {what}?", args.yes)
    client, store = _store_access(config)
    if client is not None:
        result = client.json("DELETE", "/api/cache", filters)
    else:
        try:
            result = clear_cache(store, filters["ecosystem"], filters["prefix"])
        finally:
            store.close()
    print(f"deleted {result['deleted']} objects ({human_bytes(result['bytes'])})")
    return EXIT_OK


def cache_verify(config: Config, args: argparse.Namespace) -> int:
    from gateway.cache.verify import verify_store

    client, store = _store_access(config)
    if client is not None:
        report = client.json("POST", "/api/cache/verify", timeout=None)
    else:
        try:
            report = verify_store(store)
        finally:
            store.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for dropped in report["dropped"]:
        print(f"dropped {dropped['url']}: {dropped['reason']}")
    print(f"checked {report['checked']} objects ({human_bytes(report['bytes'])}): "
          f"{len(report['dropped'])} corrupt, dropped")
    return EXIT_OK


# -- stats -----------------------------------------------------------------------------

def stats(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.admin_client import AdminClient

    client = AdminClient(config)
    shown = 0
    while True:
        doc = client.json("GET", "/api/stats")
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: a refreshing screen
        elif shown:
            print()
        print(json.dumps(doc, indent=2) if args.json else
              format_stats(doc, None if args.wide else STATS_WIDTH), flush=True)
        shown += 1
        if not args.watch or shown == args.count:
            return EXIT_OK
        time.sleep(args.interval)


def format_stats(doc: dict[str, Any], width: int | None = STATS_WIDTH) -> str:
    """The figures as text; the TOP OBJECTS table fits ``width`` columns (URLs shortened
    in the middle), None: URLs whole."""
    total, cache = doc["gateway"]["total"], doc["cache"]
    served = total["bytes_from_cache"] + total["bytes_from_upstream"]
    dns = doc["dns"]
    lines = [
        f"cachegate up {human_duration(doc['uptime'])}: {sum(total['requests'].values())} "
        f"requests, hit ratio {percent(total['hit_ratio'])}",
        f"from cache {human_bytes(total['bytes_from_cache'])}, from upstream "
        f"{human_bytes(total['bytes_from_upstream'])}"
        + (f" ({percent(total['bytes_from_cache'] / served)} of bytes saved)" if served else ""),
        f"cache: {cache['objects']} objects, "
        f"{human_bytes(sum(e['bytes'] for e in cache['ecosystems'].values()))} stored "
        f"(bodies); on disk {human_bytes(cache['bytes'])} of {human_bytes(cache['limit'])}",
        f"downloads in progress: {doc['downloads']['active']}",
        *_integrity_line(doc),
        *_workers_line(doc),
        *tiers_lines(doc),
        f"dns: {dns['queries']} queries, {dns['redirected']} redirected, {dns['forwarded']} "
        f"forwarded, {dns['cache_hits']} from its cache",
        "",
        _table(["ECOSYSTEM", "REQUESTS", "HIT RATIO", "FROM CACHE", "FROM UPSTREAM"],
               [[name, sum(t["requests"].values()), percent(t["hit_ratio"]),
                 human_bytes(t["bytes_from_cache"]), human_bytes(t["bytes_from_upstream"])]
                for name, t in doc["gateway"]["ecosystems"].items()]),
        "",
        _table(["CLIENT", "REQUESTS", "HIT RATIO", "FROM CACHE", "FROM UPSTREAM"],
               [[name, sum(t["requests"].values()), percent(t["hit_ratio"]),
                 human_bytes(t["bytes_from_cache"]), human_bytes(t["bytes_from_upstream"])]
                for name, t in doc["gateway"]["clients"].items()]),
        "",
        _top_objects(doc["top"], width),
    ]
    return "\n".join(lines)


def _workers_line(doc: dict[str, Any]) -> list[str]:
    workers = doc.get("workers")
    if not workers:
        return []
    states = ", ".join(f"{w['worker']} {w['state']} (pid {w['pid']}, {w['restarts']} restarts)"
                       for w in workers)
    return [f"workers: {states}"]


def _top_objects(top: list[dict[str, Any]], width: int | None) -> str:
    rows = [[o["url"], str(o["requests"]), human_bytes(o["bytes"])] for o in top]
    if width is not None and rows:
        others = sum(max(len(h), *(len(r[i]) for r in rows)) + 2
                     for i, h in ((1, "REQUESTS"), (2, "SENT")))
        room = max(width - others, len("TOP OBJECTS"))
        rows = [[shorten_middle(r[0], room), *r[1:]] for r in rows]
    return _table(["TOP OBJECTS", "REQUESTS", "SENT"], rows)


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: its start and end kept, the middle
    replaced by "..." (a URL's host and file name are what tell objects apart)."""
    if len(text) <= width:
        return text
    keep = max(width - 3, 2)
    head = (keep + 1) // 2
    return text[:head] + "..." + text[len(text) - (keep - head):]


def _integrity_line(doc: dict[str, Any]) -> list[str]:
    """Pinned bytes and what fills were checked against (when there is anything to say)."""
    pinned = doc["cache"].get("pinned", 0)
    counts = doc.get("integrity") or {}
    if not pinned and not counts:
        return []
    said = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items()) if n)
    return [f"pinned: {human_bytes(pinned)}; fills: {said or 'none checked yet'}"]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"{header[0]}: none yet"
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in cells)


# -- doctor ----------------------------------------------------------------------------

def doctor(config: Config, args: argparse.Namespace) -> int:
    from gateway.addresses import listen_addresses
    from gateway.ops.admin_client import AdminClient, ApiFailure, GatewayDown
    from gateway.ops.doctor import Situation, run_checks
    from gateway.ops.upstream_edits import with_saved_edits

    client = AdminClient(config, timeout=args.timeout)
    try:
        live = client.json("GET", "/healthz")
    except (GatewayDown, ApiFailure, ValueError):
        live = None
    try:
        pem: bytes | None = ca_pem(config)
    except CAError:
        pem = None
    daemon_json = args.daemon_json or Path(os.environ.get(DAEMON_JSON_ENV) or
                                           "/etc/docker/daemon.json")
    situation = Situation(with_saved_edits(config), listen_addresses(config.server.listen),
                          live, pem, daemon_json, args.trust_bundle, args.forwarded_name,
                          args.timeout)
    print(f"gateway: {'running' if live else 'not running'} (admin API {client.base})")
    checks = run_checks(situation)
    marks = _marks(sys.stdout)
    for check in checks:
        mark = marks[check.ok]
        print(f"{mark} {check.title}: {check.detail}")
        if check.ok is False and check.fix:
            print(f"    fix: {check.fix}")
    failed = sum(1 for c in checks if c.ok is False)
    passed = sum(1 for c in checks if c.ok)
    print(f"{passed} passed, {failed} failed, {len(checks) - passed - failed} skipped")
    return EXIT_ERROR if failed else EXIT_OK


def _marks(stream: IO[str]) -> dict[bool | None, str]:
    """✓ ✗ – where the terminal can show them, else ASCII."""
    try:
        "✓✗–".encode(stream.encoding or "ascii")
        return {True: "✓", False: "✗", None: "–"}
    except (UnicodeEncodeError, LookupError):
        return {True: "OK", False: "FAIL", None: "-"}


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "serve": _serve, "ca": _ca, "cache": _cache, "stats": stats, "doctor": doctor,
    "monitoring": monitoring}


if __name__ == "__main__":
    sys.exit(main())
