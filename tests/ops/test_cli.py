"""The ``cachegate`` command: every command against a gateway in this process (the CLI
runs in a thread, talking to it over loopback like any client), and offline on its state
directory once it is stopped."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from gateway.ecosystems.catalogue import BUILTIN
from gateway.ops.cli import LOCK_FILE, hold_state_lock, main
from gateway.config import load_config
from tests.cli_runs import cli, own_stderr
from tests.dns_helpers import FakeUpstream
from tests.gateways import RunningGateway
from tests.processes import free_port
from tests.admin_gateways import ALPINE_HOST, APK, PYPI_HOST, WHEEL, serve_two

COMMANDS = [[], ["serve"], ["ca"], ["ca", "export"], ["ca", "path"], ["ca", "rotate"],
            ["cache"], ["cache", "ls"], ["cache", "clear"], ["cache", "verify"], ["stats"],
            ["doctor"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cachegate")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(['cachegate', *command])}")


@pytest.mark.parametrize("argv", [["cache", "nuke"], ["stats", "--interval", "0"], [],
                                  ["ca"], ["doctor", "--timeout", "x"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: cachegate" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--config", "{c}", "--state-dir", "{s}", "cache", "ls", "--json"],
    ["cache", "ls", "--json", "--config", "{c}", "--state-dir", "{s}"],
    ["cache", "--config", "{c}", "ls", "--state-dir", "{s}", "--json"],
    ["--config", "{c}", "cache", "ls", "--json", "--state-dir", "{s}"],
], ids=["before", "after", "between", "split"])
def test_global_options_work_before_or_after_the_command(argv, tmp_path, capsys):
    """``cachegate cache ls --config FILE --state-dir D`` reads FILE and looks in D,
    wherever the options stand (the form ``cachegate serve --config FILE`` was refused)."""
    state = tmp_path / "elsewhere"
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "unused"}"\n'
                      f'admin = "127.0.0.1:{free_port()}"\n')
    argv = [a.format(c=config, s=state) for a in argv]
    assert main(argv) == 1
    assert own_stderr(capsys.readouterr().err) == f"cachegate: error: no cache in {state}: " \
        "the gateway has not run with this state directory (see --state-dir)\n"


def test_a_bad_config_after_the_command_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nhttp_port = 'x'\n")
    assert main(["serve", "--config", str(bad)]) == 1
    err = own_stderr(capsys.readouterr().err)
    assert err.startswith(f"cachegate: error: {bad}: server.http_port:")


def write_config(tmp_path: Path, gw: RunningGateway | None = None, **server: object) -> Path:
    """A config file naming the test gateway's state directory and admin port."""
    state = tmp_path / "state"
    admin = gw.admin_port if gw else free_port()  # type: ignore[attr-defined]
    lines = ["[server]", f'state_dir = "{state}"', f'admin = "127.0.0.1:{admin}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in server.items()]
    path = tmp_path / "cli.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest_twisted.inlineCallbacks
def test_stats_show_ratios_ecosystems_clients_and_top_objects(bare_origin, admin_gateway,
                                                              tmp_path, capsys):
    gw = admin_gateway(bare_origin.url)
    config = write_config(tmp_path, gw)
    yield serve_two(bare_origin, gw)
    code, out, _ = yield cli(capsys, config, "stats")
    assert code == 0
    assert "3 requests, hit ratio 33.3%" in out
    assert "from cache 68.4 KiB, from upstream 73.2 KiB" in out
    assert "cache: 2 objects" in out
    pypi = next(line for line in out.splitlines() if line.startswith("pypi "))
    assert pypi.split()[1:3] == ["2", "50.0%"]
    assert next(line for line in out.splitlines() if line.startswith("127.0.0.1 ")).split()[1] \
        == "3"
    assert out.index(PYPI_HOST + WHEEL) < out.index(ALPINE_HOST + APK)  # top objects
    code, out, _ = yield cli(capsys, config, "stats", "--watch", "--interval", "0.05",
                             "--count", "3")
    assert code == 0 and out.count("hit ratio 33.3%") == 3
    code, out, _ = yield cli(capsys, config, "stats", "--json")
    assert code == 0 and json.loads(out)["gateway"]["total"]["requests"] == {"MISS": 2, "HIT": 1}


@pytest_twisted.inlineCallbacks
def test_stats_without_a_gateway_is_one_error_line(tmp_path, capsys):
    code, out, err = yield cli(capsys, write_config(tmp_path), "stats")
    assert code == 1 and out == ""
    assert err.startswith("cachegate: error: the gateway's admin API at http://127.0.0.1:")
    assert err.count("\n") == 1


@pytest_twisted.inlineCallbacks
def test_cache_ls_clear_verify_through_the_running_gateway(bare_origin, admin_gateway,
                                                           tmp_path, capsys):
    gw = admin_gateway(bare_origin.url)
    config = write_config(tmp_path, gw)
    wheel, _ = yield serve_two(bare_origin, gw)
    code, out, _ = yield cli(capsys, config, "cache", "ls")
    assert code == 0 and out.splitlines()[-1].startswith("2 objects")
    assert f"68.4 KiB  pypi      200  {PYPI_HOST + WHEEL}" in out
    code, out, _ = yield cli(capsys, config, "cache", "ls", "--ecosystem", "alpine", "--json")
    assert [e["url"] for e in json.loads(out)["entries"]] == [ALPINE_HOST + APK]

    code, _, err = yield cli(capsys, config, "cache", "clear")  # stdin is not a terminal
    assert code == 1 and "add --yes" in err and len(list(gw.store.entries())) == 2

    entry = next(e for e in gw.store.entries() if e.meta.ecosystem == "pypi")
    Path(entry.path).write_bytes(wheel[:-1])  # truncated on disk
    code, out, _ = yield cli(capsys, config, "cache", "verify")
    assert code == 0
    assert f"dropped {PYPI_HOST + WHEEL}: {len(wheel) - 1} bytes, stored length" in out
    assert "checked 2 objects" in out and "1 corrupt, dropped" in out
    assert [e.meta.ecosystem for e in gw.store.entries()] == ["alpine"]

    code, out, _ = yield cli(capsys, config, "cache", "clear", "--prefix", ALPINE_HOST, "--yes")
    assert code == 0 and out.startswith("deleted 1 objects")
    assert list(gw.store.entries()) == []


@pytest_twisted.inlineCallbacks
def test_cache_commands_work_on_the_state_dir_when_the_gateway_is_stopped(
        bare_origin, admin_gateway, tmp_path, capsys):
    gw = admin_gateway(bare_origin.url)
    config = write_config(tmp_path, gw)
    wheel, _ = yield serve_two(bare_origin, gw)
    entry = next(e for e in gw.store.entries() if e.meta.ecosystem == "pypi")
    yield gw.service.stopService()
    with open(entry.path, "r+b") as body:
        body.write(b"\0")
    code, out, _ = yield cli(capsys, config, "cache", "ls", "--ecosystem", "pypi")
    assert code == 0 and PYPI_HOST + WHEEL in out and "1 objects" in out
    code, out, _ = yield cli(capsys, config, "cache", "verify", "--json")
    assert code == 0 and json.loads(out)["dropped"] == [
        {"key": entry.key, "url": PYPI_HOST + WHEEL, "reason": "sha256 mismatch"}]
    code, out, _ = yield cli(capsys, config, "cache", "clear", "--yes")
    assert code == 0 and out.startswith("deleted 1 objects")
    code, out, _ = yield cli(capsys, config, "cache", "ls")
    assert code == 0 and out == "0 objects, 0 B\n"

    lock = hold_state_lock(tmp_path / "state")  # as a running `cachegate serve` would
    try:
        code, _, err = yield cli(capsys, config, "cache", "ls")
        assert code == 1 and "holds" in err and "admin API" in err
    finally:
        lock.close()


def test_a_second_serve_on_the_same_state_dir_is_refused(tmp_path):
    state = tmp_path / "state"
    lock = hold_state_lock(state)
    try:
        done = subprocess.run([sys.executable, "-m", "gateway.ops.cli", "--state-dir", str(state),
                               "serve"], capture_output=True, text=True, timeout=60)
    finally:
        lock.close()
    assert done.returncode == 1
    assert done.stderr == f"cachegate: error: {state} is in use by another cachegate serve " \
                          f"(pid {os.getpid()})\n"
    with open(state / LOCK_FILE) as f:  # released
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest_twisted.inlineCallbacks
def test_ca_export_path_and_rotate(bare_origin, admin_gateway, tmp_path, capsys):
    gw = admin_gateway(bare_origin.url)
    config = write_config(tmp_path, gw)
    cert = tmp_path / "state" / "ca" / "ca.crt"
    code, out, _ = yield cli(capsys, config, "ca", "export")
    assert code == 0 and out.encode() == cert.read_bytes()
    code, _, _ = yield cli(capsys, config, "ca", "export", "-o", str(tmp_path / "out.crt"))
    assert code == 0 and (tmp_path / "out.crt").read_bytes() == cert.read_bytes()
    code, out, _ = yield cli(capsys, config, "ca", "path")
    assert code == 0 and out == f"{cert}\n"

    old = cert.read_bytes()
    code, _, err = yield cli(capsys, config, "ca", "rotate")
    assert code == 1 and "add --yes" in err and cert.read_bytes() == old
    code, out, _ = yield cli(capsys, config, "ca", "rotate", "--yes")
    assert code == 0 and "restart it" in out  # the gateway here still runs the old CA
    assert cert.read_bytes() != old
    kept = [p for p in (tmp_path / "state").iterdir() if p.name.startswith("ca.old-")]
    assert len(kept) == 1 and (kept[0] / "ca.crt").read_bytes() == old

    (tmp_path / "other").mkdir()
    empty = write_config(tmp_path / "other")
    code, out, err = yield cli(capsys, empty, "ca", "export")
    assert code == 1 and out == "" and "no CA yet" in err


# -- doctor ------------------------------------------------------------------------------

ADVERTISED = "10.11.12.13"  # what our DNS answers; Docker is pointed at it


def doctor_config(tmp_path: Path, origin_url: str, forwarder: str, **changes: str) -> Path:
    """Every port fixed (doctor reads them from the file, as the gateway does)."""
    lines = ["[server]", f'state_dir = "{tmp_path / "state"}"', 'listen = ["127.0.0.1"]',
             f"http_port = {free_port()}", f"https_port = {free_port()}",
             f'admin = "127.0.0.1:{free_port()}"',
             "[images]", f'listen = "127.0.0.1:{free_port()}"', "[dns]", f"port = {free_port()}",
             f'forwarders = ["{forwarder}"]', f'advertise_ipv4 = "{ADVERTISED}"']
    for upstream in BUILTIN:
        origin = changes.get(upstream.name, f"{origin_url}/{upstream.name}")
        lines += [f"[upstreams.{upstream.name}]", f'origin = "{origin}"']
    path = tmp_path / "doctor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def verdicts(out: str) -> dict[str, str]:
    """Check title -> ✓ ✗ or –."""
    found = {}
    for line in out.splitlines():
        if line[:1] in "✓✗–" and line[:2].endswith(" "):
            found[line[2:].split(": ")[0]] = line[0]
    return found


@pytest_twisted.inlineCallbacks
def test_doctor_passes_every_check_of_a_healthy_setup_and_names_the_fix_for_each_failure(
        bare_origin, tmp_path, capsys):
    upstream = FakeUpstream(reactor, {"example.com": ["example.com. 60 IN A 192.0.2.1"]}).start()
    config_path = doctor_config(tmp_path, bare_origin.url, upstream.address,
                                gradle="http://127.0.0.1:9/gradle")
    config = load_config(config_path)
    gw = RunningGateway(config)
    pem = (tmp_path / "state" / "ca" / "ca.crt").read_text()
    bundle = tmp_path / "bundle.crt"
    bundle.write_text("# the host's CAs\n" + pem)
    daemon = tmp_path / "daemon.json"
    mirror = "http://127.0.0.1:%d" % config.images.listen[1]  # type: ignore[index]
    daemon.write_text(json.dumps({"dns": [ADVERTISED], "log-driver": "local",
                                  "registry-mirrors": [mirror]}))
    args = ["doctor", "--daemon-json", str(daemon), "--trust-bundle", str(bundle),
            "--timeout", "1"]
    try:
        code, out, _ = yield cli(capsys, config_path, *args)
        found = verdicts(out)
        failed = {title for title, mark in found.items() if mark != "✓"}
        assert failed == {"upstream gradle (http://127.0.0.1:9)",
                          "build images trust the CA", "workers"}, out  # skipped: none listed
        assert found["build images trust the CA"] == "–"                # and one process
        assert found["workers"] == "–"
        assert found["Docker registry mirror"] == "✓"
        assert code == 1
        assert "fix: check the network, proxy and firewall" in out
        assert found[f"DNS 127.0.0.1:{config.dns.port} redirects deb.debian.org"] == "✓"
        assert found[f"DNS 127.0.0.1:{config.dns.port} forwards example.com"] == "✓"
        assert f"port HTTPS 127.0.0.1:{config.server.https_port}: held by cachegate" in out
        names = sum(len(u.hosts) for u in BUILTIN)  # one per exact name or wildcard
        assert f"all {names} catalogue names verify against the CA" in out
        assert "upstream pypi" in out and out.count("✓ port ") == 4  # http https dns admin

        bundle.write_text("# the host's CAs, ours missing\n")
        daemon.write_text(json.dumps({"log-driver": "local"}))
        code, out, _ = yield cli(capsys, config_path, *args)
        assert code == 1
        assert verdicts(out)["CA in the host trust store"] == "✗"
        assert "update-ca-certificates" in out
        assert 'no "dns" key' in out and f'"dns": ["{ADVERTISED}"]' in out
        assert verdicts(out)["Docker registry mirror"] == "✗"
    finally:
        yield gw.service.stopService()

    (tmp_path / "other").mkdir()
    held = RunningGateway(load_config(doctor_config(tmp_path / "other", bare_origin.url,
                                                    upstream.address)))
    try:  # another process (here: another gateway) on our HTTP port
        held_port = held.port
        config_path.write_text(config_path.read_text().replace(
            f"http_port = {config.server.http_port}", f"http_port = {held_port}"))
        code, out, _ = yield cli(capsys, config_path, *args)
    finally:
        yield held.service.stopService()
        yield upstream.stop()
    assert code == 1
    assert f"✗ port HTTP 127.0.0.1:{held_port}: in use by another process" in out
    assert "ss -lntup" in out
    assert f"✓ port HTTPS 127.0.0.1:{config.server.https_port}: free to bind" in out
    assert "gateway: not running" in out
    assert verdicts(out)[f"DNS 127.0.0.1:{config.dns.port} redirects deb.debian.org"] == "✗"
    assert "fix: start it" in out
