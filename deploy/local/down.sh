#!/usr/bin/env bash
# Stops what ./deploy/local/up.sh started (SIGTERM, then SIGKILL after 10 s). Keeps the
# datastore file (/var/lib/kino) and the logs (/var/log/kino).
set -euo pipefail
run=/run/kino
shopt -s nullglob
for pidfile in "$run"/*.pid; do
  name=$(basename "$pidfile" .pid)
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
