"""``cachegate warm`` against a running gateway (in this process) in front of the fixture
origin: one lockfile per format made from the fixture tree (tests/lockfile_fixtures.py).
A warm fetches each artifact once, a second warm nothing; at most --jobs at once;
--dry-run contacts nothing; exit codes 0/1/2; pins survive a size_limit squeeze; and
real clients install from the cache afterwards with the origin stopped."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from gateway.ops.admin import AdminService
from gateway.ops.cli import main
from gateway.ops.humanize import human_bytes
from gateway.ops.status_page import render_status
from tests.cli_runs import cli
from tests.clients import need, ok, run
from tests.lockfile_fixtures import lockfiles

GOOD = {"stored", "fetched", "verified"}


@pytest.fixture
def cases(fixtures, tmp_path):  # type: ignore[no-untyped-def]
    return lockfiles(fixtures, tmp_path / "locks")


def cli_config(tmp_path: Path, gw=None, admin_port: int | None = None) -> Path:  # type: ignore[no-untyped-def]
    """A config naming the test gateway's state directory and admin port."""
    port = gw.service.ports("admin")[0] if gw else admin_port
    path = tmp_path / "cli.toml"
    path.write_text(f'[server]\nstate_dir = "{gw.config.server.state_dir if gw else tmp_path}"\n'
                    f'admin = "127.0.0.1:{port}"\n')
    return path


def report(out: str) -> dict:
    return json.loads(out)


@pytest.mark.parametrize("fmt", ["package-lock", "package-lock-v1", "yarn", "pnpm",
                                 "requirements", "poetry", "uv", "cargo", "go.sum",
                                 "gemfile", "apt", "maven"])
@pytest_twisted.inlineCallbacks
def test_a_warm_fetches_each_artifact_once_and_a_second_warm_nothing(
        fmt, cases, origin, start_gateway, tmp_path, capsys):
    if fmt not in cases:
        pytest.skip(f"the fixture tree has no {fmt} objects here")
    case = cases[fmt]
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    code, out, err = yield cli(capsys, config, "warm", "--json", str(case.path))
    assert code == 0, (out, err)
    items = report(out)["items"]
    assert {i["status"] for i in items} <= GOOD, items
    for path in case.artifacts + case.indexes:
        assert origin.count(path) == 1, (path, [r.path for r in origin.requests])
    assert len(origin.requests) == len(case.artifacts) + len(case.indexes)
    # What the lockfile (or the index it names) gives a digest for was checked on fill.
    checked = [i for i in items if i["status"] == "verified"]
    assert checked and all(i["verified"] for i in checked)

    origin.reset()
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(case.path))
    assert code == 0
    assert {i["status"] for i in report(out)["items"]} == {"stored"}
    assert origin.requests == []
    assert gw.service.stats.by_client["warm"].requests["HIT"] > 0


