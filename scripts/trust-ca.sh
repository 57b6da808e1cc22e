#!/bin/sh
# Make every trust store of a root filesystem trust one CA certificate (cachegate's).
#
#   trust-ca.sh CA.crt          run inside an image (a Dockerfile RUN step, a chroot)
#   TRUST_ROOT=/some/rootfs trust-ca.sh CA.crt    the same on a rootfs seen from outside
#
# POSIX sh with nothing but sed, grep, cat, cp, mkdir and find (busybox has them all): it
# runs on Debian, Ubuntu, Alpine and images with no package manager, needs no network and
# is idempotent (a store that already holds the certificate is left alone).
#
# Stores: /etc/ssl/certs/ca-certificates.crt (created when missing, seeded with another
# bundle's roots if the image has one, so tools pointed at it still reach other hosts),
# /etc/ssl/cert.pem (Alpine's), /etc/apk/ca.pem (which apk reads *instead of* the system
# store when it exists) and /etc/pki/tls/certs/ca-bundle.crt (RHEL's) when present,
# /usr/local/share/ca-certificates/ (so a later update-ca-certificates keeps it), JVM
# cacerts via keytool when a keytool is found, and every certifi bundle (pip's vendored
# one too) under the usual install prefixes.
#
# Prints, on stdout, the environment that makes the remaining clients use it (Node's own
# bundled roots, certifi bundles installed later in a build): NAME=value lines.
set -eu

ROOT=${TRUST_ROOT:-}
# Where the CA itself is kept inside the rootfs (NODE_EXTRA_CA_CERTS points at it).
CA_HOME=/usr/local/share/cachegate/ca.crt
BUNDLE=/etc/ssl/certs/ca-certificates.crt
JKS_ALIAS=cachegate
JKS_PASS=${TRUST_JKS_PASSWORD:-changeit}

error() { echo "error: $*" >&2; exit 1; }
say() { echo "trust-ca: $*" >&2; }

[ "$#" -eq 1 ] || error "usage: trust-ca.sh CA.crt"
CA=$1
[ -r "$CA" ] || error "$CA: cannot read it"
grep -q -- '-----BEGIN CERTIFICATE-----' "$CA" || error "$CA: not a PEM certificate"

# A line of the certificate's signature: the full base64 line before the last one.  Any
# bundle holding this line holds this certificate (the check that keeps reruns idempotent).
lines=$(sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$CA" | grep -c .)
MARK=$(sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$CA" \
  | sed -n "$((lines - 2))p")
[ -n "$MARK" ] || error "$CA: certificate too short"

has_ca() { [ -f "$1" ] && grep -qxF -- "$MARK" "$1"; }

# Append the CA to one PEM bundle unless it is already there; keeps a final newline.
append_to() {
  if has_ca "$1"; then
    say "$1: already trusted"
    return 0
  fi
  if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo >> "$1"; fi
  sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$CA" >> "$1"
  say "$1: added"
}

certifi_bundles() {
  for dir in usr opt root home app srv venv; do
    [ -d "$ROOT/$dir" ] || continue
    find "$ROOT/$dir" -xdev -path '*/certifi/cacert.pem' -type f 2>/dev/null || true
  done
}

system_bundle() {
  mkdir -p "$ROOT${BUNDLE%/*}"
  if [ ! -s "$ROOT$BUNDLE" ]; then
    seed=$(other_bundles; certifi_bundles)
    seed=$(echo "$seed" | head -n 1)
    if [ -n "$seed" ]; then
      cp "$seed" "$ROOT$BUNDLE"
      say "$BUNDLE: created from $seed"
    else
      : > "$ROOT$BUNDLE"
      say "$BUNDLE: created"
    fi
  fi
  append_to "$ROOT$BUNDLE"
  # Alpine reads /etc/ssl/cert.pem, apk /etc/apk/ca.pem alone when an image has one
  # (apk-tools' libfetch CA_CERT_FILE), the RHEL family ca-bundle.crt (a link to the
  # bundle on some images: then it is already done).
  other_bundles | while read -r other; do append_to "$other"; done
}

other_bundles() {
  for other in /etc/ssl/cert.pem /etc/apk/ca.pem /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -s "$ROOT$other" ]; then echo "$ROOT$other"; fi
  done
}

local_copies() {
  mkdir -p "$ROOT${CA_HOME%/*}"
  cp "$CA" "$ROOT$CA_HOME"
  if [ -d "$ROOT/usr/local/share/ca-certificates" ]; then
    cp "$CA" "$ROOT/usr/local/share/ca-certificates/cachegate.crt"
  fi
}

# keytool next to the keystore's JDK first, else one on PATH.
keytool_for() {
  home=${1%/lib/security/cacerts}
  home=${home%/jre}
  for tool in "$home/bin/keytool" "$home/jre/bin/keytool"; do
    if [ -x "$tool" ]; then echo "$tool"; return 0; fi
  done
  command -v keytool 2>/dev/null || true
}

jvm_stores() {
  for store in "$ROOT"/usr/lib/jvm/*/lib/security/cacerts \
               "$ROOT"/usr/lib/jvm/*/jre/lib/security/cacerts \
               "$ROOT"/opt/java/*/lib/security/cacerts "$ROOT"/opt/*/lib/security/cacerts \
               "$ROOT"/etc/ssl/certs/java/cacerts; do
    [ -f "$store" ] && echo "$store"
  done
  if [ -n "${JAVA_HOME:-}" ] && [ -f "$ROOT$JAVA_HOME/lib/security/cacerts" ]; then
    echo "$ROOT$JAVA_HOME/lib/security/cacerts"
  fi
}

jvm() {
  jvm_stores | sort -u | while read -r store; do
    # Debian's JDK links its cacerts to /etc/ssl/certs/java/cacerts, which is in the list
    # (and under TRUST_ROOT an absolute link would point out of the rootfs).
    if [ -L "$store" ]; then continue; fi
    tool=$(keytool_for "$store")
    if [ -z "$tool" ]; then say "$store: no keytool, left alone"; continue; fi
    if "$tool" -list -keystore "$store" -storepass "$JKS_PASS" -alias "$JKS_ALIAS" \
         >/dev/null 2>&1; then
      "$tool" -delete -keystore "$store" -storepass "$JKS_PASS" -alias "$JKS_ALIAS" >/dev/null
    fi
    # A keystore keytool cannot open (another password, corrupt) is reported, not fatal:
    # the image's other stores still get the CA.
    if "$tool" -importcert -noprompt -trustcacerts -keystore "$store" \
         -storepass "$JKS_PASS" -alias "$JKS_ALIAS" -file "$CA" >/dev/null 2>&1; then
      say "$store: imported as $JKS_ALIAS"
    else
      say "warning: $store: keytool could not import into it"
    fi
  done
}

certifi() {
  certifi_bundles | while read -r bundle; do append_to "$bundle"; done
}

system_bundle
local_copies
jvm
certifi
echo "NODE_EXTRA_CA_CERTS=$CA_HOME"
echo "PIP_CERT=$BUNDLE"
echo "REQUESTS_CA_BUNDLE=$BUNDLE"
