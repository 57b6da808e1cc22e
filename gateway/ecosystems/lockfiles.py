"""Lockfiles as plans for ``cachegate warm``: what each format names, as URLs and the
digests they must have, derived without running any package manager.

Each ecosystem's parsers live beside it (``npm_lock``, ``pypi_lock``, ``crates_lock``,
``go_lock``, ``rubygems_lock``, ``apt_lock``, ``maven_lock``); this module holds the
plan's types, the formats by name, and detection by file name.  Pure: text in, items out
(an item that needs an index to find its URL carries a ``Resolve`` the warm client runs
through the gateway).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gateway.cache.rules import Digest


class LockfileError(ValueError):
    """A lockfile that cannot be read as its format."""


@dataclass(frozen=True)
class Resolve:
    """An index to read (through the gateway) to find what to fetch: ``pick`` turns its
    body into items."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    pick: Callable[[bytes], list["Item"]] = field(default=lambda body: [], compare=False)


@dataclass(frozen=True)
class Item:
    """One thing a lockfile names."""

    name: str  # as the lockfile calls it: "left-pad@1.3.0"
    url: str = ""  # what to fetch; "" when ``resolve`` finds it
    digest: Digest | None = None  # what the body must hash to, when the lockfile says
    skipped: str = ""  # why it is not warmed (git or path dependency, ...)
    phase: int = 1  # items of phase 0 are fetched first (Maven checksum sidecars)
    resolve: Resolve | None = None


Parser = Callable[[str, Path], list[Item]]


def _parsers() -> dict[str, Parser]:
    from gateway.ecosystems import (apt_lock, crates_lock, go_lock, maven_lock, npm_lock,
                                    pypi_lock, rubygems_lock)
    return {
        "package-lock": npm_lock.package_lock, "yarn": npm_lock.yarn_lock,
        "pnpm": npm_lock.pnpm_lock, "requirements": pypi_lock.requirements,
        "poetry": pypi_lock.poetry_lock, "uv": pypi_lock.uv_lock,
        "cargo": crates_lock.cargo_lock, "go.sum": go_lock.go_sum, "go.mod": go_lock.go_mod,
        "gemfile": rubygems_lock.gemfile_lock, "apt": apt_lock.print_uris,
        "maven": maven_lock.coordinates,
    }


FORMATS = ("package-lock", "yarn", "pnpm", "requirements", "poetry", "uv", "cargo",
           "go.sum", "go.mod", "gemfile", "apt", "maven")

_BY_NAME = (
    (re.compile(r"^(package-lock|npm-shrinkwrap)\.json$"), "package-lock"),
    (re.compile(r"^yarn\.lock$"), "yarn"),
    (re.compile(r"^pnpm-lock\.ya?ml$"), "pnpm"),
    (re.compile(r"^poetry\.lock$"), "poetry"),
    (re.compile(r"^uv\.lock$"), "uv"),
    (re.compile(r"^Cargo\.lock$"), "cargo"),
    (re.compile(r"^go\.sum$"), "go.sum"),
    (re.compile(r"^go\.mod$"), "go.mod"),
    (re.compile(r"^(Gemfile|gems\.rb)\.lock$|^gems\.locked$"), "gemfile"),
    (re.compile(r"\.uris$|^apt.*\.txt$"), "apt"),
    (re.compile(r"\.gav$|^maven.*\.txt$"), "maven"),
    (re.compile(r"requirements.*\.(txt|in)$|\.txt$"), "requirements"),
)


def detect(path: Path) -> str:
    """The format of ``path`` by its file name; ``LockfileError`` when unknown."""
    for pattern, name in _BY_NAME:
        if pattern.search(path.name):
            return name
    raise LockfileError(f"{path}: cannot tell the format from the name (use --format: "
                        f"{', '.join(FORMATS)})")


def parse(path: Path, text: str, fmt: str | None = None) -> list[Item]:
    """The plan of one lockfile."""
    fmt = fmt or detect(path)
    parsers = _parsers()
    if fmt not in parsers:
        raise LockfileError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    try:
        return parsers[fmt](text, path)
    except LockfileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise LockfileError(f"{path}: not a readable {fmt} file: {e}") from None