@pytest_twisted.inlineCallbacks
def test_at_most_jobs_downloads_at_once(cases, origin, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    origin.behave("/*", delay_headers=0.05)  # every answer takes a while: requests overlap
    paths = [str(c.path) for name, c in cases.items() if name in ("maven", "apt", "cargo",
                                                                    "go.sum", "uv")]
    code, out, _ = yield cli(capsys, config, "warm", "--jobs", "3", *paths)
    assert code == 0, out
    assert 2 <= origin.max_in_flight <= 3
    assert "verified" in out.splitlines()[-1]


@pytest_twisted.inlineCallbacks
def test_dry_run_lists_the_plan_and_contacts_nothing(cases, origin, tmp_path, capsys):
    config = cli_config(tmp_path, admin_port=9)  # nothing listens there: never asked
    code, out, _ = yield cli(capsys, config, "warm", "--dry-run",
                                   *(str(c.path) for c in cases.values()))
    assert code == 0
    assert "http://registry.npmjs.org/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz" in out
    assert "files listed by https://pypi.org/simple/cachegate-fixture-a/" in out
    assert out.splitlines()[-1].endswith("nothing fetched (--dry-run)")
    assert origin.requests == []


@pytest_twisted.inlineCallbacks
def test_exit_codes_usage_2_failures_1(cases, origin, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    odd = tmp_path / "deps.lockish"
    odd.write_text("x")
    code, _, err = yield cli(capsys, config, "warm", str(odd))
    assert code == 2 and "cannot tell the format" in err
    broken = tmp_path / "broken" / "package-lock.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    code, _, err = yield cli(capsys, config, "warm", str(broken))
    assert code == 2 and "not a readable package-lock file" in err
    code, _, err = yield cli(capsys, config, "warm", str(tmp_path / "missing.lock"))
    assert code == 2
    assert origin.requests == []

    # A lockfile digest the upstream bytes do not match: mismatch, nothing stored.
    lock = json.loads(cases["package-lock"].path.read_text())
    entry = lock["packages"]["node_modules/cachegate-fixture"]
    entry["integrity"] = "sha512-" + "A" * 86 + "=="
    bad = tmp_path / "bad" / "package-lock.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(lock))
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(bad))
    assert code == 1
    statuses = {i["name"]: i["status"] for i in report(out)["items"]}
    assert statuses == {"cachegate-fixture@1.1.0": "mismatch", "@cachegate/fixture@1.0.0": "verified"}
    assert not [e for e in gw.store.entries() if e.meta.url.endswith("cachegate-fixture-1.1.0.tgz")]
    assert gw.service.gateway.flights.integrity.counts["mismatch"] == 1

    # The same URL, now stored with the right bytes, then a lockfile that disagrees: drift.
    code, _, _ = yield cli(capsys, config, "warm", str(cases["package-lock"].path))
    assert code == 0
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(bad))
    assert code == 1
    statuses = {i["name"]: i["status"] for i in report(out)["items"]}
    assert statuses["cachegate-fixture@1.1.0"] == "drift"
    assert [e for e in gw.store.entries() if e.meta.url.endswith("cachegate-fixture-1.1.0.tgz")]
    assert gw.service.gateway.flights.events.drift["npm"] == 1  # cachegate_drift_events_total

    yield gw.service.stopService()
    code, _, err = yield cli(capsys, config, "warm", str(cases["cargo"].path))
    assert code == 1 and "does not answer" in err


