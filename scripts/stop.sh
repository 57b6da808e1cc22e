#!/usr/bin/env bash
# Undo scripts/start.sh: put Docker's daemon.json back exactly as it was (and restart
# Docker), then stop the gateway. Idempotent: with nothing to undo it says so and exits 0.
# Same environment variables as start.sh. Images made to trust the CA (start.sh
# --trust-images, `cachegate trust image`) stay as they are unless --restore-images is
# given: builds keep working with the gateway stopped (apt falls back to plain upstreams).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

restore_images=no
while (($#)); do
  case $1 in
    --restore-images) restore_images=yes; shift ;;
    *) error "unknown argument $1 (usage: stop.sh [--restore-images])" ;;
  esac
done

is_running() {  # alive, and not a zombie waiting for its reaper (kill -0 says yes to one)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

restore_docker() {
  local result
  result=$("$py" -m gateway.ops.hostsetup restore-dns "$daemon_json")
  case $result in
    restored) say "restored $daemon_json as it was before start.sh" ;;
    removed) say "removed $daemon_json (there was none before start.sh)" ;;
    *) say "$daemon_json was not changed by start.sh: left as it is"; return ;;
  esac
  if ! docker_present; then
    say "Docker is not installed: nothing to restart"
  elif ! try_restart_docker; then
    docker_not_restarted
  fi
}

# daemon.json is back, but the running daemon still sends its containers' DNS to the
# gateway: stopping the gateway now would break every build. Say so, leave it running,
# and name the one command that finishes the job (this script is idempotent).
docker_not_restarted() {
  local gateway finish restart images=
  if unit_installed && systemctl is-active --quiet cachegate.service; then
    gateway="cachegate.service"
  elif gateway=$(gateway_pid); then
    gateway="pid $gateway"
  else
    gateway="not running"
  fi
  if [[ $restore_images == yes ]]; then images="; the images are not restored yet"; fi
  finish=$(finish_command)
  restart=$(docker_restart_command)
  echo "error: Docker could not be restarted: $restart_failure" >&2
  echo "cachegate: $daemon_json is restored, but the running Docker daemon still sends" \
       "its containers' DNS to the gateway until it restarts; so the gateway is left" \
       "running ($gateway)$images." >&2
  if [[ -n $restart ]]; then
    echo "cachegate: to finish, run: $restart && $finish" >&2
  else
    echo "cachegate: to finish, restart dockerd the way it was started (it reads" \
         "$daemon_json when it starts), then run: $finish" >&2
  fi
  exit 1
}

finish_command() {  # this script again, with the settings it was run with
  local name words=()
  for name in CACHEGATE_CONFIG CACHEGATE_VENV CACHEGATE_DOCKER_DAEMON_JSON CACHEGATE_SYSTEMD; do
    if [[ -n ${!name:-} ]]; then words+=("$name=$(printf %q "${!name}")"); fi
  done
  words+=("$(printf %q "$repo/scripts/stop.sh")")
  if [[ $restore_images == yes ]]; then words+=(--restore-images); fi
  echo "${words[*]}"
}

stop_gateway() {
  if unit_installed && systemctl is-active --quiet cachegate.service; then
    systemctl stop cachegate.service
    say "stopped cachegate.service"
    return
  fi
  local pid waited=0
  if ! pid=$(gateway_pid); then
    rm -f "$pid_file"
    say "the gateway is not running"
    return
  fi
  kill -TERM "$pid"
  while is_running "$pid"; do
    if ((waited++ >= timeout * 10)); then
      kill -KILL "$pid" 2>/dev/null || true
      echo "warning: the gateway (pid $pid) ignored SIGTERM for ${timeout}s: killed" >&2
      break
    fi
    sleep 0.1
  done
  rm -f "$pid_file"
  say "stopped the gateway (pid $pid)"
}

py=$venv/bin/python
[[ -x $py ]] || error "$venv is missing: was cachegate started with scripts/start.sh?"
STATE_DIR=''
env_lines=$("$py" -m gateway.ops.hostsetup "${config_args[@]}" env)
eval "$env_lines"  # sets STATE_DIR (and ADMIN_URL, TRUST_IMAGES), quoted by the helper
pid_file=$STATE_DIR/cachegate.pid
restore_images() {
  [[ $restore_images == yes ]] || return 0
  if ! docker_present; then
    say "Docker is not installed: no images to restore"
    return
  fi
  "$venv/bin/cachegate" "${config_args[@]}" trust image --restore
}

restore_docker
restore_images
stop_gateway
