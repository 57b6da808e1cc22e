"""`cachegate doctor`'s registry-mirror check (gateway/ops/doctor.py): daemon.json names the
mirror first, and the mirror answers /v2/ (dockerd silently falls back when it does not)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest_twisted
from twisted.internet import threads

from gateway.config import Config, ImagesConfig
from gateway.ops.doctor import Situation, check_registry_mirror
from tests.processes import free_port
from tests.registry_gateways import Mirror


def _situation(tmp_path, port: int, mirrors) -> Situation:  # type: ignore[no-untyped-def]
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"registry-mirrors": mirrors}))
    config = replace(Config(), images=ImagesConfig(("127.0.0.1", port)))
    return Situation(config, ["127.0.0.1"], None, None, daemon_json, None, "example.org", 2.0)


@pytest_twisted.inlineCallbacks
def test_mirror_set_and_answering(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mirror = Mirror(tmp_path / "m", "http://127.0.0.1:9")
    try:
        s = _situation(tmp_path, mirror.port, [mirror.url, "https://mirror.gcr.io"])
        check = yield threads.deferToThread(check_registry_mirror, s)
        assert check.ok is True, check
    finally:
        yield mirror.close()


def test_mirror_missing_or_silent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    missing = check_registry_mirror(_situation(tmp_path, port, []))
    assert missing.ok is False and "scripts/start.sh" in missing.fix
    second = check_registry_mirror(_situation(tmp_path, port, ["https://x.example",
                                                                f"http://127.0.0.1:{port}"]))
    assert second.ok is False
    silent = check_registry_mirror(_situation(tmp_path, port, [f"http://127.0.0.1:{port}"]))
    assert silent.ok is False and "does not answer" in silent.detail
    off = replace(_situation(tmp_path, port, []).config, images=ImagesConfig(listen=None))
    assert check_registry_mirror(replace(_situation(tmp_path, port, []), config=off)).ok is None
