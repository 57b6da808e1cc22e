"""Log output of ``cachegate serve``: the observer for Twisted's log events.

``LineObserver`` uses ``str.format_map`` and a once-per-second timestamp instead of
Twisted's ``textFileLogObserver`` (its own ``{}`` engine and an ``strftime`` per line cost
more than serving a small hit; see ``front/accesslog.py``).
"""

from __future__ import annotations

from typing import IO

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

from gateway.front.accesslog import Timestamps


@implementer(ILogObserver)
class LineObserver:
    """Writes ``TIME [namespace#level] message`` for events at ``level`` or above."""

    def __init__(self, stream: IO[str], level: LogLevel = LogLevel.info) -> None:
        self.stream = stream
        self.level = level
        self._clock = Timestamps()

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return
        self.stream.write(f"{self._clock.stamp(event.get('log_time'))} "
                          f"[{event.get('log_namespace', '-')}#{level.name}] "
                          f"{self._message(event)}\n")
        if "log_failure" in event:
            self.stream.write(event["log_failure"].getTraceback())

    @staticmethod
    def _message(event: dict) -> str:
        fmt = event.get("log_format")
        if fmt is None:
            return formatEvent(event)
        try:
            return fmt.format_map(event)
        except (KeyError, IndexError, ValueError, AttributeError):
            return formatEvent(event)  # Twisted's engine handles its extended syntax
