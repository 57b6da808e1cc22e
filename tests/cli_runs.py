"""The ``cachegate`` command run in this process, beside gateways on the same reactor."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import defer, threads

from gateway.ops.cli import main

# A log line (conftest sends log events to sys.stderr): a gateway's, or a lookup left over
# from an earlier test, never the command's own words.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[.*\n?", re.MULTILINE)


def own_stderr(text: str) -> str:
    """What the command itself wrote to stderr: ``text`` without the reactor's log lines."""
    return _LOG_LINE.sub("", text)


@defer.inlineCallbacks
def cli(capsys, config: Path, *argv: str):  # type: ignore[no-untyped-def]
    """``cachegate --config CONFIG ARGV`` in a thread (the gateway runs on the reactor):
    (exit code, stdout, its own stderr)."""
    capsys.readouterr()
    code = yield threads.deferToThread(main, ["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, own_stderr(err)
