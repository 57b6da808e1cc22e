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

docker_restart_command() {  # how this host restarts Docker; nothing when it cannot
  if use_systemd; then
    echo "systemctl restart docker"
  elif command -v service >/dev/null; then
    echo "service docker restart"
  fi
}

try_restart_docker() {  # 0 once Docker answers again; else 1, the reason in $restart_failure
  local command waited=0
  command=$(docker_restart_command)
  restart_failure=
  if [[ -z $command ]]; then
    restart_failure="no systemctl or service to restart it with"
    return 1
  fi
  if ! $command; then
    restart_failure="'$command' failed"
    return 1
  fi
  until docker info >/dev/null 2>&1; do
    if ((waited++ >= timeout * 2)); then
      restart_failure="Docker did not answer ${timeout}s after '$command'"
      return 1
    fi
    sleep 0.5
  done
  say "Docker restarted and answering"
}

restart_docker() {
  try_restart_docker || error "cannot restart Docker: $restart_failure; restart it by hand"
}
