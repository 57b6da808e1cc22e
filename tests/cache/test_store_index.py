"""The store's small tables beside the objects (issue 15): the content index, expected
digests, first-seen sha256s that outlive eviction, and pins that eviction skips."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.cache.policy import Freshness
from gateway.cache.store import Meta, PinRefused, Store


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "cache", 10**9)
    yield s
    s.close()


def put(store: Store, key: str, data: bytes) -> str:
    partial = store.new_partial()
    with open(partial, "wb") as f:
        f.write(data)
    digest = hashlib.sha256(data).hexdigest()
    store.commit(key, Meta(key, "x", 200, [("x-h", '"sha256": "' + "0" * 64 + '"')],
                           Freshness(float("inf"), 0, 0, True), len(data), digest), partial)
    return digest


def test_objects_are_found_by_the_sha256_of_their_body(store):
    a = put(store, "h/a", b"same bytes")
    put(store, "h/b", b"same bytes")
    put(store, "h/c", b"other bytes")
    assert sorted(e.key for e in store.find_sha256(a)) == ["h/a", "h/b"]
    assert [e.key for e in store.find_sha256("0" * 64)] == []  # a header that looks alike
    store.delete("h/a")
    assert [e.key for e in store.find_sha256(a.upper())] == ["h/b"]


def test_metadata_reads_back_whole_and_the_index_never_takes_extras_sha256(store):
    meta = Meta("h/e", "x", 200, [("etag", '"v1"')], Freshness(float("inf"), 5.0, 1.5, False),
                3, hashlib.sha256(b"abc").hexdigest(), {"sha256": "1" * 64, "n": [1, {"a": 2}]})
    assert Meta.from_json(meta.to_json()) == meta
    partial = store.new_partial()
    with open(partial, "wb") as f:
        f.write(b"abc")
    store.commit("h/e", meta, partial)
    assert [e.key for e in store.find_sha256(meta.sha256)] == ["h/e"]
    assert store.find_sha256("1" * 64) == []


def test_bodies_go_to_the_flat_tree_and_an_older_layout_is_still_read_and_removed(
        store, monkeypatch):
    import diskcache

    from gateway.cache.store import BodyDisk
    objects = store.directory / "objects"
    assert len(list((objects / "bodies").iterdir())) == 256  # made once, at open
    put(store, "h/new", b"new")
    new = store.get("h/new")
    assert new is not None and new.path.startswith(str(objects / "bodies") + os.sep)
    with monkeypatch.context() as old_version:  # diskcache's own ab/cd/ names
        old_version.setattr(BodyDisk, "filename", diskcache.Disk.filename)
        put(store, "h/old", b"old")
    old = store.get("h/old")
    assert old is not None and open(old.path, "rb").read() == b"old"
    assert Path(old.path).parent.parent.parent == objects
    store.delete("h/old")
    store.delete("h/new")
    assert not os.path.exists(old.path) and not Path(old.path).parent.exists()
    assert not os.path.exists(new.path) and Path(new.path).parent.exists()


def test_expected_digests_are_replaced_by_a_newer_index_and_first_seen_outlives_eviction(store):
    store.expect("npm", [("/p/-/p-1.tgz", "sha512", "aa", "packument")])
    store.expect("npm", [("/p/-/p-1.tgz", "sha1", "bb", "lockfile")])
    assert store.expected("npm", "/p/-/p-1.tgz") == ("sha1", "bb", "lockfile")
    assert store.expected("crates", "/p/-/p-1.tgz") is None
    digest = put(store, "h/p", b"p")
    store.set_seen("h/p", digest, 1.0)
    store.delete("h/p")
    assert store.first_seen("h/p") == (digest, 1.0)


def test_eviction_takes_unpinned_objects_and_an_oversized_pin_set_is_refused(store):
    put(store, "h/pinned", b"p" * 4000)
    store.pin("ci", ["h/pinned", "h/not-yet-stored"])
    store.size_limit = store.volume() + 5000
    for i in range(5):
        put(store, f"h/other{i}", bytes([i]) * 3000)
    keys = {e.key for e in store.entries()}
    assert "h/pinned" in keys and len(keys) < 6
    assert store.pins() == {"ci": {"keys": 2, "stored": 1, "bytes": 4000}}
    store.size_limit = 5000
    with pytest.raises(PinRefused, match="size_limit"):
        store.pin("ci", ["h/pinned"] + sorted(keys - {"h/pinned"}))
    assert store.pins()["ci"]["keys"] == 2  # the set as it was
    assert store.unpin("ci") == 2 and store.pins() == {}
