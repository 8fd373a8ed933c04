#!/usr/bin/env bash
# Stops the `votes serve` that `make demo` started (SIGTERM, then SIGKILL after 15 s).
set -euo pipefail
PIDFILE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/demo/serve.pid
[ -f "$PIDFILE" ] || { echo "demo: not running"; exit 0; }
pid=$(cat "$PIDFILE")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "demo: stopped votes serve (pid $pid)"
fi
rm -f "$PIDFILE"
