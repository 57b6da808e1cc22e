"""The registry mirror's pure core: catalogue rows, routing, references, Accept classes,
Bearer challenges, tokens and redirects (gateway/ecosystems/images.py)."""

from __future__ import annotations

import pytest

from gateway.ecosystems.images import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                                       REGISTRIES, NotARead, accept_class, accept_header,
                                       find_registry, object_key, parse_challenge,
                                       parse_request, redirect_target, same_origin, tag_key,
                                       token_from, token_url)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("host, name", [
    ("docker.io", "dockerhub"), ("index.docker.io", "dockerhub"),
    ("registry-1.docker.io", "dockerhub"), ("ghcr.io", "ghcr"), ("quay.io", "quay"),
    ("gcr.io", "gcr"), ("eu.gcr.io", "gcr"), ("europe-west1-docker.pkg.dev", "artifact-registry"),
    ("registry.k8s.io", "k8s"), ("public.ecr.aws", "ecr-public"),
    ("mcr.microsoft.com", "mcr"), ("GHCR.IO.", "ghcr"),
])
def test_catalogue_rows(host: str, name: str) -> None:
    registry = find_registry(REGISTRIES, host)
    assert registry is not None and registry.name == name


@pytest.mark.parametrize("host", ["example.com", "gcr.io.evil.com", "docker-pkg.dev",
                                  "-docker.pkg.dev", "a.b-docker.pkg.dev", "evilgcr.io"])
def test_unknown_registries(host: str) -> None:
    assert find_registry(REGISTRIES, host) is None


def test_hub_requests_go_to_its_api_host() -> None:
    hub = find_registry(REGISTRIES, "docker.io")
    assert hub is not None and hub.base_url("docker.io") == "https://registry-1.docker.io"
    gcr = find_registry(REGISTRIES, "eu.gcr.io")
    assert gcr is not None and gcr.base_url("eu.gcr.io") == "https://eu.gcr.io"


@pytest.mark.parametrize("target, host, name, kind, ref", [
    # dockerd's registry-mirrors: Docker Hub, official images under library/
    ("/v2/library/debian/manifests/12", "docker.io", "library/debian", "manifests", "12"),
    ("/v2/debian/manifests/latest", "docker.io", "library/debian", "manifests", "latest"),
    ("/v2/team/tool/blobs/" + DIGEST, "docker.io", "team/tool", "blobs", DIGEST),
    # containerd's hosts.toml: ?ns=
    ("/v2/owner/repo/manifests/v1.2?ns=ghcr.io", "ghcr.io", "owner/repo", "manifests", "v1.2"),
    ("/v2/busybox/manifests/1?ns=docker.io", "docker.io", "library/busybox", "manifests", "1"),
    ("/v2/a/b/c/manifests/x?ns=quay.io&other=1", "quay.io", "a/b/c", "manifests", "x"),
    # registries.conf with a path: the first component is a host name
    ("/v2/ghcr.io/owner/repo/manifests/1", "ghcr.io", "owner/repo", "manifests", "1"),
    ("/v2/docker.io/library/x/manifests/" + DIGEST, "docker.io", "library/x", "manifests",
     DIGEST),
    ("/v2/docker.io/x/manifests/1", "docker.io", "library/x", "manifests", "1"),
    ("/v2/localhost:5000/x/blobs/" + DIGEST, "localhost:5000", "x", "blobs", DIGEST),
    # a first component without a dot or port is a namespace on Hub
    ("/v2/ghcr/repo/manifests/1", "docker.io", "ghcr/repo", "manifests", "1"),
])
def test_routes(target: str, host: str, name: str, kind: str, ref: str) -> None:
    request = parse_request(target)
    assert (request.host, request.name, request.kind, request.reference) == \
        (host, name, kind, ref)
    assert request.path == f"/v2/{name}/{kind}/{ref}"
    assert request.by_digest == ref.startswith("sha256:")


