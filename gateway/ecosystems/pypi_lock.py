"""Python lockfiles: ``requirements.txt`` with ``--hash`` (pip-compile), ``poetry.lock``
and ``uv.lock``.  requirements and poetry name no URL: the project's simple page (PEP
691 JSON, through the gateway) gives the files, and every file whose sha256 the lockfile
lists is warmed (Hermeto's intersection); uv.lock lists URLs and hashes itself."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urljoin

from gateway.cache.rules import Digest
from gateway.ecosystems.lockfiles import Item, LockfileError, Resolve

INDEX = "https://pypi.org/simple"
PEP691 = "application/vnd.pypi.simple.v1+json"
# The index is asked for as pip asks (the page varies on both): the variant pip reads
# during the build is then the one warmed.
PIP_HEADERS = {"accept": "application/vnd.pypi.simple.v1+json, "
                         "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
               "accept-encoding": "gzip, deflate"}
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*===?\s*([^\s;]+)")
_DIRECT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*@\s*(\S+)")
_HASH = re.compile(r"--hash[=\s]+(\w+):([0-9a-fA-F]+)")


def normalise(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def index_item(name: str, version: str, sha256s: set[str], index: str = INDEX) -> Item:
    """An item resolved by the project's simple page: its files with a listed sha256."""
    url = f"{index.rstrip('/')}/{normalise(name)}/"

    def pick(body: bytes) -> list[Item]:
        doc = json.loads(body)
        found = []
        for f in doc.get("files", []):
            sha256 = str((f.get("hashes") or {}).get("sha256", "")).lower()
            if sha256 not in sha256s:
                continue
            file_url = urljoin(url, f["url"]).split("#", 1)[0]
            found.append(Item(f"{name}=={version} {f.get('filename')}", file_url,
                              Digest("sha256", sha256, "lockfile")))
            metadata = f.get("core-metadata") or f.get("data-dist-info-metadata")
            if isinstance(metadata, dict) and metadata.get("sha256"):  # PEP 658: pip reads it
                found.append(Item(f"{name}=={version} {f.get('filename')}.metadata",
                                  file_url + ".metadata",
                                  Digest("sha256", str(metadata["sha256"]).lower(), "index")))
        if not found:
            found.append(Item(f"{name}=={version}", skipped="the index lists no file with "
                                                            "a hash the lockfile gives"))
        return found
    return Item(f"{name}=={version}", resolve=Resolve(url, PIP_HEADERS, pick))


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def requirements(text: str, path: Path) -> list[Item]:
    items = []
    for line in _logical_lines(text):
        if line.startswith("-"):
            continue  # options: --index-url, -r, -c, ... (the gateway serves pypi.org)
        hashes = {value.lower() for algorithm, value in _HASH.findall(line)
                  if algorithm == "sha256"}
        direct = _DIRECT.match(line)
        pinned = _PINNED.match(line)
        if direct:
            url = direct.group(3)
            digest = Digest("sha256", sorted(hashes)[0], "lockfile") if len(hashes) == 1 \
                else None
            items.append(Item(direct.group(1), url.split("#", 1)[0], digest) if url.startswith(
                ("http://", "https://")) else Item(direct.group(1), skipped=f"not a URL: {url}"))
        elif pinned and hashes:
            items.append(index_item(pinned.group(1), pinned.group(3), hashes))
        elif pinned:
            items.append(Item(f"{pinned.group(1)}=={pinned.group(3)}",
                              skipped="no --hash: nothing to check the files against"))
        else:
            items.append(Item(line.split()[0], skipped="not pinned with =="))
    return items


def poetry_lock(text: str, path: Path) -> list[Item]:
    doc = tomllib.loads(text)
    items = []
    for package in doc.get("package", []):
        name, version = package["name"], package["version"]
        source = package.get("source") or {}
        if source.get("type") in ("git", "directory", "file", "url"):
            items.append(Item(f"{name}=={version}", skipped=f"a {source['type']} source"))
            continue
        hashes = {f["hash"].split(":", 1)[1].lower() for f in package.get("files", [])
                  if str(f.get("hash", "")).startswith("sha256:")}
        if not hashes:
            items.append(Item(f"{name}=={version}", skipped="no file hashes in the lockfile"))
            continue
        index = source.get("url", INDEX) if source.get("type") == "legacy" else INDEX
        items.append(index_item(name, version, hashes, index))
    return items


def uv_lock(text: str, path: Path) -> list[Item]:
    doc = tomllib.loads(text)
    items = []
    for package in doc.get("package", []):
        name, version = package["name"], package.get("version", "?")
        source = package.get("source") or {}
        if "registry" not in source and "url" not in source:
            items.append(Item(f"{name}=={version}", skipped="not from an index"))
            continue
        for dist in ([package["sdist"]] if "sdist" in package else []) + \
                package.get("wheels", []):
            algorithm, _, value = str(dist.get("hash", "")).partition(":")
            digest = Digest(algorithm, value.lower(), "lockfile") if value else None
            if "url" not in dist:
                raise LockfileError(f"{path}: {name} lists a file without a url")
            items.append(Item(f"{name}=={version} {dist['url'].rsplit('/', 1)[-1]}",
                              dist["url"], digest))
    return items
