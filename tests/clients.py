"""Real package clients for the tests: each run in a thread so the reactor keeps serving
it, and each ecosystem's recipe aimed at the real hosts through an HTTP proxy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from twisted.internet import defer, threads

from tests import fixtures as fx

IN_CI = os.environ.get("CI") == "true"


def need(condition: object, reason: str) -> None:
    """Skip when ``condition`` fails outside CI; under CI=true a missing need is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"cannot run under CI: {reason}")
        pytest.skip(reason)


def run(argv: list[str], **kwargs) -> defer.Deferred:  # type: ignore[no-untyped-def]
    """A real client in a thread, so the reactor keeps serving it."""
    return threads.deferToThread(subprocess.run, argv, capture_output=True, text=True,
                                 timeout=180, **kwargs)


def ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.args[:3]}... failed:\n{done.stdout}\n{done.stderr}"


def through_proxy(client: str, tree: fx.Fixtures, proxy: str, port: int, tmp: Path):  # type: ignore[no-untyped-def]
    """The argv/kwargs of each client's recipe aimed at the real hosts via ``proxy``."""
    if client == "apt":
        need(shutil.which("apt-get"), "apt-get not installed")
        options = fx.apt_options(tmp / "apt", "http://deb.debian.org/debian", tree.apt_keyring,
                                 proxy=proxy)
        (tmp / "debs").mkdir()
        env = fx.apt_env(tmp / "apt")
        return [(["apt-get", *options, "update"], {"env": env}),
                (["apt-get", *options, "download", *fx.DEBIAN_PACKAGES],
                 {"env": env, "cwd": tmp / "debs"})]
    if client == "pip":
        return [(fx.pip_download_args("http://pypi.org/simple", tmp / "pip",
                                      ["cachegate-fixture-a"], proxy=proxy,
                                      trusted_hosts=("pypi.org", "files.pythonhosted.org")), {})]
    if client == "npm":
        need(shutil.which("npm"), "npm not installed")
        return [(fx.npm_install_args(tmp / "npm", "http://registry.npmjs.org/",
                                     ["@cachegate/fixture"], proxy=proxy), {})]
    need(shutil.which("mvn"), "mvn not installed (package maven)")
    need(fx.maven_plugin_repo(), "no maven-dependency-plugin in /usr/share/maven-repo "
                                 "(packages libmaven-dependency-plugin-java junit4)")
    return [(fx.mvn_get_args(tmp / "m2", "http://repo1.maven.org/maven2", fx.MAVEN_SNAPSHOT,
                             proxy=("127.0.0.1", port)), {"env": fx.mvn_env()})]


PROXIED_FETCHES = {  # a file each client must have asked the real host for
    "apt": ("deb.debian.org", "/debian/debian/pool/main/h/hello-cachegate/hello-cachegate_1.0_all.deb"),
    "pip": ("files.pythonhosted.org", "/pypi/packages/"),
    "npm": ("registry.npmjs.org", "/npm/@cachegate/fixture/-/fixture-1.0.0.tgz"),
    "mvn": ("repo1.maven.org",  # the SNAPSHOT, resolved through its metadata
            "/maven/maven2/org/cachegate/fixture/1.1-SNAPSHOT/fixture-1.1-20240210.100000-2.jar"),
}
