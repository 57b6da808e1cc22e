# shellcheck shell=bash
# What scripts/start.sh and scripts/stop.sh share: settings from the environment, messages,
# and how to find systemd, Docker and a background gateway. Sourced, never run.
# shellcheck disable=SC2034  # the settings are the callers' to use

repo=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
venv=${CACHEGATE_VENV:-$repo/.venv}
daemon_json=${CACHEGATE_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
timeout=${CACHEGATE_TIMEOUT:-60}
config_args=()
if [[ -n ${CACHEGATE_CONFIG:-} ]]; then config_args=(--config "$CACHEGATE_CONFIG"); fi

error() { echo "error: $*" >&2; exit 1; }
say() { echo "cachegate: $*"; }
trap 'error "${BASH_SOURCE[0]}: line $LINENO: $BASH_COMMAND failed"' ERR

use_systemd() {
  case ${CACHEGATE_SYSTEMD:-auto} in
    yes) true ;;
    no) false ;;
    *) [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null ;;
  esac
}

unit_installed() { use_systemd && systemctl cat cachegate.service >/dev/null 2>&1; }

docker_present() { command -v docker >/dev/null || command -v dockerd >/dev/null; }

gateway_pid() {  # the pid in $pid_file (set by the caller), if it is a live cachegate
  local pid
  # shellcheck disable=SC2154
  [[ -f $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q cachegate
  echo "$pid"
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
