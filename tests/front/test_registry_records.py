"""Images in build records: a pull through the registry mirror while a session is open is
recorded; its SBOM lists the manifest as a ``pkg:oci`` component (digest as version, the
repository and tag as qualifiers) and the config and layers apart, with their sha256."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from twisted.internet import reactor

from gateway.cache.records import Records
from gateway.config import SessionsConfig
from gateway.front.sessions import Sessions
from gateway.ops.sbom import sbom_json
from tests.oci_images import Layout
from tests.registry_gateways import Mirror
from tests.registry_origin import RegistryOrigin


@pytest.fixture
def upstream():  # type: ignore[no-untyped-def]
    origin = RegistryOrigin(reactor)
    layout = Layout()
    single = layout.image("single")
    layout.tag(single, "latest")
    origin.add("library/single", "latest", layout, single)
    origin.layouts = {"single": (layout, single)}  # type: ignore[attr-defined]
    origin.listen()
    yield origin
    pytest_twisted.blockon(origin.stop())


@pytest_twisted.inlineCallbacks
def test_a_pull_is_recorded_as_an_oci_component(tmp_path, upstream):  # type: ignore[no-untyped-def]
    layout, top = upstream.layouts["single"]
    m = Mirror(tmp_path / "m", upstream.url())
    try:
        records = Records(m.store)
        m.mirror.sessions = sessions = Sessions(reactor, records, SessionsConfig())
        session = records.start("pull", ["127.0.0.0/8"], reactor.seconds())
        sessions.reload()
        # As Docker pulls: HEAD by tag, then GET by digest.
        yield m.get("/v2/single/manifests/latest", "HEAD")
        yield m.get(f"/v2/single/manifests/{top.digest}")
        manifest = json.loads(layout.blobs[top.digest].data)
        blobs = [manifest["config"]["digest"]] + [x["digest"] for x in manifest["layers"]]
        for digest in blobs:
            yield m.get(f"/v2/library/single/blobs/{digest}")
        sessions.flush()
        session = records.stop(session.id, reactor.seconds())
        text = sbom_json(session, records.rows(session))
    finally:
        yield m.close()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    hex_digest = top.digest.partition(":")[2]
    assert [c["purl"] for c in sbom["components"]] == [
        f"pkg:oci/single@sha256:{hex_digest}"
        "?repository_url=docker.io/library/single&tag=latest"]
    assert sbom["components"][0]["hashes"][0]["content"] == hex_digest
    listed = [p["value"] for p in sbom["metadata"]["properties"]
              if p["name"] == "cachegate:index"]
    for digest in blobs:
        assert any(line.endswith(f"/blobs/{digest} sha256:{digest[7:]}") for line in listed)
