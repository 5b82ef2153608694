#!/usr/bin/env bash
# Stop the Garage server started by scripts/garage-up.sh DIR.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
PIDFILE="$DIR/garage.pid"
step() { printf '[garage-down] %s\n' "$*"; }

pid=$(cat "$PIDFILE" 2>/dev/null) || { step "no $PIDFILE; nothing to stop"; exit 0; }
if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$DIR/garage.toml"; then
  step "garage pid $pid from $DIR is not running"
  rm -f "$PIDFILE"
  exit 0
fi
step "stopping garage pid $pid"
kill -TERM "$pid"
for ((i = 0; i < 120; i++)); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.25
done
if kill -0 "$pid" 2>/dev/null; then
  step "garage pid $pid did not exit after 30s; sending SIGKILL"
  kill -KILL "$pid"
fi
rm -f "$PIDFILE"
step "stopped"
