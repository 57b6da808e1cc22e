"""crates.io: ``.crate`` files are immutable, the sparse index is revalidated.

Each line of a sparse index entry is a JSON version record with ``cksum`` (the sha256 of
the ``.crate``): recorded when the gateway stores the entry, for both download forms cargo
uses (``{dl}/{name}/{version}/download`` and ``{name}-{version}.crate``)."""

from __future__ import annotations

import json
import re
from typing import Iterable

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

_INDEX_ENTRY = re.compile(r"^/(1/[^/]+|2/[^/]+|3/./[^/]+|[^/]{2}/[^/]{2}/[^/]+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DOWNLOAD = re.compile(r"^/crates/([^/]+)/([^/]+)/download$")
_CRATE = re.compile(r"^/crates/([^/]+)/([^/]+)\.crate$")


def crate_paths(name: str, version: str) -> tuple[str, str]:
    """Where static.crates.io serves a crate (the ``dl`` template cargo fills in)."""
    return f"/crates/{name}/{version}/download", f"/crates/{name}/{name}-{version}.crate"


def index_path(name: str) -> str:
    """Where the sparse index keeps ``name`` (cargo's ``make_dep_path``)."""
    name = name.lower()
    if len(name) <= 2:
        return f"/{len(name)}/{name}"
    if len(name) == 3:
        return f"/3/{name[0]}/{name}"
    return f"/{name[:2]}/{name[2:4]}/{name}"


class Crates(Ecosystem):
    def package_of(self, path: str) -> Package | None:
        bare = path.partition("?")[0]
        m = _DOWNLOAD.match(bare)
        if m:
            return Package("cargo", m.group(1), m.group(2))
        m = _CRATE.match(bare)
        if m and m.group(2).startswith(m.group(1) + "-"):
            return Package("cargo", m.group(1), m.group(2)[len(m.group(1)) + 1:])
        return None

    def publishes_digests(self, path: str) -> bool:
        return path.startswith("/crates/")

    def learns_from(self, path: str) -> bool:
        return _INDEX_ENTRY.match(path) is not None

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        for line in body.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            name, version = record.get("name"), record.get("vers")
            cksum = str(record.get("cksum", "")).lower()
            if isinstance(name, str) and isinstance(version, str) and _SHA256.match(cksum):
                for crate in crate_paths(name, version):
                    yield crate, Digest("sha256", cksum, "sparse index")


ROWS = (
    Upstream("crates", ("static.crates.io", "index.crates.io"), (
        Rule(r"^/crates/", Policy.IMMUTABLE),
        Rule(r"^/config\.json$|^/[^/]+(/[^/]+){0,2}$", Policy.REVALIDATE, INDEX_TTL),
    ), ecosystem=Crates()),
)
