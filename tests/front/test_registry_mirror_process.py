"""The registry mirror in a real ``cachegate serve`` process: ``kill -9`` during a blob
fill leaves nothing partial to serve after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, task

from tests.http_client import fetch
from tests.oci_images import ACCEPT_ALL, Layout
from tests.processes import ROOT, free_port
from tests.registry_origin import RegistryOrigin


def _config(tmp: Path, state: Path, origin: str, mirror_port: int) -> Path:
    path = tmp / "cachegate.toml"
    path.write_text("\n".join([
        "[server]", f'state_dir = "{state}"', 'listen = ["127.0.0.1"]',
        f"http_port = {free_port()}", "https_port = 0", f'admin = "127.0.0.1:{free_port()}"',
        "[images]", f'listen = "127.0.0.1:{mirror_port}"',
        "[dns]", "port = 0", 'forwarders = ["127.0.0.1:9"]',
        "[upstreams.dockerhub]", f'origin = "{origin}"', ""]))
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.ops.cli", "--config",
                                 str(config), "serve"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def _until(condition, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise TimeoutError(what)


@pytest_twisted.ensureDeferred
async def test_kill_9_during_a_blob_fill_leaves_nothing_partial(tmp_path):  # type: ignore[no-untyped-def]
    import socket
    upstream = RegistryOrigin(reactor)
    layout = Layout()
    top = layout.image("big", layer_sizes=(3_000_000,))
    upstream.add("library/big", "latest", layout, top)
    layer = json.loads(top.data)["layers"][0]["digest"]
    upstream.stall[layer] = 1_000_000
    upstream.listen()
    port = free_port()
    state = tmp_path / "state"
    config = _config(tmp_path, state, upstream.url(), port)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    proc = _serve(config, tmp_path / "gateway.log")
    try:
        await _until(listening, "the mirror did not start")
        pending = fetch(port, "127.0.0.1", f"/v2/library/big/blobs/{layer}",
                        {"accept": ACCEPT_ALL})
        pending.addErrback(lambda _: None)  # the connection dies with the gateway
        partial = state / "cache" / "partial"
        await _until(lambda: any(p.stat().st_size >= 1_000_000 for p in partial.rglob("*")
                                 if p.is_file()), "no partial file filled")  # or a worker's
        os.killpg(proc.pid, signal.SIGKILL)  # the gateway and its workers, as in a crash
        proc.wait(10)
        await pending
        assert any(p.is_file() for p in partial.rglob("*"))  # the debris of the crash
        del upstream.stall[layer]
        proc = _serve(config, tmp_path / "gateway.log")
        await _until(listening, "the mirror did not restart")
        assert not any(p.is_file() for p in partial.rglob("*"))
        upstream.reset()
        reply = await fetch(port, "127.0.0.1", f"/v2/library/big/blobs/{layer}",
                            {"accept": ACCEPT_ALL})
        assert reply.status == 200 and "sha256:" + reply.sha256 == layer
        assert reply.headers["x-cache"] == "MISS"  # fetched again, nothing partial served
        assert upstream.count("GET", layer, where="cdn") == 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        await upstream.stop()
