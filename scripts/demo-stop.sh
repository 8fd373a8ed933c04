#!/usr/bin/env bash
# Stops what `make demo` started: `votes serve` and `votes persist` (SIGTERM, then SIGKILL
# after 15 s each).
set -euo pipefail
RUN=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/demo
stopped=0
for name in serve persist; do
  pidfile=$RUN/$name.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "demo: stopped votes $name (pid $pid)"
    stopped=1
  fi
  rm -f "$pidfile"
done
((stopped)) || echo "demo: not running"