@pytest_twisted.inlineCallbacks
def test_pins_survive_a_squeeze_and_an_oversized_set_is_refused(
        cases, origin, start_gateway, tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    npm = cases["package-lock"].path
    code, out, err = yield cli(capsys, config, "warm", "--key-from", str(npm))
    assert code == 0, (out, err)
    assert "pinned as lock-" in out
    pinned = {e.key for e in gw.store.entries()}
    code, out, _ = yield cli(capsys, config, "pin", "ls", "--json")
    [(name, figures)] = report(out)["pins"].items()
    assert figures["stored"] == figures["keys"] == 2 and name.startswith("lock-")

    gw.store.size_limit = gw.store.volume() + 8 * 1024  # room for little more
    code, _, _ = yield cli(capsys, config, "warm", str(cases["apt"].path),
                                 str(cases["maven"].path))
    keys = {e.key for e in gw.store.entries()}
    assert pinned <= keys  # every unpinned object was evicted first
    assert gw.store.volume() <= gw.store.size_limit + max(
        e.meta.length for e in gw.store.entries())
    stats = yield threads.deferToThread(main, ["--config", str(config), "stats", "--json"])
    assert stats == 0
    pinned_bytes = sum(e.meta.length for e in gw.store.entries() if e.key in pinned)
    assert report(capsys.readouterr().out)["cache"]["pinned"] == pinned_bytes
    code, out, _ = yield cli(capsys, config, "stats")
    assert f"pinned: {human_bytes(pinned_bytes)}" in out
    api = next(child for child in gw.service if isinstance(child, AdminService)).api
    page = render_status(api.stats()).decode()
    assert f'id="pinned">{human_bytes(pinned_bytes)}<' in page

    gw.store.size_limit = 1024  # smaller than the set: refused, never evicted silently
    code, _, err = yield cli(capsys, config, "pin", "add", "big", str(cases["maven"].path))
    assert code == 1 and "refused" in err and "size_limit" in err
    code, out, _ = yield cli(capsys, config, "pin", "ls", "--json")
    assert set(report(out)["pins"]) == {name}
    code, out, _ = yield cli(capsys, config, "pin", "rm", name)
    assert code == 0 and report_pins(gw) == {}


def report_pins(gw) -> dict:  # type: ignore[no-untyped-def]
    return gw.store.pins()


@pytest_twisted.inlineCallbacks
def test_content_index_finds_and_serves_objects_by_sha256(cases, origin, fixtures,
                                                          start_gateway, tmp_path, capsys):
    from tests.http_client import fetch
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    yield cli(capsys, config, "warm", str(cases["cargo"].path))
    crate = fixtures.get("crates", "/crates/cgf/1.0.0/download")
    code, out, _ = yield cli(capsys, config, "cache", "ls", "--sha256", crate.sha256,
                                   "--json")
    assert code == 0
    assert [e["url"] for e in report(out)["entries"]] == ["static.crates.io" + crate.path]
    reply = yield fetch(gw.port, "cachegate.internal", f"/sha256/{crate.sha256}")
    assert reply.status == 200 and reply.sha256 == crate.sha256
    missing = yield fetch(gw.port, "cachegate.internal", "/sha256/" + "0" * 64)
    assert missing.status == 404


# -- real clients after a warm, with the origin stopped ---------------------------------

@pytest_twisted.inlineCallbacks
def test_npm_ci_installs_from_the_cache_after_a_warm(cases, origin, start_gateway, tmp_path,
                                                     capsys):
    need(shutil.which("npm"), "npm not installed")
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    case = cases["package-lock"]
    code, _, _ = yield cli(capsys, config, "warm", str(case.path))
    assert code == 0
    yield origin.stop_serving()
    project = case.path.parent
    (project / "npmrc").write_text("")
    done = yield run(["npm", "ci", "--prefix", str(project), "--registry",
                      "http://registry.npmjs.org/", "--userconfig", str(project / "npmrc"),
                      "--cache", str(tmp_path / "npm-cache"), "--no-audit", "--no-fund",
                      "--no-update-notifier", "--fetch-retries", "0", "--loglevel", "error",
                      "--proxy", f"http://127.0.0.1:{gw.port}", "--noproxy", ""])
    ok(done)
    assert (project / "node_modules/@cachegate/fixture/package.json").exists()
    assert (project / "node_modules/cachegate-fixture/payload.bin").exists()


@pytest_twisted.inlineCallbacks
def test_pip_install_require_hashes_from_the_cache_after_a_warm(cases, origin, start_gateway,
                                                                tmp_path, capsys):
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    case = cases["requirements"]
    code, out, _ = yield cli(capsys, config, "warm", str(case.path))
    assert code == 0, out
    yield origin.stop_serving()
    target = tmp_path / "site"
    done = yield run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir",
                      "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
                      "--require-hashes", "-r", str(case.path), "--target", str(target),
                      "--index-url", "http://pypi.org/simple", "--trusted-host", "pypi.org",
                      "--trusted-host", "files.pythonhosted.org", "--proxy",
                      f"http://127.0.0.1:{gw.port}", "--timeout", "20", "--retries", "0"])
    ok(done)
    assert (target / "cachegate_fixture_a" / "payload.bin").exists()
    assert (target / "cachegate_fixture_b" / "payload.bin").exists()


@pytest_twisted.inlineCallbacks
def test_go_mod_download_verifies_the_warmed_modules_with_the_origin_stopped(
        cases, fixtures, origin, start_gateway, tmp_path, capsys):
    """The real go client checks every zip and go.mod against the same go.sum: the h1:
    the gateway verified on fill is the one go computes."""
    need(shutil.which("go"), "go not installed (Debian package golang-go)")
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    case = cases["go.sum"]
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(case.path))
    assert code == 0
    assert {i["status"] for i in report(out)["items"] if i["url"].endswith(".zip")} == {"verified"}
    yield origin.stop_serving()
    project = case.path.parent
    (project / "go.mod").write_text("module cachegate.example/build\n\ngo 1.16\n\n"
                                    "require cachegate.example/fixture/a v1.0.0\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "GOPATH": str(tmp_path / "gopath"), "GOCACHE": str(tmp_path / "gocache"),
           "GOPROXY": "http://proxy.golang.org", "GOSUMDB": "off", "GOFLAGS": "-modcacherw",
           "HTTP_PROXY": f"http://127.0.0.1:{gw.port}", "GONOSUMCHECK": "", "GOTOOLCHAIN": "local"}
    done = yield run(["go", "mod", "download"], env=env, cwd=str(project))
    ok(done)
    zips = list((tmp_path / "gopath/pkg/mod/cache/download").rglob("*.zip"))
    assert len(zips) == 2


