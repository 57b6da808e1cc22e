"""The log observer of ``cachegate serve``: one line per event on a stream.

Twisted's ``textFileLogObserver`` formats each event through its own ``{}`` engine and an
``strftime`` per line; at thousands of access-log lines a second that costs more than
serving the requests.  This one uses ``str.format_map`` and a once-per-second timestamp.
"""

from __future__ import annotations

import time
from typing import IO

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer


@implementer(ILogObserver)
class LineObserver:
    """Writes ``TIME [namespace#level] message`` for events at ``level`` or above."""

    def __init__(self, stream: IO[str], level: LogLevel = LogLevel.info) -> None:
        self.stream = stream
        self.level = level
        self._second = -1
        self._stamp = ""

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return
        self.stream.write(f"{self._time(event.get('log_time'))} "
                          f"[{event.get('log_namespace', '-')}#{level.name}] "
                          f"{self._message(event)}\n")
        if "log_failure" in event:
            self.stream.write(event["log_failure"].getTraceback())
        self.stream.flush()

    def _time(self, when: float | None) -> str:
        second = int(when or time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._stamp

    @staticmethod
    def _message(event: dict) -> str:
        fmt = event.get("log_format")
        if fmt is None:
            return formatEvent(event)
        try:
            return fmt.format_map(event)
        except (KeyError, IndexError, ValueError, AttributeError):
            return formatEvent(event)  # Twisted's engine handles its extended syntax
