"""``[images]`` and registry entries in ``[upstreams.NAME]`` (gateway/config.py)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.ecosystems.images import REGISTRIES


def test_defaults() -> None:
    config = parse_config({}, "t")
    assert config.images.listen == ("127.0.0.1", 5000)
    assert config.images.tag_ttl == 60
    assert config.images.registries == REGISTRIES
    # Registries are not HTTP catalogue entries: no DNS redirect, no CA name for them.
    names = {u.name for u in config.upstreams}
    assert not names & {r.name for r in REGISTRIES}


def test_listen_off_and_ttl() -> None:
    config = parse_config({"images": {"listen": "", "tag_ttl": 0}}, "t")
    assert config.images.listen is None and config.images.tag_ttl == 0
    assert parse_config({"images": {"listen": "[::1]:5001"}}, "t").images.listen == ("::1", 5001)


def test_registry_entries_in_upstreams() -> None:
    config = parse_config({"upstreams": {
        "dockerhub": {"origin": "http://127.0.0.1:5101/"},
        "quay": {"enabled": False},
        "harbor": {"registry": True, "hosts": ["harbor.example.com"],
                   "credentials_file": "/etc/cachegate/harbor.cred"},
        "pypi": {"origin": "http://127.0.0.1:9000"},
    }}, "t")
    registries = {r.name: r for r in config.images.registries}
    assert registries["dockerhub"].origin == "http://127.0.0.1:5101"
    assert registries["dockerhub"].hosts == REGISTRIES[0].hosts
    assert "quay" not in registries
    assert registries["harbor"].hosts == ("harbor.example.com",)
    assert registries["harbor"].credentials_file == "/etc/cachegate/harbor.cred"
    assert {u.name: u for u in config.upstreams}["pypi"].origin == "http://127.0.0.1:9000"


@pytest.mark.parametrize("data, key, reason", [
    ({"images": {"listen": "5000"}}, "images.listen", "expected ADDRESS:PORT"),
    ({"images": {"listen": 5000}}, "images.listen", "expected a string"),
    ({"images": {"tag_ttl": -1}}, "images.tag_ttl", "between 0 and 86400"),
    ({"images": {"tag_ttl": True}}, "images.tag_ttl", "got a boolean"),
    ({"images": {"mirror": 1}}, "images.mirror", "unknown key"),
    ({"upstreams": {"ghcr": {"rules": []}}}, "upstreams.ghcr.rules", "unknown key"),
    ({"upstreams": {"ghcr": {"origin": "ftp://x"}}}, "upstreams.ghcr.origin", "expected http"),
    ({"upstreams": {"ghcr": {"credentials_file": "token"}}}, "upstreams.ghcr.credentials_file",
     "absolute path"),
    ({"upstreams": {"new": {"registry": True}}}, "upstreams.new.hosts", "required"),
    ({"upstreams": {"ghcr": {"hosts": []}}}, "upstreams.ghcr.hosts", "at least one"),
])
def test_errors_name_file_key_and_reason(data: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "/etc/cachegate/cachegate.toml")
    assert caught.value.source == "/etc/cachegate/cachegate.toml"
    assert caught.value.key == key and reason in caught.value.reason
