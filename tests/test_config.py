"""The configuration file: defaults, overrides, and errors that name file, key and reason."""

import os
import subprocess
import sys

import pytest

from gateway.cache.rules import Policy
from gateway.config import ConfigError, load_config, parse_config


def test_every_key_has_a_default(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    config = load_config(path)
    assert config.server.http_port == 80 and config.server.https_port == 443
    assert config.server.admin == ("127.0.0.1", 3129)
    assert config.dns.port == 53 and config.dns.ttl == 30
    assert config.cache.size_limit == 50 * 2**30 and not config.cache.offline
    assert {"debian", "ubuntu", "alpine", "pypi", "npm", "maven"} <= \
        {u.name for u in config.upstreams}


def test_workers_default_to_one_per_usable_core():
    cores = len(os.sched_getaffinity(0))
    assert parse_config({}, "c.toml").server.workers == cores
    assert parse_config({"server": {"workers": "auto"}}, "c.toml").server.workers == cores
    assert parse_config({"server": {"workers": 3}}, "c.toml").server.workers == 3


def test_trust_images_accepts_docker_references():
    images = ("debian:bookworm", "python:3.12-slim", "eclipse-temurin:21-jdk", "node",
              "ghcr.io/org/app:1.2", "registry.local:5000/team/app")
    assert parse_config({"trust": {"images": list(images)}}, "c.toml").trust.images == images
    assert parse_config({}, "c.toml").trust.images == ()


def test_upstream_entries_are_overridden_and_extended():
    config = parse_config({"upstreams": {
        "pypi": {"origin": "http://127.0.0.1:9000/pypi/",
                 "rules": [{"path": "^/simple/private-", "policy": "pass"}]},
        "alpine": {"enabled": False},
        "internal": {"hosts": ["artifacts.example.com", "*.cdn.example.com"]},
    }}, "c.toml")
    by_name = {u.name: u for u in config.upstreams}
    assert by_name["pypi"].origin == "http://127.0.0.1:9000/pypi"
    assert by_name["pypi"].rule_for("/simple/private-x/").policy is Policy.PASS
    assert by_name["pypi"].rule_for("/simple/public/").policy is Policy.REVALIDATE
    assert "alpine" not in by_name
    assert by_name["internal"].rule_for("/anything").policy is Policy.STANDARD
    assert by_name["internal"].serves("a.cdn.example.com")


@pytest.mark.parametrize("data,key,reason", [
    ({"serve": {}}, "serve", "unknown key"),
    ({"server": {"htp_port": 80}}, "server.htp_port", "unknown key"),
    ({"server": {"http_port": 70000}}, "server.http_port", "port out of range"),
    ({"server": {"http_port": True}}, "server.http_port", "got a boolean"),
    ({"server": {"listen": ["localhost"]}}, "server.listen", "does not appear to be"),
    ({"server": {"admin": "127.0.0.1"}}, "server.admin", "ADDRESS:PORT"),
    ({"dns": {"forwarders": ["8.8.8.8:99999"]}}, "dns.forwarders", "ADDRESS:PORT"),
    ({"dns": {"advertise_ipv4": "::1"}}, "dns.advertise_ipv4", "IPv4"),
    ({"dns": {"ttl": -1}}, "dns.ttl", "between"),
    ({"cache": {"size_limit": "lots"}}, "cache.size_limit", "expected a size"),
    ({"cache": {"offline": "yes"}}, "cache.offline", "true or false"),
    ({"upstreams": {"new": {"origin": "http://x"}}}, "upstreams.new.hosts", "required"),
    ({"upstreams": {"pypi": {"origin": "ftp://x"}}}, "upstreams.pypi.origin", "expected http"),
    ({"upstreams": {"pypi": {"rules": [{"path": "["}]}}}, "upstreams.pypi.rules[0].path",
     "regular expression"),
    ({"upstreams": {"pypi": {"rules": [{"path": "x", "policy": "always"}]}}},
     "upstreams.pypi.rules[0].policy", "not a valid Policy"),
    ({"upstreams": {"pypi": {"hosts": ["bad host"]}}}, "upstreams.pypi.hosts", "hostname"),
    ({"trust": {"images": "debian"}}, "trust.images", "expected a list"),
    ({"trust": {"images": ["Debian:12"]}}, "trust.images", "not an image reference"),
    ({"trust": {"images": ["debian@sha256:00"]}}, "trust.images", "digest reference"),
    ({"trust": {"image": []}}, "trust.image", "unknown key"),
    ({"server": {"workers": 0}}, "server.workers", "between 1 and"),
    ({"server": {"workers": "many"}}, "server.workers", 'expected "auto"'),
])
def test_bad_values_name_file_key_and_reason(data, key, reason):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "/etc/cachegate/cachegate.toml")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"/etc/cachegate/cachegate.toml: {key}: ")


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: -: cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="bad.toml: -: not valid TOML"):
        load_config(bad)


def test_serve_rejects_bad_config_with_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[cache]\nsize_limit = 'huge'\n")
    run = subprocess.run([sys.executable, "-m", "gateway.ops.cli", "--config", str(bad), "serve"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"cachegate: error: {bad}: cache.size_limit: 'huge': expected a size such as 50GiB, "
        "500MB or a byte count"]
