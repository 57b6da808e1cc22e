"""Export and import bundles: stored objects (and build records) as one uncompressed tar.

A bundle is ``cachegate-bundle.json`` (the format version and, per object, its URL, key,
sha256, length, status, replayable headers, policy, freshness and Vary), then each body
once under ``sha256/<ab>/<hex>``, then for a session its record (``sessions/<id>.json``)
and SBOM (``sboms/<id>.cdx.json``).  The metadata comes first so an import can check each
body as it streams by (``tar`` reads it in one pass: ``zstd -dc B.tar.zst | cachegate
import -``).

Import writes each body to the store's ``partial/``, checks its sha256 and length against
its name and the metadata, and only then commits it (by rename).  An object already
stored with the same bytes is skipped; a key or an immutable URL stored (or first seen)
with other bytes is drift and is never overwritten.  Imported objects are pinned, so an
air-gapped host keeps them whatever else fills its cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable

from gateway.cache.policy import Freshness
from gateway.cache.records import Records, Session
from gateway.cache.rules import Upstream, find_upstream
from gateway.cache.store import Entry, Meta, PinRefused, Store

FORMAT = 1
METADATA = "cachegate-bundle.json"
CHUNK = 1024 * 1024
Progress = Callable[[int], None]  # told of bytes done


class BundleError(Exception):
    """A bundle that cannot be written or read (one line for the CLI)."""


def body_name(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


# -- choosing what to export ---------------------------------------------------------------

def select_session(store: Store, records: Records, ref: str) -> tuple[Session, list[Entry]]:
    """The stored objects a session's record names, by the sha256 served; an object no
    longer stored is an error naming it."""
    session = records.find(ref)
    chosen: dict[str, Entry] = {}
    missing = []
    for row in records.rows(session):
        if not row.sha256 or row.source not in ("cache", "upstream", "stale"):
            continue
        entries = [e for e in store.find_sha256(row.sha256) if os.path.exists(e.path)]
        if not entries:
            missing.append(f"{row.url} (sha256 {row.sha256})")
            continue
        same = [e for e in entries if e.key == row.key]
        entry = (same or entries)[0]
        chosen[entry.key] = entry
    if missing:
        raise BundleError(f"{len(missing)} objects of session {session.id} are no longer "
                          f"stored: {', '.join(sorted(set(missing))[:5])}")
    return session, list(chosen.values())


def select_pin(store: Store, name: str) -> list[Entry]:
    keys = [k for (k,) in store.cache._sql("SELECT key FROM Pin WHERE name = ?", (name,))]
    if not keys:
        raise BundleError(f"no pin set named {name!r}")
    return [e for e in (store.get(k) for k in keys) if e is not None]


def object_doc(store: Store, entry: Entry, upstreams: tuple[Upstream, ...]) -> dict[str, Any]:
    meta = entry.meta
    base = entry.key.split("\n", 1)[0]
    host, _, path = base.partition("/")
    upstream = find_upstream(upstreams, host)
    policy = upstream.rule_for("/" + path).policy.value if upstream else "standard"
    return {"url": meta.url, "key": entry.key, "sha256": meta.sha256, "length": meta.length,
            "status": meta.status, "ecosystem": meta.ecosystem, "headers": meta.headers,
            "policy": policy, "freshness": asdict(meta.freshness), "extra": meta.extra,
            "vary": list(store.vary(base))}


# -- export -----------------------------------------------------------------------------

@dataclass
class ExportResult:
    objects: int = 0
    bodies: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_bundle(store: Store, entries: list[Entry], out: IO[bytes],
                  upstreams: tuple[Upstream, ...], selection: dict[str, Any],
                  session: tuple[Session, list[dict], str] | None = None,
                  progress: Progress = lambda n: None) -> ExportResult:
    """Write the bundle to ``out`` (a file or a pipe: written in one pass)."""
    started = time.monotonic()
    objects = [object_doc(store, e, upstreams) for e in entries]
    bodies: dict[str, Entry] = {}
    for entry in entries:
        bodies.setdefault(entry.meta.sha256, entry)
    doc = {"format": FORMAT, "created": time.time(), "selection": selection,
           "objects": objects, "sessions": [session[0].id] if session else []}
    result = ExportResult(objects=len(objects))
    # A stream (one pass, pipes too) in 1 MiB blocks: tarfile's default is 10 KiB.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK,
                      copybufsize=CHUNK) as tar:
        _add_bytes(tar, METADATA, json.dumps(doc, indent=1).encode())
        for sha256, entry in bodies.items():
            _add_body(tar, sha256, entry, progress)
            result.bodies += 1
            result.bytes += entry.meta.length
        if session is not None:
            record, rows, sbom = session
            _add_bytes(tar, f"sessions/{record.id}.json",
                       json.dumps({"session": record.as_dict(), "rows": rows}).encode())
            _add_bytes(tar, f"sboms/{record.id}.cdx.json", sbom.encode())
    result.seconds = time.monotonic() - started
    return result


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_body(tar: tarfile.TarFile, sha256: str, entry: Entry, progress: Progress) -> None:
    try:
        body = open(entry.path, "rb")
    except FileNotFoundError:
        raise BundleError(f"{entry.meta.url} was evicted while being exported") from None
    with body:
        size = os.fstat(body.fileno()).st_size
        if size != entry.meta.length:
            raise BundleError(f"{entry.meta.url}: stored body has {size} bytes, "
                              f"not {entry.meta.length}: run cachegate cache verify")
        info = tarfile.TarInfo(body_name(sha256))
        info.size, info.mtime, info.mode = size, int(time.time()), 0o644
        tar.addfile(info, _Counting(body, progress))


class _Counting:
    """A file whose reads are reported (the progress bar)."""

    def __init__(self, file: IO[bytes], progress: Progress) -> None:
        self.file, self.progress = file, progress

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.progress(len(data))
        return data


# -- import -----------------------------------------------------------------------------

@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)  # keys committed
    identical: list[str] = field(default_factory=list)  # keys stored with these bytes
    drift: list[str] = field(default_factory=list)  # "url: stored sha256 X, bundle Y"
    refused: list[str] = field(default_factory=list)  # bodies that failed their check
    sessions: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    pin: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_bundle(store: Store, source: IO[bytes], pin: str, now: float,
                  progress: Progress = lambda n: None) -> ImportResult:
    """Read a bundle in one pass, committing each object whose body checks out."""
    started = time.monotonic()
    result = ImportResult(pin=pin)
    by_sha: dict[str, list[dict[str, Any]]] | None = None
    try:
        tar = tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK)
    except tarfile.TarError as e:
        raise BundleError(f"not a tar file: {e}") from None
    with tar:
        for member in tar:
            if member.name == METADATA:
                by_sha = _objects_by_sha(_read_json(tar, member))
            elif member.name.startswith("sha256/") and member.isfile():
                if by_sha is None:
                    raise BundleError(f"{METADATA} must come before the bodies")
                _import_body(store, tar, member, by_sha, result, now, progress)
            elif member.name.startswith("sessions/") and member.isfile():
                _import_session(store, _read_json(tar, member), result)
    if by_sha is None:
        raise BundleError(f"not a cachegate bundle: no {METADATA}")
    for docs in by_sha.values():  # objects whose body the tar did not hold
        if docs and not docs[0].get("_seen"):
            result.refused.append(f"{docs[0]['url']}: its body is not in the bundle")
    keys = result.imported + result.identical
    if keys and pin:
        try:
            store.pin(pin, keys)
        except PinRefused as e:
            raise BundleError(f"imported, but not pinned: {e}") from None
    result.seconds = time.monotonic() - started
    return result


def _read_json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    data = tar.extractfile(member)
    try:
        return json.loads(data.read() if data else b"")
    except ValueError as e:
        raise BundleError(f"{member.name} is not JSON: {e}") from None


def _objects_by_sha(doc: Any) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else doc
        raise BundleError(f"unknown bundle format {found!r} (this cachegate reads format "
                          f"{FORMAT})")
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in doc.get("objects", []):
        out.setdefault(str(obj["sha256"]).lower(), []).append(obj)
    return out


def _import_body(store: Store, tar: tarfile.TarFile, member: tarfile.TarInfo,
                 by_sha: dict[str, list[dict[str, Any]]], result: ImportResult, now: float,
                 progress: Progress) -> None:
    name = member.name.rsplit("/", 1)[-1].lower()
    docs = by_sha.get(name, [])
    for doc in docs:
        doc["_seen"] = True
    partial = store.new_partial()
    digest, size = hashlib.sha256(), 0
    body = tar.extractfile(member)
    assert body is not None
    try:
        with open(partial, "wb") as out:
            while chunk := body.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                progress(len(chunk))
        problem = _body_problem(name, digest.hexdigest(), size, docs)
        if problem:
            result.refused.append(problem)
            return
        for doc in docs:
            _commit_object(store, doc, partial, result, now)
        result.bytes += size
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _body_problem(name: str, got: str, size: int, docs: list[dict[str, Any]]) -> str | None:
    urls = ", ".join(sorted({d["url"] for d in docs})) or "no object"
    if got != name:
        return f"{urls}: body hashes to sha256 {got}, not the {name} it is filed under"
    wrong = [d for d in docs if int(d["length"]) != size]
    if wrong:
        return f"{urls}: body has {size} bytes, the metadata says {wrong[0]['length']}"
    return None


def _commit_object(store: Store, doc: dict[str, Any], partial: str, result: ImportResult,
                   now: float) -> None:
    key, sha256 = doc["key"], doc["sha256"]
    stored = store.get(key)
    if stored is not None:
        if stored.meta.sha256 == sha256:
            result.identical.append(key)
        else:
            result.drift.append(f"{doc['url']}: stored with sha256 {stored.meta.sha256}, "
                                f"the bundle has {sha256}: kept the stored bytes")
        return
    seen = store.first_seen(doc["url"])
    if seen is not None and seen[0] != sha256 and doc.get("policy") == "immutable":
        result.drift.append(f"{doc['url']}: first seen with sha256 {seen[0]}, the bundle has "
                            f"{sha256}: not imported")
        return
    meta = Meta(url=doc["url"], ecosystem=doc["ecosystem"], status=int(doc["status"]),
                headers=[tuple(h) for h in doc["headers"]],
                freshness=Freshness(**doc["freshness"]), length=int(doc["length"]),
                sha256=sha256, extra=dict(doc.get("extra") or {}, imported=now))
    copy = store.new_partial()
    os.link(partial, copy)  # each object its own file: the rename consumes it
    store.commit(key, meta, copy)
    base = key.split("\n", 1)[0]
    if doc.get("vary") and not store.vary(base):
        store.set_vary(base, tuple(doc["vary"]))
    if seen is None and doc.get("policy") == "immutable":
        store.set_seen(doc["url"], sha256, now)
    result.imported.append(key)


def _import_session(store: Store, doc: Any, result: ImportResult) -> None:
    try:
        data = doc["session"]
        session = Session(data["id"], data["name"], tuple(data["clients"]), data["started"],
                          data["stopped"], data.get("replay", ""), bool(data.get("overlap")))
        rows = list(doc["rows"])
    except (KeyError, TypeError) as e:
        raise BundleError(f"a session record in the bundle is incomplete: {e}") from None
    if Records(store).add_imported(session, rows):
        result.sessions.append(session.id)


# -- the CLI's progress bar ---------------------------------------------------------------

class Bar:
    """Bytes done of a total, on a terminal (stderr), redrawn at most every 0.2 s."""

    def __init__(self, total: int, label: str, stream: IO[str] = sys.stderr) -> None:
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.done, self.drawn = 0, 0.0
        self.on = stream.isatty()

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.on and (now - self.drawn > 0.2 or self.done >= self.total):
            self.drawn = now
            share = min(1.0, self.done / self.total)
            filled = int(share * 30)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                              f"{share:4.0%} {self.done / 2**20:,.0f}/"
                              f"{self.total / 2**20:,.0f} MiB")
            self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")


def bundle_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def pin_name_for(path: str) -> str:
    return "import:" + os.path.basename(path)

