"""``apt-get install --print-uris -qq PKGS`` output: ``'URI' file size HASH`` per line,
the hash as apt's index gave it (``SHA256:<hex>``; older apt: ``MD5Sum:``)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cache.rules import Digest
from gateway.ecosystems.lockfiles import Item, LockfileError

_LINE = re.compile(r"^'([^']+)'\s+(\S+)\s+(\d+)\s*(\S*)")
_ALGORITHMS = {"sha256": "sha256", "sha512": "sha512", "sha1": "sha1", "md5sum": "md5"}


def print_uris(text: str, path: Path) -> list[Item]:
    items = []
    for line in text.splitlines():
        if not line.startswith("'"):
            continue
        m = _LINE.match(line)
        if not m:
            raise LockfileError(f"{path}: not an apt-get --print-uris line: {line!r}")
        uri, filename, _, checksum = m.groups()
        algorithm, _, value = checksum.partition(":")
        algorithm = _ALGORITHMS.get(algorithm.lower(), "")
        digest = Digest(algorithm, value.lower(), "lockfile") if algorithm and value else None
        items.append(Item(filename, uri, digest))
    return items
