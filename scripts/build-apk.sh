#!/usr/bin/env bash
# Build Alpine's package manager as a static binary (apk.static) from the vendored
# apk-tools tarball, once: the result is cached under the test cache directory keyed by
# the tarball's sha256, and its path printed on stdout.  The build happens in a
# temporary directory (the tarball's directory may be read-only), under a lock so
# concurrent runs build it once.
#
#   scripts/build-apk.sh [TARBALL]     default: ../shared/vendor/apk-tools-2.14.9.tar.gz
#
# Needs make, a C compiler and the static OpenSSL and zlib (Debian: build-essential
# libssl-dev zlib1g-dev pkg-config); about 10 s on two cores.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tarball=${1:-$here/../shared/vendor/apk-tools-2.14.9.tar.gz}
cache=${CACHEGATE_TEST_CACHE:-/var/cache/cachegate-tests}

error() { echo "build-apk: error: $*" >&2; exit 1; }

[[ -r $tarball ]] || error "$tarball: cannot read it"
for tool in make cc pkg-config flock; do
  command -v "$tool" >/dev/null || error "$tool not installed (build-essential pkg-config)"
done
pkg-config --exists openssl zlib || error "no OpenSSL or zlib headers (libssl-dev zlib1g-dev)"

sha=$(sha256sum "$tarball" | cut -d' ' -f1)
dir=$cache/apk-tools-${sha:0:16}
out=$dir/apk.static
if [[ -x $out ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [[ ! -x $out ]]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/cachegate-apk.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$tarball" -C "$work"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'apk-tools-*' | head -n 1)
  [[ -n $src ]] || error "$tarball: no apk-tools-* directory inside"
  echo "build-apk: building $(basename "$src") in $work" >&2
  if ! make -C "$src" -j"$(nproc)" LUA=no static >"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log" >&2
    error "make failed"
  fi
  "$src/src/apk.static" --version >&2 || error "the built apk.static does not run"
  install -m 0755 "$src/src/apk.static" "$out.partial"
  mv "$out.partial" "$out"
fi
echo "$out"
