"""``cachegate trust``: images through a recording fake ``docker`` on PATH (no Docker
engine runs here), the host store through a fake ``update-ca-certificates`` on PATH and a
temporary root, and buildx's ``buildkitd.toml``."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from gateway.ops.cli import main
from gateway.config import load_config
from gateway.ops.doctor import check_trusted_images
from gateway.ops.trust import (IMAGE_ENV, LABEL, ImageRecords, dns_section, dockerfile,
                           keep_alive_tag, with_dns_section)
from tls.ca import permitted_domains
from tls.store import ca_paths, load_or_create_ca
from tests.cli_runs import own_stderr

# The fake keeps its images in $FAKE_DOCKER/images.json (ref or id -> inspect document) and
# appends each call's argv to calls.jsonl; a build saves its context under builds/N/.
FAKE_DOCKER = r'''#!PYTHON
import json, os, shutil, sys
home = os.environ["FAKE_DOCKER"]
db = os.path.join(home, "images.json")
images = json.load(open(db))
argv = sys.argv[1:]
with open(os.path.join(home, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")
def find(ref):
    if ref in images:
        return images[ref]
    for doc in images.values():
        if doc["Id"] == ref:
            return doc
    sys.exit(print(f"Error: No such image: {ref}", file=sys.stderr) or 1)
if argv[:2] == ["image", "inspect"]:
    print(json.dumps([find(argv[2])]))
elif argv[0] == "tag":
    images[argv[2]] = find(argv[1])
elif argv[:2] == ["image", "rm"]:
    find(argv[2]); del images[argv[2]]
elif argv[0] == "build":
    tag, context = argv[argv.index("--tag") + 1], argv[-1]
    n = len(os.listdir(os.path.join(home, "builds")))
    shutil.copytree(context, os.path.join(home, "builds", str(n)))
    images[tag] = {"Id": f"sha256:derived{n}", "RepoDigests": [],
                   "Config": {"User": "", "Labels": {"io.cachegate.trusted-from": "x"}}}
elif argv[0] == "info":
    pass
else:
    sys.exit(print(f"fake docker: unexpected {argv}", file=sys.stderr) or 2)
json.dump(images, open(db, "w"))
'''

PYTHON_IMAGE = {"Id": "sha256:" + "a" * 64,
                "RepoDigests": ["python@sha256:" + "d" * 64],
                "Config": {"User": "", "Labels": None}}
LOCAL_IMAGE = {"Id": "sha256:" + "b" * 64, "RepoDigests": [],
               "Config": {"User": "app", "Labels": {"maintainer": "me"}}}


@pytest.fixture
def setup(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A config file with its own state dir (and CA), and the fake docker on PATH."""
    state = tmp_path / "state"
    config_file = tmp_path / "cachegate.toml"
    config_file.write_text(f'[server]\nstate_dir = "{state}"\n'
                           f'[dns]\nadvertise_ipv4 = "172.17.0.1"\n')
    config = load_config(config_file)
    load_or_create_ca(state, permitted_domains(config.upstreams, config.dns.local_names),
                      config.tls.key_type, config.tls.name_constraints, time.time())
    bin_dir, home = tmp_path / "bin", tmp_path / "docker"
    bin_dir.mkdir()
    (home / "builds").mkdir(parents=True)
    (home / "images.json").write_text(json.dumps({"python:3.12": PYTHON_IMAGE,
                                                  "registry.local:5000/team/app": LOCAL_IMAGE}))
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.replace("PYTHON", sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER", str(home))
    return config_file, state, home


def cachegate(config_file: Path, *argv: str) -> int:
    return main(["--config", str(config_file), *argv])


def calls(home: Path) -> list[list[str]]:
    return [json.loads(line) for line in (home / "calls.jsonl").read_text().splitlines()]


def images(home: Path) -> dict:
    return json.loads((home / "images.json").read_text())


def test_dockerfile_from_digest_runs_the_script_as_root_and_restores_the_user():
    text = dockerfile("python@sha256:dd", "app", "sha256:aa")
    assert text.splitlines() == [
        "FROM python@sha256:dd", "USER root",
        "COPY ca.crt trust-ca.sh /tmp/cachegate-trust/",
        'RUN ["/bin/sh", "-c", "sh /tmp/cachegate-trust/trust-ca.sh '
        '/tmp/cachegate-trust/ca.crt && rm -rf /tmp/cachegate-trust"]',
        *(f"ENV {name}={value}" for name, value in IMAGE_ENV),
        f'LABEL {LABEL}="sha256:aa"', "USER app"]
    assert "USER app" not in dockerfile("x", "", "y")


def test_trust_image_builds_from_the_digest_and_records_the_original(setup, capsys):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    assert calls(home) == [
        ["image", "inspect", "python:3.12"],
        ["tag", PYTHON_IMAGE["Id"], "cachegate-original/python:3.12"],
        ["build", "--tag", "python:3.12", calls(home)[2][-1]],
        ["image", "inspect", "python:3.12"]]
    context = home / "builds" / "0"
    assert (context / "Dockerfile").read_text().startswith(
        f"FROM {PYTHON_IMAGE['RepoDigests'][0]}\nUSER root\n")
    assert (context / "ca.crt").read_bytes() == ca_paths(state)[0].read_bytes()
    assert (context / "trust-ca.sh").read_text().startswith("#!/bin/sh")
    record = ImageRecords(state).load()["python:3.12"]
    assert (record.original_id, record.derived_id) == (PYTHON_IMAGE["Id"], "sha256:derived0")
    assert images(home)["cachegate-original/python:3.12"] == PYTHON_IMAGE
    assert "python:3.12: now trusts the cachegate CA" in capsys.readouterr().out


def test_image_without_repo_digest_builds_from_the_keep_alive_tag(setup):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "registry.local:5000/team/app") == 0
    text = (home / "builds/0/Dockerfile").read_text()
    assert text.startswith("FROM cachegate-original/registry.local:5000/team/app:latest\n")
    assert text.endswith("USER app\n")


