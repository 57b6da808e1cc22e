"""``go.sum`` (and ``go.mod``): module zips and go.mod files from the module proxy, with
their ``h1:`` dirhashes.  go.sum may list modules the build never downloads whole (only
their go.mod): with a go.mod beside it, zips are warmed only for the modules it requires."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cache.rules import Digest
from gateway.ecosystems.go import H1, escape
from gateway.ecosystems.lockfiles import Item

PROXY = "https://proxy.golang.org"
_REQUIRE = re.compile(r"^\s*(?:require\s+)?([^\s()]+)\s+(v[^\s]+)")


def module_url(module: str, version: str, suffix: str) -> str:
    return f"{PROXY}/{escape(module)}/@v/{escape(version)}.{suffix}"


def go_sum(text: str, path: Path) -> list[Item]:
    required = _required(path.with_name("go.mod"))
    items = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("h1:"):
            continue
        module, version, h1 = parts
        if version.endswith("/go.mod"):
            version = version[:-len("/go.mod")]
            items.append(Item(f"{module}@{version} go.mod", module_url(module, version, "mod"),
                              Digest(H1, h1, "lockfile")))
        elif required is None or module in required:
            # The .info too: `go mod download` reads it (no digest covers it).
            items.append(Item(f"{module}@{version} info", module_url(module, version, "info")))
            items.append(Item(f"{module}@{version}", module_url(module, version, "zip"),
                              Digest(H1, h1, "lockfile")))
    return items


def go_mod(text: str, path: Path) -> list[Item]:
    """go.mod alone: its requirements' go.mod and zip, without digests."""
    items = []
    for module, version in _requirements(text):
        for suffix in ("mod", "zip"):
            items.append(Item(f"{module}@{version} {suffix}", module_url(module, version, suffix)))
    return items


def _required(go_mod_path: Path) -> set[str] | None:
    try:
        return {m for m, _ in _requirements(go_mod_path.read_text())}
    except OSError:
        return None


def _requirements(text: str) -> list[tuple[str, str]]:
    found, block = [], False
    for line in text.splitlines():
        line = line.split("//", 1)[0]
        stripped = line.strip()
        if stripped.startswith("require ("):
            block = True
            continue
        if block and stripped == ")":
            block = False
            continue
        if block or stripped.startswith("require "):
            m = _REQUIRE.match(stripped)
            if m:
                found.append((m.group(1), m.group(2)))
    return found
