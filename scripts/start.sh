#!/usr/bin/env bash
# Start cachegate and point the Docker daemon's DNS at it, around builds. Idempotent: a
# second run changes nothing. scripts/stop.sh undoes it.
#
#   1. install cachegate into .venv if it is not there;
#   2. start the gateway: the systemd unit cachegate.service when systemd runs and the
#      unit is installed, else `cachegate serve` in the background (pid and log files in
#      the state directory);
#   3. wait until its admin API (/healthz) and its DNS answer;
#   4. merge "dns": [the gateway's address] and the registry mirror (first in
#      "registry-mirrors", unless images.listen = "") into Docker's daemon.json, every
#      other key kept, the original kept beside it; restart Docker and wait until it answers.
#
# Environment: CACHEGATE_CONFIG (config file; default /etc/cachegate/cachegate.toml when
# present), CACHEGATE_VENV (default: .venv in the checkout), CACHEGATE_DOCKER_DAEMON_JSON
# (default /etc/docker/daemon.json), CACHEGATE_SYSTEMD (auto|yes|no: use systemd; auto =
# when it runs), CACHEGATE_TIMEOUT (seconds to wait for the gateway and for Docker; 60),
# CACHEGATE_TRUST_IMAGES (as --trust-images).
#
#   --trust-images "debian:bookworm python:3.12 …"   5. also make these local images trust
#       the CA (`cachegate trust image`: derived images tagged with the same names, so
#       Dockerfiles built FROM them need no change); stop.sh --restore-images undoes it.
#       Without the option or the variable: trust.images of the config.  An image already
#       shadowed with the current CA is left as it is, so a restart rebuilds nothing.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trust_images=${CACHEGATE_TRUST_IMAGES:-}
while (($#)); do
  case $1 in
    --trust-images) (($# >= 2)) || error "--trust-images needs a list of images"
                    trust_images=$2; shift 2 ;;
    --trust-images=*) trust_images=${1#*=}; shift ;;
    *) error "unknown argument $1 (usage: start.sh [--trust-images \"IMAGE …\"])" ;;
  esac
done

ensure_venv() {
  if [[ -x $venv/bin/cachegate ]]; then return; fi
  command -v python3 >/dev/null || error "python3 is required to install cachegate"
  say "installing cachegate into $venv"
  python3 -m venv "$venv" || error "cannot create $venv (is python3-venv installed?)"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo"
}

start_gateway() {
  if unit_installed; then
    if systemctl is-active --quiet cachegate.service; then
      say "cachegate.service is already running"
    else
      systemctl start cachegate.service
      say "started cachegate.service"
    fi
    return
  fi
  local pid
  if pid=$(gateway_pid); then
    say "already running in the background (pid $pid)"
    wait_pid=$pid
    return
  fi
  mkdir -p "$state_dir"
  # setsid: a new session, so closing this terminal or ^C here does not stop it.
  setsid "$venv/bin/cachegate" "${config_args[@]}" serve >>"$log_file" 2>&1 </dev/null &
  wait_pid=$!
  echo "$wait_pid" >"$pid_file"
  say "started in the background (pid $wait_pid, log $log_file)"
}

wait_gateway() {
  local args=(--timeout "$timeout") status=0
  if [[ -n ${wait_pid:-} ]]; then args+=(--pid "$wait_pid"); fi
  docker_dns=$("$py" -m gateway.ops.hostsetup "${config_args[@]}" wait "${args[@]}") || status=$?
  if ((status == 3)); then  # its DNS answered REFUSED: the message above says why and the fix
    error "the gateway runs, but its DNS refuses this host (see above); Docker left as it was"
  elif ((status != 0)); then
    if [[ -n ${wait_pid:-} && -f $log_file ]]; then tail -n 20 "$log_file" >&2; fi
    error "the gateway did not come up (see above)"
  fi
  say "answering (admin $ADMIN_URL); Docker's DNS is to be $docker_dns"
}

point_docker() {
  if ! docker_present; then
    say "Docker is not installed: the gateway runs, but no Docker daemon to point at it"
    return
  fi
  case $docker_dns in
    127.*|::1) echo "warning: $docker_dns is a loopback address: BuildKit drops it for RUN" \
                    "steps; listen on the docker0 address (server.listen = [\"auto\"])" >&2 ;;
  esac
  local result
  result=$("$py" -m gateway.ops.hostsetup set-dns "$daemon_json" "$docker_dns" \
    --mirror "$mirror_url")
  if [[ $result == unchanged ]]; then
    say "$daemon_json already points Docker's DNS at $docker_dns"
    return
  fi
  say "pointed Docker's DNS at $docker_dns${mirror_url:+ and its registry mirror at $mirror_url} in $daemon_json (original kept beside it)"
  restart_docker
}

trust_images() {
  [[ -n $trust_images ]] || return 0
  if ! docker_present; then
    say "Docker is not installed: no images to trust"
    return
  fi
  local images
  read -r -a images <<<"$trust_images"
  "$venv/bin/cachegate" "${config_args[@]}" trust image "${images[@]}"
}

ensure_venv
py=$venv/bin/python
STATE_DIR='' ADMIN_URL='' TRUST_IMAGES='' MIRROR_URL=''
env_lines=$("$py" -m gateway.ops.hostsetup "${config_args[@]}" env)
eval "$env_lines"  # sets STATE_DIR, ADMIN_URL, TRUST_IMAGES and MIRROR_URL, quoted by the helper
state_dir=$STATE_DIR
trust_images=${trust_images:-$TRUST_IMAGES}
mirror_url=$MIRROR_URL
pid_file=$state_dir/cachegate.pid
log_file=$state_dir/cachegate.log
wait_pid=
start_gateway
wait_gateway
point_docker
trust_images
say "ready"
