#!/usr/bin/env bash
# The Redis peer (votes-peer redis-lua): one Lua script per vote on a private redis-server
# without persistence (--save '' --appendonly no) on 127.0.0.1:16392, stopped on exit.
#
#   perf/scripts/peer-redis.sh      env: VOTES=100000 VOTERS=90000 RATE= (closed loop)
#                                        CONNECTIONS=16 PIPELINE=16 OUT=target/perf/peer-redis.json BIN=
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins -p votes-perf --bin votes-peer
PORT=16392
OUT=${OUT:-$ROOT/target/perf/peer-redis.json}
DIR=$ROOT/target/perf/redis
mkdir -p "$DIR" "$(dirname "$OUT")"
if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then
  echo "something already listens on 127.0.0.1:$PORT" >&2
  exit 1
fi
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --dir "$DIR" \
  --logfile "$DIR/server.log" --daemonize no &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1 && break
  sleep 0.05
done

rate=()
[ -n "${RATE:-}" ] && rate=(--rate "$RATE")
"$BIN/votes-peer" redis-lua --url "redis://127.0.0.1:$PORT" --server-pid "$pid" \
  --connections "${CONNECTIONS:-16}" --pipeline "${PIPELINE:-16}" \
  --votes "${VOTES:-100000}" --voters "${VOTERS:-90000}" "${rate[@]}" --out "$OUT"
echo "report: $OUT"
