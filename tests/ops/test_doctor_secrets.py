"""`cachegate doctor`'s check of the secret files a config names (the cluster token, S3
and registry credentials): readable by their owner alone, or the chmod that fixes it."""

from __future__ import annotations

from gateway.config import load_config
from gateway.ops.doctor import check_secret_files
from tests.processes import free_port


def test_a_secret_open_to_other_users_fails_with_the_chmod_that_fixes_it(tmp_path):
    token, s3, hub = tmp_path / "token", tmp_path / "s3.cred", tmp_path / "hub.cred"
    for path, mode in ((token, 0o644), (s3, 0o600), (hub, 0o640)):
        path.write_text("secret\n")
        path.chmod(mode)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[cluster]\nlisten = "127.0.0.1:{free_port()}"\ntoken_file = "{token}"\n'
        f'[store.s3]\nendpoint = "http://127.0.0.1:9"\nbucket = "b"\n'
        f'credentials_file = "{s3}"\n[upstreams.dockerhub]\ncredentials_file = "{hub}"\n')
    checks = {c.title: c for c in check_secret_files(load_config(config))}
    assert [checks[f"secret {p}"].ok for p in (token, s3, hub)] == [False, True, False]
    assert checks[f"secret {token}"].detail == \
        "[cluster] token_file: open to other users (mode 0644)"
    assert checks[f"secret {token}"].fix == f"chmod 600 {token}"
    assert checks[f"secret {hub}"].detail.startswith("[upstreams.dockerhub] credentials_file")

    token.chmod(0o600)
    hub.unlink()  # a missing file is for the check that reads it (the parent's) to report
    checks = {c.title: c for c in check_secret_files(load_config(config))}
    assert {title: c.ok for title, c in checks.items()} == {f"secret {token}": True,
                                                             f"secret {s3}": True}
