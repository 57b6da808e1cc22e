"""Build records in the store's database (gateway/cache/records.py) and the replay view
of them (gateway/front/sessions.py): no sockets."""

from __future__ import annotations

from gateway.cache.records import Records, Row, covered, networks_overlap
from gateway.cache.store import Store
from gateway.front.sessions import Replay


def row(session: str, time: float, url: str, key: str, sha256: str = "a" * 64,
        source: str = "upstream") -> Row:
    return Row(session, time, "10.0.0.2", "GET", url, key, "npm", "", sha256, 1, 200,
               "MISS", source)


def test_sessions_by_id_or_latest_name_overlap_and_rows_until_the_stop(tmp_path):
    store = Store(tmp_path, 2**30)
    records = Records(store)
    first = records.start("ci", ["10.0.0.0/24"], 1.0)
    other = records.start("elsewhere", ["192.168.0.0/16"], 1.5)
    second = records.start("ci", ["10.0.0.128/25"], 2.0)
    assert records.find("ci").id == second.id and records.find(first.id).id == first.id
    assert records.get(first.id).overlap and records.get(second.id).overlap
    assert not records.get(other.id).overlap
    records.add([row(first.id, 3.0, "u1", "k1"), row(first.id, 9.0, "u2", "k2")])
    stopped = records.stop(first.id, 5.0)
    assert [r.url for r in records.rows(stopped)] == ["u1"]  # written after its stop: not its
    assert [s.id for s in records.open()] == [other.id, second.id]
    # Persisted: another Store on the same directory sees them.
    store.close()
    again = Records(Store(tmp_path, 2**30))
    assert again.find("ci").id == second.id and len(again.all()) == 3


def test_client_networks():
    assert covered(["172.17.0.0/16"], "172.17.0.9")
    assert covered(["172.17.0.0/16"], "::ffff:172.17.0.9")
    assert not covered(["172.17.0.0/16"], "172.18.0.9")
    assert not covered(["172.17.0.0/16"], "not an address")
    assert networks_overlap(["10.0.0.0/8"], ["10.1.0.0/16"])
    assert not networks_overlap(["10.0.0.0/8"], ["fd00::/8", "192.168.0.0/16"])


def test_replay_prefers_the_same_variant_and_skips_unreplayable_rows(tmp_path):
    records = Records(Store(tmp_path, 2**30))
    source = records.start("s", ["10.0.0.0/8"], 1.0)
    base = "registry.npmjs.org/p"
    rows = [row(source.id, 1, "u", base + "\naccept=corgi", "c" * 64),
            row(source.id, 2, "u", base + "\naccept=full", "f" * 64),
            row(source.id, 3, "u2", "registry.npmjs.org/q", "d" * 64, "passthrough")]
    replay = Replay(source, source, rows)
    assert replay.lookup(base, base + "\naccept=corgi").sha256 == "c" * 64
    assert replay.lookup(base, base + "\naccept=other").sha256 == "f" * 64  # the last
    assert replay.lookup("registry.npmjs.org/q", "registry.npmjs.org/q").sha256 == ""
    assert replay.lookup("registry.npmjs.org/none", "x") is None
