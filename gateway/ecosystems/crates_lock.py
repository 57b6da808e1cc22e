"""``Cargo.lock``: each crates.io package's ``.crate`` and its sha256 ``checksum``, and
the sparse index files cargo reads before it (``config.json``, one entry per crate),
fetched first so the gateway also checks each crate against the index."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gateway.cache.rules import Digest
from gateway.ecosystems.crates import crate_paths, index_path
from gateway.ecosystems.lockfiles import Item

STATIC = "https://static.crates.io"
INDEX = "https://index.crates.io"
_CRATES_IO = ("registry+https://github.com/rust-lang/crates.io-index",
              "sparse+https://index.crates.io/")


def cargo_lock(text: str, path: Path) -> list[Item]:
    items = [Item("crates.io index config", f"{INDEX}/config.json", phase=0)]
    for package in tomllib.loads(text).get("package", []):
        name, version = package["name"], package["version"]
        label, source = f"{name}@{version}", package.get("source")
        if source is None:
            continue  # a workspace member: built, not fetched
        if source not in _CRATES_IO:
            items.append(Item(label, skipped=f"not from crates.io: {source.split('#')[0]}"))
            continue
        checksum = package.get("checksum")
        digest = Digest("sha256", checksum.lower(), "lockfile") if checksum else None
        items.append(Item(f"{label} index", INDEX + index_path(name), phase=0))
        items.append(Item(label, STATIC + crate_paths(name, version)[0], digest))
    return items
