"""Real registry clients through the mirror, in front of Debian's docker-registry
(distribution 2.8) holding skopeo-pushed test images (tests/oci_images.py):

- the session's private dockerd with ``registry-mirrors``: ``docker pull``, ``rmi``, pull
  again; pulls by digest equal to upstream's; BuildKit ``FROM``;
- ``ctr images pull --hosts-dir`` for a non-Hub name (containerd's ``?ns=`` route);
- ``skopeo copy`` through a ``registries.conf`` mirror (a registry host in the path);

each asserting that its second run costs the upstream no GET.  And the failure twins: a
corrupted upstream blob is never stored and its pull fails; with the upstream down, cached
tags still pull and an unknown image gets a 404 that dockerd falls back from.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from gateway.ecosystems.images import object_key
from tests.clients import need, ok, run
from tests.oci_images import Layout, Registry, populate, push
from tests.registry_gateways import Mirror

pytestmark = pytest.mark.usefixtures("mirror_settings")

# The registries whose origin is the test upstream: Hub for dockerd, ghcr for ctr, quay
# for skopeo.
NAMES = ("dockerhub", "ghcr", "quay")


def _need_tools() -> None:
    for tool, package in (("docker-registry", "docker-registry"), ("skopeo", "skopeo"),
                          ("ctr", "containerd"), ("unshare", "util-linux")):
        need(shutil.which(tool), f"{tool} not installed (Debian package {package})")
    need(os.geteuid() == 0, "the registry client tests need root (dockerd, unshare -m)")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):  # type: ignore[no-untyped-def]
    _need_tools()
    work = tmp_path_factory.mktemp("registry")
    registry = Registry(work / "registry").start()
    try:
        images = populate(registry, work / "layouts")
        broken = Layout()
        top = broken.image("broken", layer_sizes=(5000,))
        broken.tag(top, "latest")
        push(broken.write(work / "layouts" / "broken"), "single",
             f"{registry.address}/library/broken:latest")
        herd = Layout()
        herd_top = herd.image("herd", layer_sizes=(3_000_000, 2_000_000))
        herd.tag(herd_top, "latest")
        push(herd.write(work / "layouts" / "herd"), "single",
             f"{registry.address}/library/herd:latest")
        registry.herd = herd_top  # type: ignore[attr-defined]
        registry.images = images  # type: ignore[attr-defined]
        registry.broken = broken, top  # type: ignore[attr-defined]
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def mirror(upstream, tmp_path_factory):  # type: ignore[no-untyped-def]
    m = Mirror(tmp_path_factory.mktemp("mirror"), upstream.url, NAMES)
    yield m
    pytest_twisted.blockon(m.close())


@pytest.fixture(scope="module")
def mirror_settings(docker_daemon, mirror):  # type: ignore[no-untyped-def]
    """The daemon's ``registry-mirrors`` names the mirror, and is taken out again after the
    module.  A restart, not a reload: dockerd 20.10 reloads the key on SIGHUP, but its
    BuildKit keeps the mirrors it started with."""
    # One download attempt: the corrupted layer fails at once, not after five back-offs.
    docker_daemon.write_settings({**docker_daemon.default_settings(),
                                  "registry-mirrors": [mirror.url],
                                  "max-download-attempts": 1})
    docker_daemon.restart()
    info = docker_daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}")
    assert mirror.url in info.stdout, info.stdout
    yield
    docker_daemon.write_settings(docker_daemon.default_settings())
    docker_daemon.restart()


def _docker(daemon, *argv: str):  # type: ignore[no-untyped-def]
    return threads.deferToThread(daemon.docker, *argv, check=False, timeout=180)


def _upstream_digest(upstream: Registry, repo: str) -> str:
    import urllib.request
    from tests.oci_images import ACCEPT_ALL
    request = urllib.request.Request(f"{upstream.url}/v2/{repo}/manifests/latest",
                                     method="HEAD", headers={"Accept": ACCEPT_ALL})
    with urllib.request.urlopen(request) as response:
        return response.headers["Docker-Content-Digest"]


def _repo_digest(daemon, image: str) -> str:  # type: ignore[no-untyped-def]
    done = daemon.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
    digests = json.loads(done.stdout)
    return digests[0].rpartition("@")[2] if digests else ""


@pytest_twisted.ensureDeferred
async def test_docker_pull_rmi_pull_costs_no_upstream_get(docker_daemon, upstream, mirror):  # type: ignore[no-untyped-def]
    gets = upstream.count("GET")
    ok(await _docker(docker_daemon, "pull", "single:latest"))
    assert upstream.count("GET") > gets  # the cold pull went through us to the upstream
    assert _repo_digest(docker_daemon, "single:latest") == \
        _upstream_digest(upstream, "library/single")
    assert mirror.stats.by_ecosystem["dockerhub"].requests["MISS"] > 0
    ok(await _docker(docker_daemon, "rmi", "single:latest"))
    gets = upstream.count("GET")
    ok(await _docker(docker_daemon, "pull", "single:latest"))
    assert upstream.count("GET") == gets, "the second pull fetched from the upstream"


@pytest_twisted.ensureDeferred
async def test_pull_by_digest_keeps_upstreams_digest(docker_daemon, upstream, mirror):  # type: ignore[no-untyped-def]
    for repo in ("library/multi", "library/dlist"):
        name = repo.partition("/")[2]
        digest = _upstream_digest(upstream, repo)
        ok(await _docker(docker_daemon, "pull", f"{name}@{digest}"))
        assert _repo_digest(docker_daemon, f"{name}@{digest}") == digest
        # The index (or list) itself is stored byte-exact under its digest.
        assert mirror.store.get(object_key("manifests", digest)) is not None
        ok(await _docker(docker_daemon, "rmi", f"{name}@{digest}"))
        gets = upstream.count("GET")
        ok(await _docker(docker_daemon, "pull", f"{name}@{digest}"))
        assert upstream.count("GET") == gets


@pytest_twisted.ensureDeferred
async def test_buildkit_from_goes_through_the_mirror(docker_daemon, upstream, mirror,  # type: ignore[no-untyped-def]
                                                    tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM team/tool:latest\nCOPY hello /hello\n")
    (tmp_path / "hello").write_text("hello\n")
    before = mirror.stats.by_ecosystem["dockerhub"].as_dict()["requests"]
    done = await threads.deferToThread(docker_daemon.docker, "build", "--pull", "-t",
                                       "registry-mirror-build", str(tmp_path), buildkit=True,
                                       check=False, timeout=300)
    ok(done)
    after = mirror.stats.by_ecosystem["dockerhub"].as_dict()["requests"]
    assert sum(after.values()) > sum(before.values()), "BuildKit did not use the mirror"
    gets = upstream.count("GET")
    ok(await threads.deferToThread(docker_daemon.docker, "build", "--pull", "--no-cache",
                                   "-t", "registry-mirror-build", str(tmp_path),
                                   buildkit=True, check=False, timeout=300))
    assert upstream.count("GET") == gets
    await _docker(docker_daemon, "rmi", "registry-mirror-build", "team/tool:latest")


def _ctr(daemon, namespace: str, *argv: str):  # type: ignore[no-untyped-def]
    socket = daemon.run_dir / "exec" / "containerd" / "containerd.sock"
    return run(["ctr", "--address", str(socket), "--namespace", namespace, *argv])


@pytest_twisted.ensureDeferred
async def test_ctr_hosts_dir_pulls_a_non_hub_name(docker_daemon, upstream, mirror, tmp_path):  # type: ignore[no-untyped-def]
    # The files `cachegate images setup --dir` writes.
    from dataclasses import replace
    from gateway.config import Config, ImagesConfig
    from gateway.ops.images_setup import setup
    setup(replace(Config(), images=ImagesConfig(("127.0.0.1", mirror.port))),
          tmp_path / "certs.d")
    ref = "ghcr.io/team/tool:latest"
    ghcr = lambda: sum(mirror.stats.by_ecosystem["ghcr"].requests.values())  # noqa: E731
    for n, namespace in enumerate(("cg-mirror-1", "cg-mirror-2")):
        gets = upstream.count("GET")
        done = await _ctr(docker_daemon, namespace, "images", "pull", "--plain-http",
                          "--hosts-dir", str(tmp_path / "certs.d"), ref)
        ok(done)
        assert ghcr() > 0  # routed by ?ns=ghcr.io
        if n == 1:
            assert upstream.count("GET") == gets, "the second pull fetched from the upstream"
        await _ctr(docker_daemon, namespace, "images", "rm", ref)
        await _ctr(docker_daemon, namespace, "content", "prune", "references")


@pytest_twisted.ensureDeferred
async def test_skopeo_copy_through_registries_conf(upstream, mirror, tmp_path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n\n'
                    f'[[registry.mirror]]\nlocation = "127.0.0.1:{mirror.port}/quay.io"\n'
                    "insecure = true\n")
    from tests.oci_images import skopeo
    for n in range(2):
        gets = upstream.count("GET")
        await threads.deferToThread(skopeo, "--registries-conf", str(conf), "copy",
                                    "docker://quay.io/team/tool:latest",
                                    f"oci:{tmp_path / f'out{n}'}:x")
        assert (tmp_path / f"out{n}" / "index.json").exists()
        if n == 1:
            assert upstream.count("GET") == gets
    assert sum(mirror.stats.by_ecosystem["quay"].requests.values()) > 0


@pytest_twisted.ensureDeferred
async def test_clients_at_once_make_one_upstream_get_per_blob(docker_daemon, upstream, mirror,  # type: ignore[no-untyped-def]
                                                              tmp_path):
    """dockerd, ctr in three namespaces and three skopeo copies of one cold image at once:
    each of its blobs leaves the upstream once."""
    from tests.oci_images import skopeo
    hosts = tmp_path / "certs.d" / "docker.io"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]\n')
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
                    f'[[registry.mirror]]\nlocation = "127.0.0.1:{mirror.port}/docker.io"\n'
                    "insecure = true\n")
    ref = "docker.io/library/herd:latest"
    pulls = [_docker(docker_daemon, "pull", "herd:latest")]
    pulls += [_ctr(docker_daemon, f"cg-herd-{n}", "images", "pull", "--plain-http",
                   "--hosts-dir", str(tmp_path / "certs.d"), ref) for n in range(3)]
    pulls += [threads.deferToThread(skopeo, "--registries-conf", str(conf), "copy",
                                    f"docker://{ref}", f"oci:{tmp_path / f'out{n}'}:x")
              for n in range(3)]
    results = await defer.gatherResults(pulls)
    for done in results[:4]:
        ok(done)
    manifest = json.loads(upstream.herd.data)
    for digest in [manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]:
        assert upstream.count("GET", f"/blobs/{digest}") == 1, digest
    for n in range(3):
        await _ctr(docker_daemon, f"cg-herd-{n}", "images", "rm", ref)
        await _ctr(docker_daemon, f"cg-herd-{n}", "content", "prune", "references")
    await _docker(docker_daemon, "rmi", "herd:latest")


@pytest_twisted.ensureDeferred
async def test_corrupted_upstream_blob_is_never_stored(docker_daemon, upstream, mirror):  # type: ignore[no-untyped-def]
    layout, top = upstream.broken
    manifest = json.loads(top.data)
    layer = manifest["layers"][0]["digest"]
    path = upstream.blob_path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    done = await _docker(docker_daemon, "pull", "broken:latest")
    assert done.returncode != 0, "a corrupted layer was pulled"
    assert mirror.store.get(object_key("blobs", layer)) is None


@pytest_twisted.ensureDeferred
async def test_upstream_down_cached_tags_pull_unknown_falls_back(docker_daemon, upstream,  # type: ignore[no-untyped-def]
                                                                 mirror):
    ok(await _docker(docker_daemon, "pull", "single:latest"))  # warm (already, by now)
    ok(await _docker(docker_daemon, "rmi", "single:latest"))
    upstream.stop()
    await mirror.fetcher.close()
    mirror.mirror.tag_ttl = 0  # every tag is revalidated: the upstream is asked and fails
    ok(await _docker(docker_daemon, "pull", "single:latest"))
    assert mirror.stats.by_ecosystem["dockerhub"].requests["STALE"] > 0
    done = await _docker(docker_daemon, "pull", "unknown-image:1")
    assert done.returncode != 0
    assert "Attempting next endpoint" in docker_daemon.log_tail(200)
    upstream.start()
