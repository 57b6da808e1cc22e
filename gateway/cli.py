"""The ``cachegate`` command.

Exit codes: 0 success; 1 a known error (one line on stderr: ``cachegate: error: …``;
``--debug`` shows the traceback); 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, Logger, globalLogBeginner

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from gateway.logging import AccessLog, LineObserver
from gateway import trust
from tls.ca import CAError

log = Logger()

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A known failure: reported as one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachegate",
        description="Transparent caching gateway for package repositories on build hosts.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage.")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"configuration file (default: {DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trust.add_parser(commands)
    commands.add_parser("serve", help="run the gateway in the foreground",
                        description="Run every listener until SIGTERM/SIGINT.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "trust":
            return trust.run(args, config)
        if args.command == "serve":
            return serve(config, args.debug)
        raise AssertionError(args.command)
    except (ConfigError, CAError, CliError) as e:
        if args.debug:
            raise
        print(f"cachegate: error: {e}", file=sys.stderr)
        return EXIT_ERROR


def serve(config, debug: bool) -> int:  # type: ignore[no-untyped-def]
    """Start every listener, tell systemd we are ready, run until stopped."""
    from twisted.internet import reactor

    from gateway.service import make_service

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    globalLogBeginner.beginLoggingTo(
        [LineObserver(sys.stdout, LogLevel.debug if debug else LogLevel.info)],
        redirectStandardIO=False)
    top = make_service(config, reactor, AccessLog(sys.stdout))
    try:
        top.startService()
    except CannotListenError as e:
        raise CliError(f"cannot listen on {e.interface or '*'}:{e.port}: "
                       f"{e.socketError}") from None
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("cachegate serving on {addresses} (http :{port}), state in {state}",
             addresses=", ".join(top.addresses), port=config.server.http_port,
             state=config.server.state_dir)
    notify_systemd("READY=1")
    reactor.run()
    return EXIT_OK


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


if __name__ == "__main__":
    sys.exit(main())
