#!/bin/sh
# systemctl for tests/tests/readme.rs, where systemd is not PID 1: the verbs README.md uses,
# on the units it installs, done as systemd would do them. daemon-reload verifies the units;
# the service is the unit's ExecStart= (under systemd-socket-activate once the socket unit is
# started), ready when it answers, stopped with SIGTERM within TimeoutStopSec. STATE is
# replaced by a directory of the test's.
set -eu
state=STATE
units=/etc/systemd/system
running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }
start() {
  running && return 0
  exec_start=$(sed -n 's/^ExecStart=//p' "$units/portcullis.service")
  [ -n "$exec_start" ] || { echo "systemctl: no ExecStart= in portcullis.service" >&2; exit 1; }
  install -d -m 0700 /var/lib/portcullis
  install -d -m 0755 /run/portcullis
  if [ -f "$state/socket" ]; then
    listen=$(sed -n 's/^ListenStream=/-l /p' "$units/portcullis.socket")
    # shellcheck disable=SC2086
    systemd-socket-activate $listen $exec_start >> "$state/agent.log" 2>&1 < /dev/null &
    # It starts its command at the first connection; systemctl start, at once: connect.
    first=$(sed -n 's/^ListenStream=//p' "$units/portcullis.socket" | head -1)
    host=${first%:*}
    case $host in 0.0.0.0|"") host=127.0.0.1 ;; "[::]") host=::1 ;; esac
    host=$(echo "$host" | tr -d '[]')
    for _ in $(seq 50); do nc -z -w 1 "$host" "${first##*:}" && break; sleep 0.1; done
  else
    # shellcheck disable=SC2086
    $exec_start >> "$state/agent.log" 2>&1 < /dev/null &
  fi
  echo $! > "$state/pid"
  # Type=notify: start returns once the agent is ready; here, once it answers.
  for _ in $(seq 300); do
    running || { echo "systemctl: portcullis.service exited:" >&2; tail -20 "$state/agent.log" >&2; exit 1; }
    portcullis status > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "systemctl: portcullis.service not ready in 30 s:" >&2; tail -20 "$state/agent.log" >&2; exit 1
}
stop() {
  running || { rm -f "$state/pid"; return 0; }
  pid=$(cat "$state/pid")
  kill -TERM "$pid"
  for _ in $(seq 150); do   # TimeoutStopSec=15s
    kill -0 "$pid" 2>/dev/null || { rm -f "$state/pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid"; echo "systemctl: portcullis.service did not stop in 15 s" >&2; exit 1
}
verb=$1; shift
now=no
if [ "${1:-}" = --now ]; then now=yes; shift; fi
[ "$verb" = daemon-reload ] || [ $# -gt 0 ] || { echo "systemctl $verb: no unit" >&2; exit 1; }
case $verb in
  daemon-reload)
    for u in "$units/portcullis.service" "$units/portcullis.socket"; do
      if [ -f "$u" ]; then systemd-analyze verify --man=no "$u"; fi
    done ;;
  enable|start|restart|stop|disable)
    for unit in "$@"; do
      case $verb/$now/$unit in
        enable/no/*|disable/no/*) ;;
        enable/yes/portcullis.socket|start/*/portcullis.socket) touch "$state/socket" ;;
        disable/yes/portcullis.socket|stop/*/portcullis.socket) rm -f "$state/socket" ;;
        enable/yes/portcullis|start/*/portcullis|enable/yes/portcullis.service|start/*/portcullis.service) start ;;
        disable/yes/portcullis|stop/*/portcullis|disable/yes/portcullis.service|stop/*/portcullis.service) stop ;;
        restart/*/portcullis|restart/*/portcullis.service) stop; start ;;
        *) echo "systemctl stand-in: $verb $unit is not known" >&2; exit 1 ;;
      esac
    done ;;
  *) echo "systemctl stand-in: $verb is not known" >&2; exit 1 ;;
esac
