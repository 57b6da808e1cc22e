"""``scripts/start.sh --trust-images`` and ``scripts/stop.sh --restore-images``, run for
real on a temporary host (tests/test_scripts.py's ``Host``) with the recording fake
``docker`` of tests/test_trust.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.test_scripts import REPO, START, STOP, Host
from tests.ops.test_trust import FAKE_DOCKER, PYTHON_IMAGE, calls, images


class TrustHost(Host):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.docker_home = tmp / "fake-docker"
        (self.docker_home / "builds").mkdir(parents=True)
        (self.docker_home / "images.json").write_text(json.dumps({"python:3.12": PYTHON_IMAGE}))
        (self.bin / "docker").write_text(FAKE_DOCKER.replace("PYTHON", sys.executable))

    def run_with(self, script: Path, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.tmp), "LANG": "C.UTF-8",
               "FAKE_LOG": str(self.log), "FAKE_DIR": str(self.tmp),
               "FAKE_DOCKER": str(self.docker_home),
               "CACHEGATE_CONFIG": str(self.config), "CACHEGATE_VENV": str(REPO / ".venv"),
               "CACHEGATE_DOCKER_DAEMON_JSON": str(self.daemon_json),
               "CACHEGATE_SYSTEMD": "no", "CACHEGATE_TIMEOUT": "30"}
        return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                              text=True, timeout=120)


@pytest.fixture
def trust_host(tmp_path):  # type: ignore[no-untyped-def]
    made = TrustHost(tmp_path)
    yield made
    made.kill_leftovers()


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_start_trusts_images_and_stop_keeps_them_unless_asked(trust_host):
    out = ok(trust_host.run_with(START, "--trust-images", "python:3.12"))
    assert "python:3.12: now trusts the cachegate CA" in out
    builds = [c for c in calls(trust_host.docker_home) if c[0] == "build"]
    assert len(builds) == 1 and builds[0][:3] == ["build", "--tag", "python:3.12"]
    assert images(trust_host.docker_home)["python:3.12"]["Id"] == "sha256:derived0"
    ok(trust_host.run_with(STOP))
    assert images(trust_host.docker_home)["python:3.12"]["Id"] == "sha256:derived0"
    ok(trust_host.run_with(START))  # no images named: none built
    assert len([c for c in calls(trust_host.docker_home) if c[0] == "build"]) == 1
    out = ok(trust_host.run_with(STOP, "--restore-images"))
    assert "python:3.12: restored to the original" in out
    assert images(trust_host.docker_home)["python:3.12"] == PYTHON_IMAGE


def test_start_trusts_the_config_list_and_a_restart_rebuilds_nothing(trust_host):
    with trust_host.config.open("a") as f:
        f.write('\n[trust]\nimages = ["python:3.12"]\n')
    out = ok(trust_host.run_with(START))
    assert "python:3.12: now trusts the cachegate CA" in out
    ok(trust_host.run_with(STOP))
    out = ok(trust_host.run_with(START))
    assert "python:3.12: already trusts the cachegate CA" in out
    assert [c[0] for c in calls(trust_host.docker_home)].count("build") == 1
    ok(trust_host.run_with(STOP, "--restore-images"))
    assert images(trust_host.docker_home)["python:3.12"] == PYTHON_IMAGE


@pytest.mark.parametrize("script, args", [(START, ("--trust-images",)),
                                          (START, ("--bogus",)), (STOP, ("--bogus",))])
def test_bad_arguments_are_one_line_errors(trust_host, script, args):
    done = trust_host.run_with(script, *args)
    assert done.returncode != 0 and done.stderr.startswith("error: ")
    assert not trust_host.pids()
