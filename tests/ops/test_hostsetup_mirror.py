"""start.sh's daemon.json edit with the registry mirror (gateway/ops/hostsetup.py): the
mirror goes first in "registry-mirrors", beside the DNS change and in the same backup, and
stop.sh's restore puts the original back byte for byte."""

from __future__ import annotations

import json
from dataclasses import replace

from gateway.config import Config, ImagesConfig
from gateway.ops.hostsetup import main, mirror_url, restore_dns, set_dns, shell_env

MIRROR = "http://127.0.0.1:5000"


def test_mirror_merged_first_and_restored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "daemon.json"
    original = b'{"registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:5000/"],' \
               b' "log-level": "warn"}\n'
    path.write_bytes(original)
    assert set_dns(path, "172.17.0.1", MIRROR)
    data = json.loads(path.read_text())
    assert data["dns"] == ["172.17.0.1"] and data["log-level"] == "warn"
    assert data["registry-mirrors"] == [MIRROR, "https://mirror.gcr.io"]
    assert not set_dns(path, "172.17.0.1", MIRROR)  # idempotent
    assert restore_dns(path) == "restored" and path.read_bytes() == original


def test_no_mirror_key_without_a_mirror(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "daemon.json"
    assert set_dns(path, "172.17.0.1")
    assert "registry-mirrors" not in json.loads(path.read_text())
    assert restore_dns(path) == "removed" and not path.exists()


def test_cli_and_env(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "daemon.json"
    assert main(["set-dns", str(path), "172.17.0.1", "--mirror", MIRROR]) == 0
    assert json.loads(path.read_text())["registry-mirrors"] == [MIRROR]
    assert f"MIRROR_URL={MIRROR}" in shell_env(Config())
    assert mirror_url(replace(Config(), images=ImagesConfig(listen=None))) == ""
    assert mirror_url(replace(Config(), images=ImagesConfig(("0.0.0.0", 5001)))) == \
        "http://127.0.0.1:5001"
    assert mirror_url(replace(Config(), images=ImagesConfig(("::1", 5001)))) == \
        "http://[::1]:5001"
    path.write_text('{"registry-mirrors": "x"}')
    assert main(["set-dns", str(path), "172.17.0.1", "--mirror", MIRROR]) == 1
    assert "not a list" in capsys.readouterr().err
