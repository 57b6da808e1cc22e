#!/usr/bin/env bash
# Install what the test suite needs (Python packages into .venv; Debian packages when root)
# and run it. Arguments go to pytest, e.g. scripts/test.sh -k herd -x
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

error() { echo "error: $*" >&2; exit 1; }

# Debian packages the tests drive: dig for DNS, real package clients (mvn resolves its
# dependency plugin from Debian's maven-repo: Central is not reachable from tests), gpg to
# sign the fixture apt repository, shellcheck, chromium (the status page), systemd
# (systemd-analyze verify on the unit), ip for the end-to-end tests' network namespaces,
# debootstrap for the trust tests' Debian image, busybox for trust-ca.sh as on Alpine,
# a C toolchain with static OpenSSL and zlib to build Alpine's apk (scripts/build-apk.sh),
# Docker (docker.io, containerd, runc) for the session's private dockerd (tests/docker_daemon.py),
# Go, Debian's cargo (cargo-web: /usr/bin/cargo, sparse index by default), gem and bundler
# (tests/ecosystems/test_lang_clients.py; gem also builds the RubyGems fixtures).
# prometheus (and promtool) scrape a live gateway and check the shipped rules (tests/ops).
DEBS=(bind9-dnsutils curl openssl apt dpkg gpg maven libmaven-dependency-plugin-java junit4
      shellcheck chromium systemd iproute2 debootstrap busybox-static
      build-essential libssl-dev zlib1g-dev pkg-config docker.io containerd runc
      golang-go cargo-web ruby ruby-bundler docker-registry skopeo prometheus)
missing=()
for deb in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing+=("$deb")
done
# Node and npm: any install will do (NodeSource's nodejs ships npm and conflicts with
# Debian's npm package), Debian's when there is none.
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing Debian packages (${missing[*]}): their tests will skip" >&2
  fi
fi

command -v python3 >/dev/null || error "python3 is required"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv || error "cannot create .venv (is python3-venv installed?)"
fi
# Reinstall only when the dependencies changed.
stamp=.venv/.cachegate-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi

# Alpine's apk, built once from ../shared/vendor and cached (tests/ecosystems/test_apk_client.py).
if apk=$(scripts/build-apk.sh); then
  export CACHEGATE_APK_STATIC=$apk
else
  echo "warning: apk.static not built: the apk tests will skip (fail under CI=true)" >&2
fi

exec .venv/bin/python -m pytest "$@"
