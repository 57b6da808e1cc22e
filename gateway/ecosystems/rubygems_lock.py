"""``Gemfile.lock``: the gems of its ``GEM`` sections, from their ``remote:``, with the
sha256 of the ``CHECKSUMS`` section (Bundler 2.6+) where present."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cache.rules import Digest
from gateway.ecosystems.lockfiles import Item

_SPEC = re.compile(r"^    ([^ (]+) \(([^)]+)\)$")
_CHECKSUM = re.compile(r"^  ([^ (]+) \(([^)]+)\) sha256=([0-9a-f]{64})")


def gemfile_lock(text: str, path: Path) -> list[Item]:
    checksums = {(m.group(1), m.group(2)): m.group(3)
                 for m in map(_CHECKSUM.match, text.splitlines()) if m}
    items, section, remote = [], None, "https://rubygems.org/"
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.strip()
            continue
        if line.startswith("  remote:"):
            remote = line.split(":", 1)[1].strip()
            continue
        m = _SPEC.match(line)
        if not m:
            continue
        name, version = m.group(1), m.group(2)
        if section != "GEM":
            items.append(Item(f"{name} ({version})", skipped=f"from a {section} source"))
            continue
        sha256 = checksums.get((name, version))
        digest = Digest("sha256", sha256, "lockfile") if sha256 else None
        items.append(Item(f"{name} ({version})",
                          f"{remote.rstrip('/')}/gems/{name}-{version}.gem", digest))
    return items