def test_trusting_again_changes_nothing_until_the_ca_changes(setup, capsys):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    assert [c[0] for c in calls(home)].count("build") == 1
    assert "python:3.12: already trusts the cachegate CA" in capsys.readouterr().out
    ca_paths(state)[0].write_bytes(ca_paths(state)[0].read_bytes() + b"\n")  # a new CA
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    second = (home / "builds/1/Dockerfile").read_text()
    assert second == (home / "builds/0/Dockerfile").read_text()  # FROM the original
    assert ["image", "inspect", PYTHON_IMAGE["Id"]] in calls(home)
    assert ImageRecords(state).load()["python:3.12"].derived_id == "sha256:derived1"


def test_an_image_pulled_since_becomes_the_new_original(setup, capsys):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    pulled = {**PYTHON_IMAGE, "Id": "sha256:" + "e" * 64,
              "RepoDigests": ["python@sha256:" + "f" * 64]}
    db = images(home)
    db["python:3.12"] = pulled
    (home / "images.json").write_text(json.dumps(db))
    assert cachegate(config_file, "trust", "images") == 0
    assert "python:3.12\tpulled or re-tagged since\t" in capsys.readouterr().out
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    assert (home / "builds/1/Dockerfile").read_text().startswith(
        f"FROM python@sha256:{'f' * 64}\n")
    assert images(home)["cachegate-original/python:3.12"] == pulled
    assert ImageRecords(state).load()["python:3.12"].original_id == pulled["Id"]


def test_without_names_the_config_list_is_trusted(setup, capsys):
    config_file, state, home = setup
    with config_file.open("a") as f:
        f.write('[trust]\nimages = ["python:3.12", "registry.local:5000/team/app"]\n')
    assert cachegate(config_file, "trust", "images") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{name}\tnot shadowed yet (in trust.images: run `cachegate trust image`)"
        for name in ("python:3.12", "registry.local:5000/team/app")]
    assert cachegate(config_file, "trust", "image") == 0
    assert set(ImageRecords(state).load()) == {"python:3.12", "registry.local:5000/team/app"}
    assert cachegate(config_file, "trust", "image") == 0
    assert [c[0] for c in calls(home)].count("build") == 2
    capsys.readouterr()
    assert cachegate(config_file, "trust", "images") == 0
    assert [line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()] == [
        ["python:3.12", "trusted"], ["registry.local:5000/team/app", "trusted"]]


