"""Build records with ``[server] workers = 2``: a real ``cachegate serve`` whose requests
are served by two worker processes while the supervisor runs the admin API.  Every
response either worker serves is in the record when ``session stop`` returns; a standing
``[sessions] record`` session records beside it (both marked overlapping); a replay
started at the supervisor holds both workers to the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, threads

from gateway.ops.cli import main
from tests.http_client import fetch
from tests.processes import GatewayProcess

LOOPBACK = "127.0.0.0/8"
OBJECTS = [
    ("registry.npmjs.org", "/cachegate-fixture", "application/vnd.npm.install-v1+json"),
    ("registry.npmjs.org", "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz", None),
    ("registry.npmjs.org", "/@cachegate/fixture/-/fixture-1.0.0.tgz", None),
    ("repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.pom", None),
    ("repo1.maven.org", "/maven2/org/cachegate/fixture/1.0/fixture-1.0.jar", None),
    ("repo1.maven.org", "/maven2/org/cachegate/fixture-dep/1.0/fixture-dep-1.0.jar", None),
]
PURLS = {"pkg:npm/cachegate-fixture@1.1.0", "pkg:npm/%40cachegate/fixture@1.0.0",
         "pkg:maven/org.cachegate/fixture@1.0", "pkg:maven/org.cachegate/fixture-dep@1.0"}
STANDING = f'[sessions]\nrecord = ["standing"]\nclients = ["{LOOPBACK}"]\n'


def cli(config: Path, *argv: str) -> defer.Deferred:
    """``cachegate --config CONFIG ARGV`` in a thread: (exit code, stdout)."""
    import contextlib
    import io

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--config", str(config), *argv])
        return code, out.getvalue()
    return threads.deferToThread(run)


@defer.inlineCallbacks
def fetch_all(gw: GatewayProcess, times: int = 2):  # type: ignore[no-untyped-def]
    """Each object ``times`` times, each on a new connection (the kernel spreads them over
    the workers): the replies."""
    replies = []
    for _ in range(times):
        for host, path, accept in OBJECTS:
            reply = yield fetch(gw.port, host, path, {"accept": accept} if accept else {})
            replies.append(reply)
    return replies


@pytest_twisted.inlineCallbacks
def test_both_workers_record_and_replay(origin, tmp_path):
    gw = yield GatewayProcess(tmp_path, origin.url, extra=STANDING, workers=2).ready()
    try:
        yield _workers_up(gw)
        code, out = yield cli(gw.config, "session", "start", "--name", "w", "--clients",
                              LOOPBACK)
        assert code == 0
        session = out.strip()
        replies = yield fetch_all(gw)
        assert [r.status for r in replies] == [200] * len(replies)
        code, out = yield cli(gw.config, "session", "stop", "w")
        assert code == 0 and f"{len(replies)} responses, 4 packages" in out, out
        code, out = yield cli(gw.config, "session", "show", "w", "--json")
        doc = json.loads(out)
        assert doc["overlap"] is True and doc["id"] == session
        assert {r["label"] for r in doc["rows"]} >= {"MISS", "HIT"}
        code, out = yield cli(gw.config, "session", "sbom", "w")
        assert {c["purl"] for c in json.loads(out)["components"]} == PURLS
        code, out = yield cli(gw.config, "session", "show", "standing", "--json")
        standing = json.loads(out)
        assert standing["stopped"] is None and standing["overlap"] is True
        assert standing["responses"] >= len(replies)

        # Replay, started at the supervisor: both workers refuse what is not recorded.
        yield origin.stop_serving()
        origin.reset()
        code, out = yield threads.deferToThread(
            _api, gw, "POST", "/api/sessions", {"replay": "w", "clients": [LOOPBACK]})
        again = yield fetch_all(gw, 1)
        assert {r.headers["x-cache"] for r in again} == {"REPLAY"}
        for _ in range(4):
            denied = yield fetch(gw.port, "registry.npmjs.org",
                                 "/cachegate-fixture/-/cachegate-fixture-1.0.0.tgz")
            assert denied.status == 403 and f"session {session} (w)" in denied.body.decode()
        assert origin.requests == []
    finally:
        gw.stop()


def _api(gw: GatewayProcess, method: str, path: str, body=None):  # type: ignore[no-untyped-def]
    from gateway.config import load_config
    from gateway.ops.admin_client import AdminClient
    return 0, AdminClient(load_config(gw.config)).json(method, path, body=body)


@defer.inlineCallbacks
def _workers_up(gw: GatewayProcess):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor, task
    for _ in range(100):
        _, health = yield threads.deferToThread(_api, gw, "GET", "/healthz")
        if [w["state"] for w in health.get("workers", [])].count("up") == 2:
            return
        yield task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"workers not up: {health.get('workers')}")
