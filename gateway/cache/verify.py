"""`cachegate cache verify`: re-hash stored bodies against their metadata, drop the bad ones.

Hashing reads every stored byte, so the running gateway does it in a thread
(``admin.py``); the deletions happen afterwards on the reactor, and only for entries still
stored under the same file (one replaced meanwhile by a fresh download is not touched).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from gateway.cache.store import Entry, Store

READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Problem:
    entry: Entry
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"key": self.entry.key, "url": self.entry.meta.url, "reason": self.reason}


def body_problem(entry: Entry) -> str | None:
    """Why ``entry``'s body does not match its metadata, or None when it does."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(entry.path, "rb") as body:
            while chunk := body.read(READ_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return "body file missing"
    except OSError as e:
        return f"cannot read the body: {e.strerror}"
    if size != entry.meta.length:
        return f"{size} bytes, stored length {entry.meta.length}"
    if digest.hexdigest() != entry.meta.sha256:
        return "sha256 mismatch"
    return None


def find_problems(entries: Iterable[Entry]) -> tuple[int, int, list[Problem]]:
    """(entries checked, bytes they should hold, the bad ones): blocking, for a thread."""
    checked = size = 0
    problems = []
    for entry in entries:
        checked += 1
        size += entry.meta.length
        reason = body_problem(entry)
        if reason is not None:
            problems.append(Problem(entry, reason))
    return checked, size, problems


def drop(store: Store, problems: list[Problem]) -> list[Problem]:
    """Delete the bad entries still stored under the file that was checked."""
    current = {entry.key: entry.path for entry in store.entries()}
    dropped = []
    for problem in problems:
        if current.get(problem.entry.key) == problem.entry.path:
            store.delete(problem.entry.key)
            dropped.append(problem)
    return dropped


def report(checked: int, size: int, dropped: list[Problem]) -> dict:
    return {"checked": checked, "bytes": size, "dropped": [p.as_dict() for p in dropped]}


def verify_store(store: Store) -> dict:
    """Check and clean ``store`` in this thread (the gateway is not running)."""
    checked, size, problems = find_problems(list(store.entries()))
    return report(checked, size, drop(store, problems))
