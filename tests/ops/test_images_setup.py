"""`cachegate images setup` (gateway/ops/images_setup.py): hosts.toml per registry for
containerd and Docker >= 28, never touching a file it did not write."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.ops.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _run(tmp_path: Path, *argv: str) -> int:
    config = tmp_path / "c.toml"
    config.write_text('[images]\nlisten = "127.0.0.1:5055"\n')
    return main(["--config", str(config), "images", "setup", "--dir", str(tmp_path / "certs.d"),
                 *argv])


def test_setup_writes_one_hosts_toml_per_exact_registry_and_remove_undoes_it(tmp_path, capsys):  # type: ignore[no-untyped-def]
    certs = tmp_path / "certs.d"
    (certs / "quay.io").mkdir(parents=True)
    (certs / "quay.io" / "hosts.toml").write_text('server = "https://quay.io"\n')  # not ours
    assert _run(tmp_path) == 0
    hub = tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())
    assert hub == {"server": "https://registry-1.docker.io",
                   "host": {"http://127.0.0.1:5055": {"capabilities": ["pull", "resolve"]}}}
    ghcr = tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())
    assert ghcr["server"] == "https://ghcr.io"
    written = sorted(p.parent.name for p in certs.glob("*/hosts.toml"))
    assert written == ["docker.io", "gcr.io", "ghcr.io", "mcr.microsoft.com",
                       "public.ecr.aws", "quay.io", "registry.k8s.io"]
    assert (certs / "quay.io" / "hosts.toml").read_text() == 'server = "https://quay.io"\n'
    assert "not written by cachegate" in capsys.readouterr().out
    assert _run(tmp_path) == 0 and "already points" in capsys.readouterr().out
    assert _run(tmp_path, "--remove") == 0
    assert sorted(p.parent.name for p in certs.glob("*/hosts.toml")) == ["quay.io"]
    assert not (certs / "ghcr.io").exists()


def test_setup_without_a_mirror_is_an_error(tmp_path, capsys):  # type: ignore[no-untyped-def]
    config = tmp_path / "c.toml"
    config.write_text('[images]\nlisten = ""\n')
    assert main(["--config", str(config), "images", "setup", "--dir", str(tmp_path)]) == 1
    assert "images.listen is off" in capsys.readouterr().err
