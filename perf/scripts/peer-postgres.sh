#!/usr/bin/env bash
# The PostgreSQL peer (votes-peer postgres): one transaction per vote on a private cluster
# (fsync on, synchronous_commit on, shared_buffers 256MB) listening on 127.0.0.1:55432 only,
# created afresh with initdb for each run and stopped on exit.
#
#   perf/scripts/peer-postgres.sh   env: VOTES=100000 VOTERS=90000 RATE= (closed loop)
#                                        CONNECTIONS=16 OUT=target/perf/peer-postgres.json BIN=
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins -p votes-perf --bin votes-peer
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=55432
OUT=${OUT:-$ROOT/target/perf/peer-postgres.json}
mkdir -p "$ROOT/target/perf" "$(dirname "$OUT")"
as_pg() { runuser -u postgres -- "$@"; }
# Debian's PostgreSQL server, installed when missing (its own cluster is not used).
if [ ! -x "$PGBIN/initdb" ]; then
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] ||
    { echo "error: $PGBIN/initdb not found: install Debian's postgresql (or set PGBIN)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

# The cluster lives under target/perf unless the postgres user cannot reach it there.
DATA=$ROOT/target/perf/pg
if ! as_pg test -x "$ROOT/target/perf"; then DATA=/var/tmp/votes-perf-pg; fi
if as_pg "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
  echo "something already listens on 127.0.0.1:$PORT" >&2
  exit 1
fi
rm -rf "$DATA"
mkdir -p "$DATA"
chown postgres: "$DATA"
chmod 700 "$DATA"
as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >"$DATA.initdb.log" 2>&1 ||
  { cat "$DATA.initdb.log" >&2; exit 1; }
cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
fsync = on
synchronous_commit = on
shared_buffers = 256MB
CONF
stop() { as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop EXIT
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null
pid=$(head -1 "$DATA/postmaster.pid")

rate=()
[ -n "${RATE:-}" ] && rate=(--rate "$RATE")
"$BIN/votes-peer" postgres --url "postgres://postgres@127.0.0.1:$PORT/postgres" \
  --server-pid "$pid" --connections "${CONNECTIONS:-16}" \
  --votes "${VOTES:-100000}" --voters "${VOTERS:-90000}" "${rate[@]}" --out "$OUT"
echo "report: $OUT"
