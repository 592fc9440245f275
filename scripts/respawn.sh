#!/usr/bin/env bash
# respawn.sh NAME COMMAND [ARGS...]: runs one process of the Procfile and starts it again when
# it dies of a crash or a signal, so that one dead process does not make honcho stop the whole
# stack. Each death is one line naming the process and the cause. A process that dies
# MAX_RESTARTS times within WINDOW_S seconds is given up on: its line says so and the script
# exits 1, and honcho then stops the stack. A clean exit (status 0) is not restarted.
# SIGTERM/SIGINT (honcho's stop) go to the process, which is then not restarted.
set -u
name=$1
shift
MAX_RESTARTS=5
WINDOW_S=60
DELAY_S=1

stopping=0
child=0
on_stop() {
  stopping=1
  if [ "$child" -gt 0 ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap on_stop TERM INT

cause() {
  if [ "$1" -gt 128 ]; then
    echo "killed by SIG$(kill -l $(($1 - 128)) 2>/dev/null || echo "$(($1 - 128))")"
  else
    echo "exited with status $1"
  fi
}

deaths=()
while :; do
  "$@" &
  child=$!
  wait "$child"
  status=$?
  # a trapped signal interrupts wait: wait again for the process's own status
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    status=$?
  done
  if [ "$stopping" = 1 ]; then
    exit "$status"
  fi
  if [ "$status" = 0 ]; then
    echo "respawn: $name exited normally (status 0); not restarting it"
    exit 0
  fi
  now=$(date +%s)
  recent=()
  for t in "${deaths[@]+"${deaths[@]}"}"; do
    if [ $((now - t)) -lt "$WINDOW_S" ]; then recent+=("$t"); fi
  done
  deaths=("${recent[@]+"${recent[@]}"}" "$now")
  if [ "${#deaths[@]}" -gt "$MAX_RESTARTS" ]; then
    echo "respawn: $name $(cause "$status"), its ${#deaths[@]}th death in ${WINDOW_S} s; giving up (stopping the stack)"
    exit 1
  fi
  echo "respawn: $name $(cause "$status"); starting it again in ${DELAY_S} s"
  sleep "$DELAY_S" &
  wait $! 2>/dev/null
  if [ "$stopping" = 1 ]; then
    exit 143
  fi
done
