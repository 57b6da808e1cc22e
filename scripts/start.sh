#!/usr/bin/env bash
# Start cachegate and point the Docker daemon's DNS at it, around builds. Idempotent: a
# second run changes nothing. scripts/stop.sh undoes it.
#
#   1. install cachegate into .venv if it is not there;
#   2. start the gateway: the systemd unit cachegate.service when systemd runs and the
#      unit is installed, else `cachegate serve` in the background (pid and log files in
#      the state directory);
#   3. wait until its admin API (/healthz) and its DNS answer;
#   4. merge "dns": [the gateway's address] into Docker's daemon.json, every other key
#      kept, the original kept beside it; restart Docker and wait until it answers.
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
set -Eeuo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CACHEGATE_VENV:-$repo/.venv}
daemon_json=${CACHEGATE_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
timeout=${CACHEGATE_TIMEOUT:-60}
config_args=()
if [[ -n ${CACHEGATE_CONFIG:-} ]]; then config_args=(--config "$CACHEGATE_CONFIG"); fi

error() { echo "error: $*" >&2; exit 1; }
say() { echo "cachegate: $*"; }
trap 'error "${BASH_SOURCE[0]}: line $LINENO: $BASH_COMMAND failed"' ERR

trust_images=${CACHEGATE_TRUST_IMAGES:-}
while (($#)); do
  case $1 in
    --trust-images) (($# >= 2)) || error "--trust-images needs a list of images"
                    trust_images=$2; shift 2 ;;
    --trust-images=*) trust_images=${1#*=}; shift ;;
    *) error "unknown argument $1 (usage: start.sh [--trust-images \"IMAGE …\"])" ;;
  esac
done

use_systemd() {
  case ${CACHEGATE_SYSTEMD:-auto} in
    yes) true ;;
    no) false ;;
    *) [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null ;;
  esac
}

unit_installed() { use_systemd && systemctl cat cachegate.service >/dev/null 2>&1; }

docker_present() { command -v docker >/dev/null || command -v dockerd >/dev/null; }

ensure_venv() {
  if [[ -x $venv/bin/cachegate ]]; then return; fi
  command -v python3 >/dev/null || error "python3 is required to install cachegate"
  say "installing cachegate into $venv"
  python3 -m venv "$venv" || error "cannot create $venv (is python3-venv installed?)"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo"
}

gateway_pid() {  # the pid in the pid file, if that process is a live cachegate
  local pid
  [[ -f $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q cachegate
  echo "$pid"
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
  local args=(--timeout "$timeout")
  if [[ -n ${wait_pid:-} ]]; then args+=(--pid "$wait_pid"); fi
  if ! docker_dns=$("$py" -m gateway.hostsetup "${config_args[@]}" wait "${args[@]}"); then
    if [[ -n ${wait_pid:-} && -f $log_file ]]; then tail -n 20 "$log_file" >&2; fi
    error "the gateway did not come up (see above)"
  fi
  say "answering (admin $ADMIN_URL); Docker's DNS is to be $docker_dns"
}

restart_docker() {
  if use_systemd; then
    systemctl restart docker
  elif command -v service >/dev/null; then
    service docker restart
  else
    error "cannot restart Docker (no systemctl or service): restart it by hand"
  fi
  local waited=0
  until docker info >/dev/null 2>&1; do
    ((waited++ < timeout * 2)) || error "Docker did not answer ${timeout}s after its restart"
    sleep 0.5
  done
  say "Docker restarted and answering"
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
  result=$("$py" -m gateway.hostsetup set-dns "$daemon_json" "$docker_dns")
  if [[ $result == unchanged ]]; then
    say "$daemon_json already points Docker's DNS at $docker_dns"
    return
  fi
  say "pointed Docker's DNS at $docker_dns in $daemon_json (original kept beside it)"
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
STATE_DIR='' ADMIN_URL=''
env_lines=$("$py" -m gateway.hostsetup "${config_args[@]}" env)
eval "$env_lines"  # sets STATE_DIR and ADMIN_URL, values quoted by the helper
state_dir=$STATE_DIR
pid_file=$state_dir/cachegate.pid
log_file=$state_dir/cachegate.log
wait_pid=
start_gateway
wait_gateway
point_docker
trust_images
say "ready"
