"""Go module proxy: versions are immutable, version lists revalidated.

A module's digest is ``h1:``, the dirhash of its zip's *files* (golang.org/x/mod
``sumdb/dirhash.Hash1``), not a hash of the zip's bytes: the proxy publishes none, so it
comes from a ``go.sum`` (``cachegate warm``) and is checked once the zip is complete."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from typing import Callable

from gateway.cache.rules import Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

H1 = "h1"


def hash1(files: list[tuple[str, bytes]]) -> str:
    """``h1:`` + base64(sha256 of ``"<hex sha256(file)>  <name>\\n"`` sorted by name)."""
    summary = hashlib.sha256()
    for name, data in sorted(files):
        summary.update(f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def zip_h1(path: str) -> str:
    """``HashZip``: every file of the module zip, by its name in the zip."""
    with zipfile.ZipFile(path) as archive:
        return hash1([(info.filename, archive.read(info)) for info in archive.infolist()
                      if not info.is_dir()])


def mod_h1(path: str) -> str:
    """The ``/go.mod`` line of go.sum: ``Hash1`` of the one file ``go.mod``."""
    with open(path, "rb") as f:
        return hash1([("go.mod", f.read())])


def escape(path: str) -> str:
    """``module.EscapePath``: each capital letter as ``!`` + its lower case."""
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in path)


def unescape(path: str) -> str:
    """``module.UnescapePath``: ``!x`` is ``X``."""
    return re.sub(r"!([a-z])", lambda m: m.group(1).upper(), path)


class Go(Ecosystem):
    def package_of(self, path: str) -> Package | None:
        """``/<escaped module>/@v/<version>.zip``: the module's source, which a build uses
        (its ``.mod`` and ``.info`` are metadata the resolver reads)."""
        module, sep, rest = path.partition("?")[0].lstrip("/").partition("/@v/")
        if not sep or not rest.endswith(".zip") or "/" in rest:
            return None
        namespace, _, name = unescape(module).rpartition("/")
        return Package("golang", name, unescape(rest[:-len(".zip")]), namespace)

    def file_digest(self, algorithm: str, path: str) -> Callable[[str], str] | None:
        if algorithm != H1:
            return None
        if path.endswith(".zip"):
            return zip_h1
        return mod_h1 if path.endswith(".mod") else None


ROWS = (
    Upstream("go", ("proxy.golang.org",), (
        Rule(r"/@v/[^/]+\.(zip|mod|info)$", Policy.IMMUTABLE),
        Rule(r"/@v/list$|/@latest$", Policy.REVALIDATE, INDEX_TTL),
        # go's first question with GOSUMDB at its default: does this proxy serve the
        # checksum database?  Asked on every run; the lookups and tiles it then fetches
        # through the proxy are left to their own headers (standard).
        Rule(r"^/sumdb/[^/]+/supported$", Policy.REVALIDATE, INDEX_TTL),
    ), ecosystem=Go()),
)