def test_restore_tags_the_original_back(setup, capsys):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    assert cachegate(config_file, "trust", "images") == 0
    assert "python:3.12\ttrusted\tFROM python@sha256:" in capsys.readouterr().out
    assert cachegate(config_file, "trust", "image", "--restore", "python:3.12") == 0
    assert images(home)["python:3.12"] == PYTHON_IMAGE
    assert "cachegate-original/python:3.12" not in images(home)
    assert ImageRecords(state).load() == {}
    assert cachegate(config_file, "trust", "images") == 0
    assert "no images shadowed" in capsys.readouterr().out


def test_restore_without_names_restores_every_shadowed_image(setup):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12",
                     "registry.local:5000/team/app") == 0
    assert cachegate(config_file, "trust", "image", "--restore") == 0
    assert images(home)["python:3.12"] == PYTHON_IMAGE
    assert images(home)["registry.local:5000/team/app"] == LOCAL_IMAGE
    assert ImageRecords(state).load() == {}


def test_doctor_names_listed_images_that_lack_the_ca(setup):
    config_file, state, home = setup
    assert check_trusted_images(load_config(config_file)).ok is None  # nothing listed
    with config_file.open("a") as f:
        f.write('[trust]\nimages = ["python:3.12", "registry.local:5000/team/app"]\n')
    config = load_config(config_file)
    check = check_trusted_images(config)
    assert check.ok is False and "registry.local:5000/team/app (not shadowed yet)" in check.detail
    assert "`cachegate trust image`" in check.fix
    assert cachegate(config_file, "trust", "image") == 0
    check = check_trusted_images(config)
    assert check.ok is True and check.detail == "python:3.12, registry.local:5000/team/app"
    db = images(home)
    db["python:3.12"] = PYTHON_IMAGE  # a docker pull put the original back
    (home / "images.json").write_text(json.dumps(db))
    check = check_trusted_images(config)
    assert check.ok is False and check.detail == "lack the CA: python:3.12 (pulled or re-tagged since)"


def test_trust_image_without_names_or_config_list_is_an_error(setup, capsys):
    assert cachegate(setup[0], "trust", "image") == 1
    assert f"list them in trust.images of {setup[0]}" in capsys.readouterr().err


def test_restore_of_an_image_never_shadowed_is_an_error(setup, capsys):
    config_file, _, home = setup
    assert cachegate(config_file, "trust", "image", "--restore", "python:3.12") == 1
    err = own_stderr(capsys.readouterr().err)
    assert err.startswith("cachegate: error: python:3.12: not shadowed")
    assert not (home / "calls.jsonl").exists()


def test_missing_image_and_digest_references_are_one_line_errors(setup, capsys):
    config_file, _, _ = setup
    assert cachegate(config_file, "trust", "image", "nope:1") == 1
    assert "No such image: nope:1" in capsys.readouterr().err
    assert cachegate(config_file, "trust", "image", "python@sha256:" + "d" * 64) == 1
    assert "digest reference" in capsys.readouterr().err
    assert cachegate(config_file, "trust", "image", "Python 3") == 1
    assert "Python 3: not an image reference" in capsys.readouterr().err


def test_an_unrecorded_derived_image_is_refused(setup, capsys):
    config_file, state, home = setup
    assert cachegate(config_file, "trust", "image", "python:3.12") == 0
    (state / "trust/images.json").unlink()
    assert cachegate(config_file, "trust", "image", "python:3.12") == 1
    assert "already a derived image" in capsys.readouterr().err


def test_without_a_ca_the_error_says_how_to_get_one(tmp_path, setup, capsys):
    config_file, state, _ = setup
    ca_paths(state)[0].unlink()
    assert cachegate(config_file, "trust", "image", "python:3.12") == 1
    assert "start the gateway once" in capsys.readouterr().err