@pytest.mark.parametrize("target", [
    "/v2/", "/v2/_catalog", "/v2/x/tags/list", "/v2/x/manifests/", "/v2/X/manifests/1",
    "/v2/x/blobs/latest", "/v2/x/blobs/sha512:" + "a" * 128, "/v2/x/manifests/sha256:abc",
    "/v2/x/blobs/uploads/", "/v2/x//manifests/1", "/v2/x/manifests/" + "t" * 129,
    "/v2/-x/manifests/1", "/v1/x/manifests/1", "/v2/x/manifests/a:b",
])
def test_not_reads(target: str) -> None:
    with pytest.raises(NotARead):
        parse_request(target)


def test_accept_classes() -> None:
    dockerd = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"
    containerd = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"
    assert accept_class(dockerd) == ",".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST,
                                              DOCKER_MANIFEST))
    assert accept_class(containerd) == accept_class(dockerd)  # */* is the same four
    only_manifests = accept_class(f"{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST}")
    assert only_manifests == f"{OCI_MANIFEST},{DOCKER_MANIFEST}"
    assert accept_class(f"{DOCKER_LIST};q=0, {DOCKER_MANIFEST}") == DOCKER_MANIFEST
    assert accept_class(f"{DOCKER_LIST};q=0.0, {DOCKER_MANIFEST}") == DOCKER_MANIFEST
    assert accept_class("text/html") == accept_class(None) == ""
    assert accept_header("") == accept_header(accept_class("*/*"))
    assert accept_header(only_manifests) == f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"


def test_keys_share_one_namespace_across_registries() -> None:
    assert object_key("blobs", DIGEST) == f"images/blobs/{DIGEST}"
    assert object_key("manifests", DIGEST) != object_key("blobs", DIGEST)
    assert tag_key("dockerhub", "library/x", "1", "a") != tag_key("dockerhub", "library/x",
                                                                  "1", "b")


def test_bearer_challenge_and_token_url() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.docker.io/token",'
                                'service="registry.docker.io",scope="repository:library/x:pull"')
    assert challenge is not None and challenge.scheme == "bearer"
    assert token_url(challenge, "library/x") == ("https://auth.docker.io/token?service="
                                                "registry.docker.io&scope=repository:library/x:pull")
    bare = parse_challenge('Bearer realm="http://127.0.0.1:1/t?a=1"')
    assert bare is not None
    assert token_url(bare, "o/r") == "http://127.0.0.1:1/t?a=1&scope=repository:o/r:pull"
    assert token_url(parse_challenge('Bearer realm="file:///etc/passwd"'), "x") is None  # type: ignore[arg-type]
    assert parse_challenge('Basic realm="x"').scheme == "basic"  # type: ignore[union-attr]
    assert parse_challenge(None) is None


def test_tokens_expire_early() -> None:
    assert token_from({"token": "t", "expires_in": 300}, 1000.0) == ("t", 1290.0)
    assert token_from({"access_token": "a"}, 0.0) == ("a", 50.0)  # 60 s by default
    assert token_from({"token": "t", "expires_in": 5}, 0.0) == ("t", 1.0)
    assert token_from({"token": "t", "expires_in": True}, 0.0) == ("t", 50.0)
    assert token_from({}, 0.0) is None
    assert token_from({"token": ""}, 0.0) is None


def test_redirects() -> None:
    assert redirect_target("https://r.io/v2/x/blobs/d", "https://cdn.io/b?sig=1") == \
        "https://cdn.io/b?sig=1"
    assert redirect_target("https://r.io/v2/x/blobs/d", "/other") == "https://r.io/other"
    assert redirect_target("https://r.io/v2/", "file:///etc/passwd") is None
    assert same_origin("https://r.io/a", "https://r.io:443/b")
    assert same_origin("http://127.0.0.1:5/a", "http://127.0.0.1:5/b")
    assert not same_origin("http://127.0.0.1:5/a", "http://127.0.0.1:6/a")
