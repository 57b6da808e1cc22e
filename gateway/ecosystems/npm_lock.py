"""npm's lockfiles: ``package-lock.json``/``npm-shrinkwrap.json`` (v1 to v3), ``yarn.lock``
v1 and ``pnpm-lock.yaml``: each package's tarball URL and its SRI integrity."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.ecosystems.lockfiles import Item, LockfileError
from gateway.ecosystems.npm import sri_digest

REGISTRY = "https://registry.npmjs.org"


def tarball_url(name: str, version: str, registry: str = REGISTRY) -> str:
    """The registry's tarball of ``name@version`` (``@scope/x`` -> ``@scope/x/-/x-v.tgz``)."""
    return f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def _item(name: str, version: str, resolved: str | None, integrity: str | None) -> Item:
    label = f"{name}@{version}"
    if not resolved:
        return Item(label, skipped="no resolved URL (a link or bundled dependency)")
    if not resolved.startswith(("http://", "https://")):
        return Item(label, skipped=f"not from a registry: {resolved}")
    digest = sri_digest(integrity, "lockfile") if integrity else None
    return Item(label, resolved.split("#", 1)[0], digest)


def package_lock(text: str, path: Path) -> list[Item]:
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise LockfileError(f"{path}: not a package-lock object")
    packages = doc.get("packages")
    if isinstance(packages, dict):  # v2, v3
        items = []
        for where, meta in packages.items():
            if not where or not isinstance(meta, dict):
                continue  # the root project
            name = meta.get("name") or where.rpartition("node_modules/")[2]
            if meta.get("link"):
                items.append(Item(f"{name}", skipped="a link to a local package"))
                continue
            items.append(_item(name, str(meta.get("version", "?")), meta.get("resolved"),
                               meta.get("integrity")))
        return items
    return list(_v1(doc.get("dependencies") or {}))


def _v1(dependencies: dict):  # type: ignore[no-untyped-def]
    for name, meta in dependencies.items():
        yield _item(name, str(meta.get("version", "?")), meta.get("resolved"),
                    meta.get("integrity"))
        yield from _v1(meta.get("dependencies") or {})


_YARN_KEY = re.compile(r'^"?((?:@[^@/"]+/)?[^@"]+)@')


def yarn_lock(text: str, path: Path) -> list[Item]:
    """yarn v1: blocks of ``"name@range", name@range2:`` with indented fields."""
    if "__metadata:" in text:
        raise LockfileError(f"{path}: a Yarn Berry lockfile: its checksums are of Yarn's "
                            "own zip cache, not of the tarballs (not supported)")
    items, name, fields = [], None, {}
    for line in text.splitlines() + [""]:
        if line and not line.startswith((" ", "#")):
            if name:
                items.append(_yarn_item(name, fields))
            m = _YARN_KEY.match(line)
            name, fields = (m.group(1) if m else None), {}
        elif line.startswith("  ") and not line.startswith("    "):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip().strip('"')
    if name:
        items.append(_yarn_item(name, fields))
    return items


def _yarn_item(name: str, fields: dict[str, str]) -> Item:
    resolved = fields.get("resolved")
    integrity = fields.get("integrity")
    if resolved and not integrity and "#" in resolved:  # old yarn: the sha1 as fragment
        sha1 = resolved.split("#", 1)[1]
        if re.fullmatch(r"[0-9a-f]{40}", sha1):
            import base64
            integrity = "sha1-" + base64.b64encode(bytes.fromhex(sha1)).decode()
    return _item(name, fields.get("version", "?"), resolved, integrity)


_PNPM_KEY = re.compile(r"^  '?/?((?:@[^@/]+/)?[^@/(]+)@([^(:'\s]+)[^:]*'?:\s*$")


def pnpm_lock(text: str, path: Path) -> list[Item]:
    """``packages:`` entries (``/name@1.0.0:`` v6, ``name@1.0.0:`` v9) and their
    ``resolution: {integrity: ..., tarball: ...}``."""
    items, section, current = [], None, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.rstrip(":").strip()
            current = None
            continue
        if section != "packages":
            continue
        m = _PNPM_KEY.match(line)
        if m:
            current = (m.group(1), m.group(2))
            continue
        if current and line.strip().startswith("resolution:"):
            fields = dict(re.findall(r"(\w+):\s*'?([^,'}]+)'?", line.split(":", 1)[1]))
            name, version = current
            if fields.get("directory") or fields.get("repo"):
                items.append(Item(f"{name}@{version}", skipped="a local or git package"))
                continue
            url = fields.get("tarball", "").strip() or tarball_url(name, version)
            items.append(_item(name, version, url, fields.get("integrity", "").strip()))
    return items
