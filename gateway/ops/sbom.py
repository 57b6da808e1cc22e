"""A session's record as a CycloneDX 1.6 SBOM, built with cyclonedx-python-lib.

Components are the packages the build fetched (a row whose ecosystem named a package,
``Ecosystem.package_of``), one per package URL, with the SHA-256 of the bytes served, the
URL it came from (``externalReferences: distribution``) and properties: where it came
from (``cachegate:source``), which clients asked (``cachegate:client``).  Indexes and
metadata (apt lists, PyPI simple pages, packuments, checksums) are not components: they
are listed apart in the BOM's ``metadata.properties`` (``cachegate:index``), as are
responses with no recorded body (``cachegate:unrecorded``: passthrough, errors).

The alternative rejected: writing the JSON by hand.  The library knows the schema's
versions and serialises what the 1.6 schema allows; the tests validate its output.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Iterable
from uuid import UUID, uuid5

from cyclonedx.model import (ExternalReference, ExternalReferenceType, HashAlgorithm,
                             HashType, Property, XsUri)
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from gateway.cache.records import Row, Session, package_from
from gateway.cache.rules import Package

TOOL_VERSION = "0.1.0"
_NAMESPACE = UUID("6f1c8f36-5b1e-4d5e-9a57-2a2f3cbb6a16")  # serial numbers of records
# Files of one package that a build fetches beside the one that is the package (a Maven
# artifact's POM next to its jar): the component is the other file when there is one.
_SECONDARY_TYPES = {"pom", "module"}


def purl_of(package: Package, grouped: bool = False) -> PackageURL:
    qualifiers = dict(package.qualifiers)
    if grouped and package.type == "maven" and qualifiers.get("type") == "jar":
        qualifiers.pop("type")  # jar is the maven type's default
    return PackageURL(type=package.type, namespace=package.namespace or None,
                      name=package.name, version=package.version,
                      qualifiers=qualifiers or None)


# Qualifiers that say how a package was reached, not which it is: a Maven file's type (a
# jar and its POM are one package), an image's tag (a manifest asked by tag, then by
# digest, is one image).
_NOT_IDENTITY = {"maven": {"type"}, "oci": {"tag"}}


def _identity(package: Package) -> tuple:
    """A package, whatever file of it was fetched or however it was named."""
    skip = _NOT_IDENTITY.get(package.type, set())
    rest = tuple((k, v) for k, v in package.qualifiers if k not in skip)
    return package.type, package.namespace, package.name, package.version, rest


def _with_tag(package: Package, found: list[tuple[Package, Row]]) -> Package:
    """An image's package with the tag it was asked by, when any request named one."""
    tags = sorted({dict(p.qualifiers)["tag"] for p, _ in found if "tag" in dict(p.qualifiers)})
    if package.type != "oci" or not tags or "tag" in dict(package.qualifiers):
        return package
    return replace(package, qualifiers=package.qualifiers + (("tag", tags[0]),))


def _primary(rows: list[tuple[Package, Row]]) -> tuple[Package, Row]:
    for package, row in rows:
        if dict(package.qualifiers).get("type") not in _SECONDARY_TYPES:
            return package, row
    return rows[0]


def components(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The packages in a record, each with its files, clients and sources (plain data:
    ``session show`` prints it, ``build_bom`` turns it into components)."""
    groups: dict[tuple, list[tuple[Package, Row]]] = {}
    for row in rows:
        package = package_from(row.package)
        if package is None or not row.sha256:
            continue
        groups.setdefault(_identity(package), []).append((package, row))
    out = []
    for found in groups.values():
        bodies = [(p, r) for p, r in found if r.method != "HEAD"]
        if not bodies:  # only asked about (a HEAD), never fetched
            continue
        package, row = _primary(bodies)
        package = _with_tag(package, found)
        files = {r.url: r.sha256 for _, r in found}
        out.append({"purl": purl_of(package, grouped=True).to_string(), "package": package,
                    "name": package.name, "version": package.version, "url": row.url,
                    "sha256": row.sha256, "size": row.size,
                    "sources": sorted({r.source for _, r in found}),
                    "clients": sorted({r.client for _, r in found}),
                    "files": files})
    return sorted(out, key=lambda c: c["purl"])


def others(rows: Iterable[Row]) -> tuple[dict[str, str], list[str]]:
    """(indexes and metadata with a body: url -> sha256, responses with none)."""
    indexes: dict[str, str] = {}
    unrecorded: dict[str, None] = {}
    for row in rows:
        if row.sha256 and package_from(row.package) is None:
            indexes[row.url] = row.sha256
        elif not row.sha256:
            unrecorded[f"{row.url} {row.status} {row.source}"] = None
    return indexes, list(unrecorded)


def build_bom(session: Session, rows: list[Row]) -> Bom:
    bom = Bom()
    bom.serial_number = uuid5(_NAMESPACE, f"{session.id}:{session.stopped}")
    bom.metadata.timestamp = datetime.fromtimestamp(session.stopped or session.started,
                                                    timezone.utc)
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION,
                                                name="cachegate", version=TOOL_VERSION))
    props = [Property(name="cachegate:session", value=session.id),
             Property(name="cachegate:session-name", value=session.name or "-"),
             Property(name="cachegate:overlap", value=str(session.overlap).lower()),
             Property(name="cachegate:clients", value=" ".join(session.clients) or "-")]
    if session.replay:
        props.append(Property(name="cachegate:replays", value=session.replay))
    indexes, unrecorded = others(rows)
    props += [Property(name="cachegate:index", value=f"{url} sha256:{digest}")
              for url, digest in sorted(indexes.items())]
    props += [Property(name="cachegate:unrecorded", value=line) for line in unrecorded]
    bom.metadata.properties.update(props)
    for found in components(rows):
        bom.components.add(_component(found, session))
    return bom


def _component(found: dict[str, Any], session: Session) -> Component:
    package: Package = found["package"]
    purl = purl_of(package, grouped=True)
    properties = [Property(name="cachegate:source", value=s) for s in found["sources"]]
    properties += [Property(name="cachegate:client", value=c) for c in found["clients"]]
    properties.append(Property(name="cachegate:session", value=session.id))
    properties += [Property(name="cachegate:file", value=f"{url} sha256:{digest}")
                   for url, digest in sorted(found["files"].items()) if url != found["url"]]
    return Component(
        type=ComponentType.LIBRARY, name=package.name, version=package.version,
        group=package.namespace or None,
        purl=purl, bom_ref=purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=found["sha256"])],
        external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                               url=XsUri(found["url"]))],
        properties=properties)


def sbom_json(session: Session, rows: list[Row]) -> str:
    """The CycloneDX 1.6 JSON document of a session's record."""
    return JsonV1Dot6(build_bom(session, rows)).output_as_string(indent=2)


def sbom_doc(session: Session, rows: list[Row]) -> dict[str, Any]:
    return json.loads(sbom_json(session, rows))
