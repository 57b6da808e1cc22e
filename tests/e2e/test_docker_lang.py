"""Go, cargo, gem and bundler in real ``docker build``s through cachegate: the session's
private dockerd (tests/docker_daemon.py), cachegate on its bridge address (53/80/443)
with the fixture origin behind every catalogue entry (tests/docker_builds.py), and a
base image with Debian's golang-go, cargo-web, ruby and ruby-bundler
(tests/lang_image.py) shadowed by ``cachegate trust image`` against the daemon.  The
Dockerfile's RUN steps name no proxy, index or registry: proxy.golang.org,
index.crates.io/static.crates.io and rubygems.org are the clients' defaults; only
``GOSUMDB=off`` (the checksum database cannot be faked; see test_lang_clients).

Both builders: a cold build fetches each package once from the origin, a ``--no-cache``
rebuild makes no origin request, every response a hit.

FROM the same image not trusting cachegate (its "public" roots trust the stand-in
internet of tests/docker_builds.py, ``StandIn``): what each client does when it meets a
certificate it rejects, build after build, as the README's matrix says.

Root only: skipped elsewhere, a failure under CI=true."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import threads

from tests import docker_builds as db
from tests import lang_clients
from tests import lang_fixtures as lf
from tests import lang_image
from tests.clients import need
from tests.fixtures import Fixtures, build_fixtures
from tests.origin import serve_tree

BUILDERS = ("legacy", "buildkit")
TRUSTED = "cachegate-test/lang:bookworm"  # the name `cachegate trust image` shadows
STOCK = "cachegate-test/lang:stock"
GO_MOD = (f"module cachegate.example/build\\n\\ngo 1.16\\n\\n"
          f"require {lf.GO_MODULES[0]} {lf.GO_VERSION}\\n")
CARGO_TOML = ('[package]\\nname = "cachegate-build"\\nversion = "0.1.0"\\nedition = "2018"'
              f'\\n\\n[dependencies]\\n{lf.CRATES[0]} = "1.0"\\n')
GEMFILE = f'source "https://rubygems.org"\\ngem "{lf.GEMS[0]}"\\n'
# One RUN step per client, each checking what it stored; ARG BUILD keeps builds distinct.
STEPS = {
    "go": f"RUN mkdir /tmp/go && cd /tmp/go && printf '{GO_MOD}' > go.mod"
          " && GOSUMDB=off go mod download"
          f" && test -f /root/go/pkg/mod/cache/download/{lf.GO_MODULES[1]}/@v/{lf.GO_VERSION}.zip",
    "cargo": f"RUN mkdir -p /tmp/cargo/src && cd /tmp/cargo && printf '{CARGO_TOML}' > Cargo.toml"
             " && touch src/lib.rs && cargo fetch"
             f" && ls /root/.cargo/registry/cache/*/{lf.CRATES[1]}-{lf.CRATE_VERSION}.crate",
    "gem": f"RUN gem install --no-document {lf.GEMS[0]} && gem list -i {lf.GEMS[1]}",
    "bundle": f"RUN mkdir /tmp/bundle && cd /tmp/bundle && printf '{GEMFILE}' > Gemfile"
              " && BUNDLE_PATH=/tmp/bundle/vendor bundle install --quiet"
              f" && ls /tmp/bundle/vendor/ruby/*/cache/{lf.GEMS[1]}-{lf.GEM_VERSION}.gem",
}
HOSTS = set().union(*lang_clients.DEFAULT_HOSTS.values())


@pytest.fixture(scope="module")
def tree(docker_daemon, tmp_path_factory) -> Fixtures:  # type: ignore[no-untyped-def]
    made = build_fixtures(tmp_path_factory.mktemp("docker-lang-tree"))
    need(made.of("rubygems"), "no RubyGems fixtures: gem not installed (Debian package ruby)")
    return made


@pytest.fixture(scope="module")
def origin(tree):  # type: ignore[no-untyped-def]
    yield from serve_tree(tree.root)


@pytest.fixture(scope="module")
def stand_in(origin, docker_daemon, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from db.stand_in_for(origin, docker_daemon, tmp_path_factory.mktemp("lang-stand-in"))


@pytest.fixture(scope="module")
def gateways(docker_daemon, origin, stand_in, tmp_path_factory):  # type: ignore[no-untyped-def]
    made = db.Gateways(docker_daemon, origin, stand_in.dns.address,
                    tmp_path_factory.mktemp("lang-gateways"))
    yield made
    made.stop()


@pytest.fixture(scope="module")
def stock(docker_daemon, stand_in, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    """The language image trusting the stand-in internet's CA, not cachegate's."""
    context = tmp_path_factory.mktemp("lang-stock")
    (context / "stand-in-ca.crt").write_bytes(stand_in.ca_cert.read_bytes())
    (context / "Dockerfile").write_text(
        f"FROM {lang_image.lang_image(docker_daemon)}\n"
        f"COPY stand-in-ca.crt {db.STAND_IN_CA}\nRUN update-ca-certificates >/dev/null\n")
    docker_daemon.docker("build", "--tag", STOCK, str(context), buildkit=False)
    return STOCK


@pytest.fixture(scope="module")
def trusted(docker_daemon, gateways) -> str:  # type: ignore[no-untyped-def]
    """The language image under ``TRUSTED``, shadowed by ``cachegate trust image``."""
    docker_daemon.docker("tag", lang_image.lang_image(docker_daemon), TRUSTED)
    done = gateways.get("trusted").cli("trust", "image", TRUSTED, env=docker_daemon.env())
    assert done.returncode == 0, done.stdout + done.stderr
    return TRUSTED


def write_context(directory, base: str, clients=tuple(STEPS)):  # type: ignore[no-untyped-def]
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM {base}", "ARG BUILD=0", *(STEPS[c] for c in clients)]
    (directory / "Dockerfile").write_text("\n".join(lines) + "\n")
    return directory


def said(done: db.Build, gateway: db.DockerGateway) -> str:
    return (f"{done.builder} build exited {done.returncode}:\n{done.output[-4000:]}\n"
            f"--- cachegate log ---\n{gateway.log_tail()}")


@pytest.mark.parametrize("builder", BUILDERS)
@pytest_twisted.ensureDeferred
async def test_language_clients_build_from_the_cache(builder, docker_daemon, trusted, gateways,
                                                      origin, tree, tmp_path):
    gateway = gateways.get("trusted")
    gateway.clear_cache()
    context = write_context(tmp_path / "lang", trusted)
    before = len(origin.requests)
    cold = await threads.deferToThread(db.build, docker_daemon, context, builder, "cold")
    assert cold.returncode == 0, said(cold, gateway)
    fetched = [r.path for r in origin.requests[before:]]
    for client in lang_clients.CLIENTS:
        for path in lang_clients.key_origin_paths(client, tree):
            if client == "bundle" and path.startswith("/rubygems/info/"):
                continue  # gem install, the step before, has them in the cache already
            assert path in fetched, (client, path, fetched)
    # gem install fetches .gem files from index.rubygems.org, bundler from rubygems.org:
    # two names, two cache entries for one file.  Nothing else is fetched twice.
    repeated = db.repeated_objects(origin.requests[before:])
    assert all(key[1].startswith("/rubygems/gems/") and n == 2
               for key, n in repeated.items()), repeated

    before, since = len(origin.requests), gateway.log_size()
    warm = await threads.deferToThread(db.build, docker_daemon, context, builder, "warm")
    assert warm.returncode == 0, said(warm, gateway)
    assert origin.requests[before:] == []
    served = gateway.served(since)
    assert {s.host for s in served} == HOSTS, served
    assert {s.label for s in served} == {"HIT"}, served
    assert "does not trust the cachegate CA" not in gateway.log_path.read_text()
    assert "Traceback" not in gateway.log_path.read_text()


# What a stock image's client does on meeting our certificate: the builds (one RUN step,
# --no-cache, BuildKit) until the first that succeeds.  go and cargo do not retry a
# certificate failure: go's build fails once, cargo's twice (index.crates.io, then
# static.crates.io); gem and bundler retry by themselves and get through the tunnel in
# the same run.
STOCK_OUTCOMES = {"go": ["fail", "ok"], "cargo": ["fail", "fail", "ok"], "gem": ["ok"],
                  "bundle": ["ok"]}
MAX_ATTEMPTS = 3


@pytest.mark.parametrize("client", lang_clients.CLIENTS)
@pytest_twisted.ensureDeferred
async def test_stock_image_clients_never_break_for_good(client, docker_daemon, stock, gateways,
                                                        origin, tmp_path):
    """Whatever a client does with a certificate it rejects, a later build from the same
    address goes through the tunnel to the real upstream (the stand-in), uncached."""
    gateways.stop()  # a fresh memory of untrusting clients (the CA and cache stay)
    gateway = gateways.get("stock")
    context = write_context(tmp_path / client, stock, (client,))
    outcomes = []
    for attempt in range(MAX_ATTEMPTS):
        done = await threads.deferToThread(db.build, docker_daemon, context, "buildkit",
                                           f"{client}-{attempt}")
        outcomes.append("ok" if done.returncode == 0 else "fail")
        if done.returncode == 0:
            break
    assert outcomes[-1] == "ok", said(done, gateway)
    assert outcomes == STOCK_OUTCOMES[client], said(done, gateway)
    log = gateway.log_path.read_text()
    for host in lang_clients.DEFAULT_HOSTS[client]:
        assert f"does not trust the cachegate CA for {host}" in log, host
    assert "Traceback" not in log
