"""Maven: release artifacts and their checksums are immutable; metadata and SNAPSHOTs
are revalidated.

A release file's ``.sha1``/``.sha256``/``.sha512`` sidecar, once stored, is what a later
fill of the file is checked against.  Maven clients ask for the file first and the
sidecar after, so a miss on a release file fetches its ``.sha1`` first (``digest_source``):
one request that the client's next one finds stored."""

from __future__ import annotations

import re
from typing import Iterable

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

_SIDECAR = re.compile(r"^(.+)\.(sha1|sha256|sha512)$")
_LENGTHS = {"sha1": 40, "sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# What a build uses of an artifact; checksums, signatures and metadata are not packages.
_PACKAGED = (".jar", ".war", ".aar", ".pom", ".module", ".zip", ".tar.gz")
REPOSITORY_ROOTS = ("maven2",)  # repo1.maven.org/maven2/<group path>/...


def sidecar_digest(algorithm: str, body: bytes) -> str | None:
    """The hex digest a checksum file holds (``<hex>`` or ``<hex>  <file name>``)."""
    token = body.decode("ascii", "replace").strip().split(" ")[0].strip().lower()
    return token if len(token) == _LENGTHS[algorithm] and _HEX.match(token) else None


class Maven(Ecosystem):
    def publishes_digests(self, path: str) -> bool:
        return _SIDECAR.match(path) is None and "/maven-metadata.xml" not in path \
            and not path.endswith((".md5", ".asc"))

    def digest_source(self, path: str) -> str | None:
        """A release file's ``.sha1``: asked for first, so its fill is checked (Maven asks
        for it right after the file anyway)."""
        if not self.publishes_digests(path) or "-SNAPSHOT/" in path:
            return None
        return path + ".sha1"

    def package_of(self, path: str) -> Package | None:
        """``<group path>/<artifact>/<version>/<artifact>-<version>[-<classifier>].<ext>``."""
        parts = path.partition("?")[0].strip("/").split("/")
        while parts and parts[0] in REPOSITORY_ROOTS:
            parts = parts[1:]
        if len(parts) < 4 or not parts[-1].endswith(_PACKAGED):
            return None
        *group, artifact, version, filename = parts
        stem = f"{artifact}-{version}"
        if not filename.startswith(stem) or filename[len(stem):len(stem) + 1] not in ".-":
            return None
        rest = filename[len(stem):]
        ext = next(e for e in _PACKAGED if rest.endswith(e))
        classifier = rest[1:-len(ext)] if rest.startswith("-") else ""
        qualifiers = [("type", ext[1:])] + ([("classifier", classifier)] if classifier else [])
        return Package("maven", artifact, version, ".".join(group), tuple(qualifiers))

    def learns_from(self, path: str) -> bool:
        m = _SIDECAR.match(path)
        return m is not None and "maven-metadata.xml" not in m.group(1)

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        m = _SIDECAR.match(path)
        value = sidecar_digest(m.group(2), body) if m else None
        if m and value:
            yield m.group(1), Digest(m.group(2), value, "sidecar")


ROWS = (
    Upstream("maven", ("repo1.maven.org", "repo.maven.apache.org"), (
        Rule(r"/maven-metadata\.xml(\.[a-z0-9]+)?$", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"-SNAPSHOT/", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"\.(jar|pom|war|aar|module|zip|tar\.gz|asc|md5|sha1|sha256|sha512)$",
             Policy.IMMUTABLE),
    ), ecosystem=Maven()),
)
