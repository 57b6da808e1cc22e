"""Shared fixtures: a gateway in this process on loopback port 0, in front of the fixture
origin (``tests/origin.py``), the only fake in the suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogPublisher

from tests.gateways import RunningGateway, Started, gateway_config

# Fixtures shared across modules, kept beside their helpers.
pytest_plugins = ("tests.admin_gateways", "tests.tls_gateways", "tests.docker_daemon")


def _log_to_current_stderr(event: dict) -> None:
    """Our log lines (and Twisted's warnings) go to whatever sys.stderr is now, so pytest
    shows them with the failing test they belong to."""
    level = event.get("log_level", LogLevel.info)
    if level >= LogLevel.warn or (level == LogLevel.info and
                                  not event.get("log_namespace", "").startswith("twisted.")):
        sys.stderr.write(formatEventAsClassicLogText(event) or "")
        if event.get("log_failure"):
            sys.stderr.write(event["log_failure"].getTraceback())


globalLogPublisher.addObserver(_log_to_current_stderr)


@pytest.fixture
def start_gateway(tmp_path):  # type: ignore[no-untyped-def]
    """``start_gateway(origin_url, **cache_settings) -> RunningGateway``; stopped after."""
    started = Started()

    def start(origin_url: str, state_dir: Path | None = None, rules: dict | None = None,
              https_port: int = 0, http_port: int = 0, **cache: object) -> RunningGateway:
        return started.add(RunningGateway(gateway_config(
            state_dir or tmp_path / "state", origin_url, rules, https_port, http_port, **cache)))

    yield start
    started.stop_all()


@pytest.fixture(scope="session")
def fixture_tree(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The fixture tree, built once per session (it signs an apt repo, builds wheels…)."""
    from tests.fixtures import build_fixtures
    return build_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def fixtures(fixture_tree):  # type: ignore[no-untyped-def]
    return fixture_tree


@pytest.fixture
def origin(fixture_tree, tmp_path):  # type: ignore[no-untyped-def]
    """The recording fixture origin on a loopback port, serving a private copy of the tree
    (tests add and change objects in it)."""
    import shutil

    from tests.origin import Origin
    root = tmp_path / "origin"
    shutil.copytree(fixture_tree.root, root, symlinks=True)
    server = Origin(root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())
