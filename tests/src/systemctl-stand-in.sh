#!/bin/sh
# systemctl for tests/tests/readme.rs, where systemd is not PID 1: the verbs README.md uses,
# on the units it installs, done as systemd would do them. A unit whose file is not
# installed is an error, as with systemd. daemon-reload verifies the units; the service is
# the unit's ExecStart= with its CapabilityBoundingSet= and NoNewPrivileges= (setpriv), under
# systemd-socket-activate once the socket unit is started; it is ready when it answers (not
# READY=1), and stopped with SIGTERM within TimeoutStopSec. The unit's other sandboxing
# (ProtectSystem=, PrivateTmp=, ...) is not applied. STATE is replaced by a directory.
set -eu
set -f   # ExecStart= and ListenStream= are split into words, never globbed
state='STATE'
units=/etc/systemd/system
running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }
setting() { sed -n "s/^$1=//p" "$units/$2"; }
start() {
  running && return 0
  rm -f "$state/pid"
  exec_start=$(setting ExecStart portcullis.service)
  [ -n "$exec_start" ] || { echo "systemctl: no ExecStart= in portcullis.service" >&2; exit 1; }
  caps=$(setting CapabilityBoundingSet portcullis.service | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
  nnp=""
  [ "$(setting NoNewPrivileges portcullis.service)" = yes ] && nnp=--no-new-privs
  install -d -m 0700 /var/lib/portcullis
  install -d -m 0755 /run/portcullis
  if [ -f "$state/socket" ]; then
    listen=$(setting ListenStream portcullis.socket | sed 's/^/-l /')
    setpriv $nnp --bounding-set=-all${caps:+,$caps} \
      systemd-socket-activate $listen $exec_start >> "$state/agent.log" 2>&1 < /dev/null &
    echo $! > "$state/pid"
    # It starts its command at the first connection; systemctl start, at once: connect.
    first=$(setting ListenStream portcullis.socket | head -1)
    case $first in
      *:*) host=${first%:*} ;;
      *) host="" ;;   # a port alone: every address
    esac
    case $host in 0.0.0.0|"") host=127.0.0.1 ;; "[::]") host=::1 ;; esac
    host=$(echo "$host" | tr -d '[]')
    for _ in $(seq 50); do nc -z -w 1 "$host" "${first##*:}" && break; sleep 0.1; done
  else
    setpriv $nnp --bounding-set=-all${caps:+,$caps} \
      $exec_start >> "$state/agent.log" 2>&1 < /dev/null &
    echo $! > "$state/pid"
  fi
  # Type=notify: start returns once the agent is ready; here, once it answers.
  for _ in $(seq 300); do
    if ! running; then
      rm -f "$state/pid"
      echo "systemctl: portcullis.service exited:" >&2; tail -20 "$state/agent.log" >&2; exit 1
    fi
    portcullis status > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "systemctl: portcullis.service not ready in 30 s:" >&2; tail -20 "$state/agent.log" >&2; exit 1
}
stop() {
  running || { rm -f "$state/pid"; return 0; }
  pid=$(cat "$state/pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do   # TimeoutStopSec=15s
    kill -0 "$pid" 2>/dev/null || { rm -f "$state/pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$state/pid"
  echo "systemctl: portcullis.service did not stop in 15 s" >&2; exit 1
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
      case $unit in *.*) file=$unit ;; *) file=$unit.service ;; esac
      [ -f "$units/$file" ] || { echo "systemctl: Unit $file not found." >&2; exit 5; }
      case $verb/$now/$file in
        enable/no/*|disable/no/*) ;;
        enable/yes/portcullis.socket|start/*/portcullis.socket) touch "$state/socket" ;;
        disable/yes/portcullis.socket|stop/*/portcullis.socket) rm -f "$state/socket" ;;
        enable/yes/portcullis.service|start/*/portcullis.service) start ;;
        disable/yes/portcullis.service|stop/*/portcullis.service) stop ;;
        restart/*/portcullis.service) stop; start ;;
        *) echo "systemctl stand-in: $verb $unit is not known" >&2; exit 1 ;;
      esac
    done ;;
  *) echo "systemctl stand-in: $verb is not known" >&2; exit 1 ;;
esac
