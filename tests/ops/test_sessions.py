"""Build records against a gateway in this process and the fixture origin, with real
HTTP requests from 127.0.0.1 and the real CLI (``cachegate session|export|import``, in a
thread, through the admin API or on a stopped store).

A recorded session's SBOM validates against the CycloneDX 1.6 schema and lists exactly
the packages fetched, with the fixture bodies' sha256; indexes are listed apart.  Replay
with the origin stopped serves the same bytes, refuses anything unlisted with a 403 that
names the URL and the session, and never sees a changed index.  A session's bundle,
imported into a fresh state directory, serves an offline gateway; a tampered body is
refused; a second import changes nothing."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest_twisted
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from twisted.internet import defer, threads

from gateway.cache.rules import Policy, Rule
from gateway.ops.cli import main
from tests.cli_runs import cli
from tests.http_client import fetch

LOOPBACK = "127.0.0.0/8"
# What a "build" fetches: indexes first, as package managers do, then the packages.
BUILD = [
    ("debian", "/debian/dists/bookworm/InRelease", None),
    ("debian", "/debian/dists/bookworm/main/binary-amd64/Packages.xz", None),
    ("debian", "/debian/pool/main/h/hello-cachegate/hello-cachegate_1.0_all.deb", None),
    ("pypi", "/simple/cachegate-fixture-a/", "application/vnd.pypi.simple.v1+json"),
    ("pypi", "/packages/42/5f/4902877a38daa99773c4aea08d4f3c02099553a8cd2409f5b6cd6d310356/"
             "cachegate_fixture_a-1.0-py3-none-any.whl", None),
    ("npm", "/cachegate-fixture", "application/vnd.npm.install-v1+json"),
    ("npm", "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz", None),
    ("npm", "/@cachegate/fixture/-/fixture-1.0.0.tgz", None),
    ("maven", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.pom", None),
    ("maven", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar", None),
    ("maven", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar.sha1", None),
]
PURLS = {
    "pkg:deb/debian/hello-cachegate@1.0?arch=all":
        "/debian/pool/main/h/hello-cachegate/hello-cachegate_1.0_all.deb",
    "pkg:pypi/cachegate-fixture-a@1.0": BUILD[4][1],
    "pkg:npm/cachegate-fixture@1.1.0": "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz",
    "pkg:npm/%40cachegate/fixture@1.0.0": "/@cachegate/fixture/-/fixture-1.0.0.tgz",
    "pkg:maven/org.cachegate/fixture@1.0": "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar",
}
UNLISTED = ("npm", "/cachegate-fixture/-/cachegate-fixture-1.0.0.tgz")


def cli_config(tmp_path: Path, gw=None, state_dir: Path | None = None,  # type: ignore[no-untyped-def]
               extra: str = "") -> Path:
    port = gw.service.ports("admin")[0] if gw else 9  # a port nothing answers on
    state = gw.config.server.state_dir if gw else state_dir
    path = tmp_path / f"cli-{port}.toml"
    path.write_text(f'[server]\nstate_dir = "{state}"\nadmin = "127.0.0.1:{port}"\n{extra}')
    return path


def host_of(fixtures, ecosystem: str, path: str) -> str:  # type: ignore[no-untyped-def]
    return next(o.host for o in fixtures.objects if o.ecosystem == ecosystem and o.path == path)


@defer.inlineCallbacks
def build(gw, fixtures, steps=BUILD):  # type: ignore[no-untyped-def]
    """Fetch each step through the gateway: {path: reply}."""
    replies = {}
    for ecosystem, path, accept in steps:
        headers = {"accept": accept} if accept else {}
        reply = yield fetch(gw.port, host_of(fixtures, ecosystem, path), path, headers)
        replies[path] = reply
    return replies


def fixture_sha256(fixtures, path: str) -> str:  # type: ignore[no-untyped-def]
    return next(o.sha256 for o in fixtures.objects if o.path == path and o.accept is None)


@defer.inlineCallbacks
def recorded(gw, fixtures, capsys, tmp_path, name="app"):  # type: ignore[no-untyped-def]
    """A session named ``name`` around one build (fetched twice: misses, then hits)."""
    config = cli_config(tmp_path, gw)
    code, out, err = yield cli(capsys, config, "session", "start", "--name", name,
                                     "--clients", LOOPBACK)
    assert code == 0, err
    session = out.strip()
    first = yield build(gw, fixtures)
    second = yield build(gw, fixtures)
    code, out, err = yield cli(capsys, config, "session", "stop", name)
    assert code == 0, err
    assert f"session {session} stopped" in out
    return session, first, second


@pytest_twisted.inlineCallbacks
def test_a_recorded_build_is_a_valid_cyclonedx_16_sbom_of_exactly_its_packages(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    session, first, second = yield recorded(gw, fixtures, capsys, tmp_path)
    assert all(r.status == 200 for r in first.values())
    assert {second[p].headers["x-cache"] for p in second} == {"HIT"}
    code, out, err = yield cli(capsys, cli_config(tmp_path, gw), "session", "sbom", "app")
    assert code == 0, err
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(out) is None
    sbom = json.loads(out)
    assert sbom["specVersion"] == "1.6"
    found = {c["purl"]: c for c in sbom["components"]}
    assert set(found) == set(PURLS)  # exactly the packages: no index, no checksum file
    for purl, path in PURLS.items():
        assert found[purl]["hashes"] == [{"alg": "SHA-256",
                                          "content": fixture_sha256(fixtures, path)}]
        props = {(p["name"], p["value"]) for p in found[purl]["properties"]}
        assert ("cachegate:client", "127.0.0.1") in props
        assert {("cachegate:source", "upstream"), ("cachegate:source", "cache")} <= props
    meta = {(p["name"], p["value"]) for p in sbom["metadata"]["properties"]}
    indexes = [v for n, v in meta if n == "cachegate:index"]
    assert any("/debian/dists/bookworm/InRelease sha256:" in v for v in indexes)
    assert any("/simple/cachegate-fixture-a/ sha256:" in v for v in indexes)
    assert any(v.endswith(".jar.sha1 sha256:" + fixture_sha256(
        fixtures, BUILD[10][1])) for v in indexes)
    assert ("cachegate:overlap", "false") in meta


@pytest_twisted.inlineCallbacks
def test_a_failing_sbom_check_can_fail(origin, fixtures, start_gateway, tmp_path, capsys):
    """The schema check is real: a component without its name is refused."""
    gw = start_gateway(origin.url)
    yield recorded(gw, fixtures, capsys, tmp_path)
    code, out, _ = yield cli(capsys, cli_config(tmp_path, gw), "session", "sbom", "app")
    sbom = json.loads(out)
    del sbom["components"][0]["name"]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(sbom)) is not None


@pytest_twisted.inlineCallbacks
def test_overlapping_sessions_each_record_and_are_marked(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    ids = []
    for name in ("one", "two"):
        code, out, err = yield cli(capsys, config, "session", "start", "--name", name,
                                         "--clients", LOOPBACK)
        assert code == 0, err
        ids.append(out.strip())
    yield build(gw, fixtures, BUILD[6:7])
    for name in ("one", "two"):
        yield cli(capsys, config, "session", "stop", name)
        code, out, _ = yield cli(capsys, config, "session", "show", name, "--json")
        doc = json.loads(out)
        assert doc["overlap"] is True
        assert [r["url"] for r in doc["rows"]] == [
            "http://registry.npmjs.org/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz"]
    # A session on other clients records nothing of 127.0.0.1's and overlaps no one.
    code, out, _ = yield cli(capsys, config, "session", "start", "--name", "other",
                                   "--clients", "10.99.0.0/16")
    yield build(gw, fixtures, BUILD[6:7])
    yield cli(capsys, config, "session", "stop", "other")
    code, out, _ = yield cli(capsys, config, "session", "show", "other", "--json")
    assert json.loads(out)["responses"] == 0 and json.loads(out)["overlap"] is False


@pytest_twisted.inlineCallbacks
def test_session_run_wraps_a_command_and_exits_with_its_status(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    url = f"http://127.0.0.1:{gw.port}/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz"
    sbom = tmp_path / "run.cdx.json"
    code, out, err = yield cli(
        capsys, config, "session", "run", "--name", "ci", "--clients", LOOPBACK,
        "--sbom", str(sbom), "--", "sh", "-c",
        f"curl -sf -H 'Host: registry.npmjs.org' -o /dev/null {url} && exit 3")
    assert code == 3, err
    assert "stopped: 1 responses, 1 packages" in err
    assert [c["purl"] for c in json.loads(sbom.read_text())["components"]] == [
        "pkg:npm/cachegate-fixture@1.1.0"]


@pytest_twisted.inlineCallbacks
def test_records_survive_a_restart_and_read_from_a_stopped_store(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    session, _, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    yield gw.service.stopService()
    config = cli_config(tmp_path, state_dir=gw.config.server.state_dir)
    code, out, err = yield cli(capsys, config, "session", "sbom", session)
    assert code == 0, err
    assert {c["purl"] for c in json.loads(out)["components"]} == set(PURLS)
    again = start_gateway(origin.url, state_dir=gw.config.server.state_dir)
    code, out, err = yield cli(capsys, cli_config(tmp_path, again), "session", "sbom",
                                     "app")
    assert code == 0, err
    assert {c["purl"] for c in json.loads(out)["components"]} == set(PURLS)


@pytest_twisted.inlineCallbacks
def test_replay_with_the_origin_stopped_serves_only_the_record(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    session, first, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    yield origin.stop_serving()
    origin.reset()
    config = cli_config(tmp_path, gw)
    code, out, err = yield threads.deferToThread(
        _capture, ["--config", str(config), "session", "replay", session, "--clients",
                   LOOPBACK, "--", "true"])
    assert code == 0, err
    replay = yield threads.deferToThread(_start_replay, config, session)
    again = yield build(gw, fixtures)
    for path, reply in again.items():
        assert reply.status == 200, (path, reply.body)
        assert reply.body == first[path].body
        assert reply.headers["x-cache"] == "REPLAY"
    denied = yield fetch(gw.port, "registry.npmjs.org", UNLISTED[1])
    assert denied.status == 403
    text = denied.body.decode()
    assert f"http://registry.npmjs.org{UNLISTED[1]}" in text
    assert f"session {session} (app)" in text and replay in text
    assert origin.requests == []
    # Its own record shows what was served and what was refused.
    yield threads.deferToThread(main, ["--config", str(config), "session", "stop", replay])
    code, out, _ = yield cli(capsys, config, "session", "show", replay, "--json")
    rows = json.loads(out)["rows"]
    assert {r["source"] for r in rows} == {"cache", "error"}
    assert [r["status"] for r in rows if r["source"] == "error"] == [403]


def _start_replay(config: Path, session: str) -> str:
    from gateway.config import load_config
    from gateway.ops.admin_client import AdminClient
    client = AdminClient(load_config(config))
    return client.json("POST", "/api/sessions", body={"replay": session,
                                                      "clients": [LOOPBACK]})["id"]


@pytest_twisted.inlineCallbacks
def test_a_changed_index_at_the_origin_is_not_seen_in_replay(
        origin, fixtures, start_gateway, tmp_path, capsys):
    # The packument is stale at once: outside a replay every request revalidates it.
    always_stale = {"npm": (Rule(r"^/cachegate-fixture$", Policy.REVALIDATE, 0),)}
    gw = start_gateway(origin.url, rules=always_stale)
    session, first, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    npm_index = BUILD[5][1]
    changed = b'{"name": "cachegate-fixture", "versions": {}}'
    origin.behave("/npm/cachegate-fixture", body=changed)
    config = cli_config(tmp_path, gw)
    replay = yield threads.deferToThread(_start_replay, config, session)
    origin.reset()
    again = yield build(gw, fixtures, [BUILD[5]])
    assert again[npm_index].body == first[npm_index].body
    assert origin.requests == []
    yield threads.deferToThread(main, ["--config", str(config), "session", "stop", replay])
    # The twin: outside the replay the change is seen.
    after = yield build(gw, fixtures, [BUILD[5]])
    assert after[npm_index].body == changed
    assert origin.count("/npm/cachegate-fixture") == 1


@pytest_twisted.inlineCallbacks
def test_an_evicted_object_is_an_error_naming_it_never_a_fetch(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    session, _, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    jar = BUILD[9][1]
    gw.store.delete_variants(f"repo1.maven.org{jar}")
    config = cli_config(tmp_path, gw)
    code, out, err = yield threads.deferToThread(
        _capture, ["--config", str(config), "session", "replay", session, "--clients",
                   LOOPBACK, "--", "true"])
    assert code == 1
    assert "not in the store" in err and f"http://repo1.maven.org{jar}" in err
    assert origin.count(f"/maven{jar}") == 1  # only the recorded fill


def _capture(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest_twisted.inlineCallbacks
def test_a_bundle_seeds_an_offline_gateway_tampering_is_refused_reimport_is_a_no_op(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    session, first, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    bundle = tmp_path / "app.tar"
    code, out, err = yield cli(capsys, cli_config(tmp_path, gw), "export", "--session",
                                     "app", "-o", str(bundle))
    assert code == 0, err
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("cachegate-bundle.json").read())
        for obj in meta["objects"]:
            body = tar.extractfile(f"sha256/{obj['sha256'][:2]}/{obj['sha256']}").read()
            assert hashlib.sha256(body).hexdigest() == obj["sha256"]
    assert names[0] == "cachegate-bundle.json"
    assert f"sessions/{session}.json" in names and f"sboms/{session}.cdx.json" in names
    assert len([n for n in names if n.startswith("sha256/")]) == len(
        {o["sha256"] for o in meta["objects"]})
    yield origin.stop_serving()
    origin.reset()
    # B: a fresh state directory, filled while stopped, then served offline.
    state_b = tmp_path / "b"
    config_b = cli_config(tmp_path, state_dir=state_b)
    code, out, err = yield cli(capsys, config_b, "import", str(bundle), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["imported"]) == len(meta["objects"]) and not result["refused"]
    code, out, err = yield cli(capsys, config_b, "import", str(bundle), "--json")
    again = json.loads(out)
    assert again["imported"] == [] and len(again["identical"]) == len(meta["objects"])
    gw_b = start_gateway(origin.url, state_dir=state_b, offline=True)
    replies = yield build(gw_b, fixtures)
    for path, reply in replies.items():
        assert reply.status == 200 and reply.body == first[path].body, path
    assert origin.requests == []
    # The session came along: B can replay it.
    replay = yield threads.deferToThread(_start_replay, cli_config(tmp_path, gw_b), session)
    assert replay


@pytest_twisted.inlineCallbacks
def test_a_tampered_body_is_refused_and_only_it(origin, fixtures, start_gateway, tmp_path,
                                                capsys):
    gw = start_gateway(origin.url)
    yield recorded(gw, fixtures, capsys, tmp_path)
    bundle, tampered = tmp_path / "app.tar", tmp_path / "tampered.tar"
    yield cli(capsys, cli_config(tmp_path, gw), "export", "--session", "app", "-o",
                    str(bundle))
    jar_sha = fixture_sha256(fixtures, BUILD[9][1])
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w") as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith(jar_sha):
                data = data[:-1] + bytes([data[-1] ^ 1])  # same length, one bit off
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    config_b = cli_config(tmp_path, state_dir=tmp_path / "b")
    code, out, err = yield cli(capsys, config_b, "import", str(tampered), "--json")
    assert code == 1
    result = json.loads(out)
    assert len(result["refused"]) == 1 and "fixture-1.0.jar" in result["refused"][0]
    assert not any(k.endswith("fixture-1.0.jar") for k in result["imported"])
    assert len(result["imported"]) > 5


@pytest_twisted.inlineCallbacks
def test_an_import_never_overwrites_other_bytes_stored_under_a_url(
        origin, fixtures, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    yield recorded(gw, fixtures, capsys, tmp_path)
    bundle = tmp_path / "app.tar"
    yield cli(capsys, cli_config(tmp_path, gw), "export", "--session", "app", "-o",
                    str(bundle))
    # B already holds a tarball's URL with other bytes (the origin changed them).
    tgz = BUILD[7][1]
    other = b"other bytes of the same URL\n" * 100
    origin.behave(f"/npm{tgz}", body=other)
    gw_b = start_gateway(origin.url, state_dir=tmp_path / "b")
    reply = yield fetch(gw_b.port, "registry.npmjs.org", tgz)
    assert reply.body == other
    origin.behave(f"/npm{tgz}")
    code, out, err = yield cli(capsys, cli_config(tmp_path, gw_b), "import", str(bundle),
                                     "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["drift"]) == 1 and tgz in result["drift"][0]
    assert not any(k.endswith(tgz) for k in result["imported"])
    again = yield fetch(gw_b.port, "registry.npmjs.org", tgz)
    assert again.body == other and again.headers["x-cache"] == "HIT"
    pins = gw_b.store.pins()
    assert pins["import:app.tar"]["keys"] == len(result["imported"])
    # It went through B's admin API, which reports its progress (the CLI's bar).
    from gateway.config import load_config
    from gateway.ops.admin_client import AdminClient
    work = yield threads.deferToThread(AdminClient(load_config(cli_config(tmp_path, gw_b))).json,
                                       "GET", "/api/bundles/progress")
    assert work["action"] == "import" and 0 < work["done"] <= work["total"] == \
        bundle.stat().st_size


@pytest_twisted.inlineCallbacks
def test_a_standing_replay_from_the_config(origin, fixtures, start_gateway, tmp_path, capsys):
    from dataclasses import replace

    from gateway.config import SessionsConfig
    from tests.gateways import RunningGateway
    gw = start_gateway(origin.url)
    session, first, _ = yield recorded(gw, fixtures, capsys, tmp_path)
    yield gw.service.stopService()
    yield origin.stop_serving()
    origin.reset()
    config = replace(gw.config, sessions=SessionsConfig(clients=(LOOPBACK,), replay="app"))
    standing = RunningGateway(config)
    try:
        again = yield build(standing, fixtures, BUILD[6:8])
        assert [r.body for r in again.values()] == [first[p].body for p in again]
        denied = yield fetch(standing.port, "registry.npmjs.org", UNLISTED[1])
        assert denied.status == 403 and f"session {session} (app)" in denied.body.decode()
        assert standing.store.pins()[f"session:{session}"]["stored"] > 0
    finally:
        yield standing.service.stopService()
    assert origin.requests == []


def test_the_default_client_set_is_a_bridge_network():
    from gateway.front.sessions import client_networks, interface_network
    assert interface_network("lo") == "127.0.0.0/8"
    assert interface_network("no-such-if0") is None
    assert client_networks(["10.1.2.3", "192.168.0.0/16"]) == ["10.1.2.3/32", "192.168.0.0/16"]


@pytest_twisted.inlineCallbacks
def test_session_errors_are_one_line(origin, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    code, _, err = yield cli(capsys, config, "session", "start", "--name", "a/b",
                                   "--clients", LOOPBACK)
    assert code == 1 and err == "cachegate: error: a session name is 1-100 printable " \
                                "characters, no '/'\n"
    code, _, err = yield cli(capsys, config, "session", "stop", "nothing-like-it")
    assert code == 1 and "no session has the id or name 'nothing-like-it'" in err
    code, _, err = yield cli(capsys, config, "session", "start", "--clients", "bogus")
    assert code == 1 and "clients:" in err
    code, _, err = yield cli(capsys, config, "session", "run", "--clients", LOOPBACK)
    assert code == 1 and "needs a command after --" in err