def test_keep_alive_tag_names():
    assert keep_alive_tag("debian") == "cachegate-original/debian:latest"
    assert keep_alive_tag("ghcr.io/a/b:1.2") == "cachegate-original/ghcr.io/a/b:1.2"


# --- host ---------------------------------------------------------------------------------

@pytest.fixture
def fake_update(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """update-ca-certificates on PATH that records its argv and what it saw."""
    bin_dir = tmp_path / "hostbin"
    bin_dir.mkdir()
    log = tmp_path / "update.log"
    tool = bin_dir / "update-ca-certificates"
    tool.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_trust_host_installs_and_removes(setup, tmp_path, fake_update):
    config_file, state, _ = setup
    root = tmp_path / "root"
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    assert cachegate(config_file, "trust", "host", "--root", str(root)) == 0
    installed = root / "usr/local/share/ca-certificates/cachegate.crt"
    assert installed.read_bytes() == ca_paths(state)[0].read_bytes()
    assert cachegate(config_file, "trust", "host", "--root", str(root), "--remove") == 0
    assert not installed.exists()
    assert fake_update.read_text() == "--fresh\n--fresh\n"


def test_trust_host_without_a_known_store_fails(setup, tmp_path, fake_update, capsys):
    config_file, _, _ = setup
    assert cachegate(config_file, "trust", "host", "--root", str(tmp_path / "empty")) == 1
    assert "no known trust store" in capsys.readouterr().err
    assert not fake_update.exists()


# --- buildx -------------------------------------------------------------------------------

def test_dns_section_replaced_and_the_rest_kept():
    before = ('debug = true\n# a comment\n[dns]\n  nameservers = ["1.1.1.1"]\n'
              '  options = ["edns0"]\n\n[worker.oci]\n  max-parallelism = 4\n')
    after = with_dns_section(before, dns_section(["172.17.0.1"]))
    assert after == ('debug = true\n# a comment\n[dns]\n  nameservers = ["172.17.0.1"]\n\n'
                     '[worker.oci]\n  max-parallelism = 4\n')
    assert with_dns_section(after, dns_section(["172.17.0.1"])) == after
    assert with_dns_section("", dns_section(["10.0.0.1"])) == \
        '[dns]\n  nameservers = ["10.0.0.1"]\n'
    assert with_dns_section("debug = true", dns_section(["10.0.0.1"])) == \
        'debug = true\n\n[dns]\n  nameservers = ["10.0.0.1"]\n'


def test_trust_buildx_writes_the_bridge_address(setup, tmp_path):
    config_file, _, _ = setup
    toml = tmp_path / "buildx/buildkitd.default.toml"
    assert cachegate(config_file, "trust", "buildx", "--file", str(toml)) == 0
    assert toml.read_text() == '[dns]\n  nameservers = ["172.17.0.1"]\n'


def test_trust_buildx_refuses_loopback(tmp_path, capsys):
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[server]\nstate_dir = "{tmp_path}"\n'
                           '[dns]\nadvertise_ipv4 = "127.0.0.1"\n')
    toml = tmp_path / "buildkitd.toml"
    assert cachegate(config_file, "trust", "buildx", "--file", str(toml)) == 1
    assert "loopback" in capsys.readouterr().err and not toml.exists()


def test_trust_buildx_adds_the_registry_mirror_when_builders_can_reach_it(setup, tmp_path):
    config_file, _, _ = setup
    config_file.write_text(config_file.read_text() + '\n[images]\nlisten = "0.0.0.0:5000"\n')
    toml = tmp_path / "buildkitd.toml"
    toml.write_text('[registry."docker.io"]\n  mirrors = ["mirror.gcr.io"]\n')
    assert cachegate(config_file, "trust", "buildx", "--file", str(toml)) == 0
    assert toml.read_text() == (
        '[registry."docker.io"]\n  mirrors = ["172.17.0.1:5000"]\n\n'
        '[dns]\n  nameservers = ["172.17.0.1"]\n\n'
        '[registry."172.17.0.1:5000"]\n  http = true\n')
    assert cachegate(config_file, "trust", "buildx", "--file", str(toml)) == 0
    assert toml.read_text().count("[registry.") == 2  # idempotent