@pytest.mark.parametrize("fmt", ["package-lock", "cargo", "maven", "apt", "gemfile", "go.sum"])
@pytest_twisted.inlineCallbacks
def test_warm_reports_a_mismatch_when_upstream_bytes_disagree(fmt, cases, origin,
                                                              start_gateway, tmp_path, capsys):
    """Failure twins: the origin serves a tarball, crate, jar, .deb, gem or module zip whose
    bytes disagree with the digest: the item is a mismatch, nothing is stored, cache
    verify stays clean, exit 1."""
    from gateway.cache.verify import find_problems
    from tests.fixtures import counter_bytes
    if fmt not in cases:
        pytest.skip(f"the fixture tree has no {fmt} objects here")
    case = cases[fmt]
    target = next(p for p in case.artifacts
                  if p.endswith((".tgz", "/download", ".jar", ".deb", ".gem", ".zip")))
    origin.behave(target, body=counter_bytes(4096, b"tampered"))
    gw = start_gateway(origin.url)
    config = cli_config(tmp_path, gw)
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(case.path))
    assert code == 1
    items = report(out)["items"]
    bad = [i for i in items if i["status"] != "verified" and i["status"] in
           ("mismatch", "failed", "drift")]
    assert [i["status"] for i in bad] == ["mismatch"], items
    host_path = target.split("/", 2)[2]
    assert not [e for e in gw.store.entries() if e.meta.url.endswith(host_path)]
    assert find_problems(list(gw.store.entries()))[2] == []
    assert report(out)["summary"]["counts"]["mismatch"] == 1


@pytest_twisted.inlineCallbacks
def test_cargo_fetch_from_the_cache_after_a_warm(cases, fixtures, origin, start_tls_gateway,
                                                 tmp_path, capsys):
    """cargo with its default sparse registry, through the explicit proxy (the CA as
    http.cainfo), after a warm of its Cargo.lock, with the origin stopped."""
    from tests.lang_clients import CARGO, missing
    need(missing("cargo") is None, f"cargo: {missing('cargo')}")
    gw = start_tls_gateway(origin.url, proxy=True)
    config = cli_config(tmp_path, gw)
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(cases["cargo"].path))
    assert code == 0, out
    assert {i["status"] for i in report(out)["items"] if "/crates/" in i["url"]} == {"verified"}
    yield origin.stop_serving()
    project = tmp_path / "app"
    (project / "src").mkdir(parents=True)
    (project / "src/lib.rs").write_text("")
    (project / "Cargo.toml").write_text('[package]\nname = "cachegate-build"\nversion = "0.1.0"\n'
                                        'edition = "2018"\n\n[dependencies]\n'
                                        'cachegate-fixture = "1.0"\n')
    crates = {o.path.split("/")[2]: o for o in fixtures.of("crates") if o.path.endswith("/download")}
    source = 'source = "registry+https://github.com/rust-lang/crates.io-index"\n'
    (project / "Cargo.lock").write_text(
        'version = 3\n\n[[package]]\nname = "cachegate-build"\nversion = "0.1.0"\n'
        'dependencies = [\n "cachegate-fixture",\n]\n\n'
        f'[[package]]\nname = "cachegate-fixture"\nversion = "1.0.0"\n{source}'
        f'checksum = "{crates["cachegate-fixture"].sha256}"\ndependencies = [\n "cgf",\n]\n\n'
        f'[[package]]\nname = "cgf"\nversion = "1.0.0"\n{source}'
        f'checksum = "{crates["cgf"].sha256}"\n')
    home = tmp_path / "cargo-home"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CARGO_HOME": str(home),
           "CARGO_HTTP_PROXY": f"127.0.0.1:{gw.proxy_port}", "CARGO_HTTP_CAINFO": str(gw.cafile),
           "CARGO_NET_RETRY": "0", "CARGO_TERM_COLOR": "never"}
    done = yield run([CARGO, "fetch", "--locked"], env=env, cwd=str(project))
    ok(done)
    fetched = sorted(p.name for p in (home / "registry").rglob("*.crate"))
    assert fetched == ["cachegate-fixture-1.0.0.crate", "cgf-1.0.0.crate"]


@pytest_twisted.inlineCallbacks
def test_under_offline_warm_is_a_readiness_check(cases, origin, start_gateway, tmp_path,
                                                 capsys):
    """cache.offline: nothing is fetched; what is stored is 'stored', the rest 'missing'
    (exit 1): is this host ready for an air-gapped build?"""
    gw = start_gateway(origin.url, offline=True)
    config = cli_config(tmp_path, gw)
    code, out, _ = yield cli(capsys, config, "warm", "--json", str(cases["uv"].path))
    assert code == 1
    assert {i["status"] for i in report(out)["items"]} == {"missing"}
    assert origin.requests == []
