#!/usr/bin/env bash
# Live-results subscriber scale (docs/design.md §4.2, `GET /v1/elections/{id}/results/stream`): one
# `votes serve --roles ingest,results,admin` node on loopback, SUBSCRIBERS SSE subscribers from
# votes-sse (HTTP/1.1, one connection each, spread over SOURCE_ADDRS loopback addresses), then
# VOTE_RATE votes/s for DURATION while they listen. Prints how many connected, the update delay
# from each vote's commit (its 202) to its delivery to every subscriber, whether every
# subscriber saw the final total, the serve process's RSS per subscriber and its CPU time.
#
#   perf/scripts/sse-scale.sh
#   env: SUBSCRIBERS=20000  CONNECT_RATE=2000  SOURCE_ADDRS=8  VOTE_RATE=50  DURATION=30s
#        CORES=2  THREADS=2 (votes-sse's)  BIN=<dir with release votes, votes-sse>
#        STREAM=sse|ws  PROTOCOL=h1|h2 (h2c, subscribers multiplexed 100 per connection)
#
# Services (Kafka, DynamoDB, Redis) are started when they are not up and only those are stopped
# at the end; serve is always stopped. The votes-sse report is saved under target/perf/.
# Every subscriber is a socket in votes-sse and another in votes serve: both need an open-files
# limit above SUBSCRIBERS (the script raises the soft limit to the hard one and stops early,
# saying so, when the hard one is too low).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
env_defaults SUBSCRIBERS=20000 CONNECT_RATE=2000 SOURCE_ADDRS=8 VOTE_RATE=50 DURATION=30s \
  CORES=2 THREADS=2 STREAM=sse PROTOCOL=h1
OUT=$ROOT/target/perf
mkdir -p "$OUT"

die() {
  echo "sse-scale.sh: $*" >&2
  exit 1
}

ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
# votes-sse: one socket per subscriber, its vote connections and its runtime.
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((SUBSCRIBERS + 110)) ]; then
  die "open-files limit $nofile (hard $(ulimit -Hn)) is below SUBSCRIBERS + 110 = $((SUBSCRIBERS + 110)): \
raise the hard limit (root: ulimit -Hn, or LimitNOFILE=) or run with fewer SUBSCRIBERS"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
HTTP=127.0.0.1:$(free_port)
ADMIN=127.0.0.1:$(free_port)

# All subscribers come from a few loopback addresses of one /24: per-source rate limits would
# measure themselves, not the results path.
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
VOTES_PREFIX="sse-$(date +%s%N)-"
export VOTES_PREFIX

SESSION=$(mktemp "$OUT/sse-services.XXXXXX")
serve=
cleanup() {
  if [ -n "$serve" ]; then
    kill "$serve" 2>/dev/null || true
    wait "$serve" 2>/dev/null || true
  fi
  scripts/services.sh down --session-file "$SESSION" kafka dynamodb redis >/dev/null || true
}
trap cleanup EXIT
scripts/services.sh up --session-file "$SESSION" kafka dynamodb redis >/dev/null

"$BIN/votes" init --partitions 8 >/dev/null
"$BIN/votes" serve --roles ingest,results,admin --cores "$CORES" --http "$HTTP" --admin "$ADMIN" \
  --node-id sse-perf >"$OUT/sse-serve.log" 2>&1 &
serve=$!
ready=0
for _ in $(seq 1 150); do
  if curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  kill -0 "$serve" 2>/dev/null || break
  sleep 0.2
done
[ "$ready" = 1 ] || die "votes serve did not become ready; see $OUT/sse-serve.log"

# votes serve: one socket per subscriber on top of what it holds already.
serve_nofile=$(awk '/^Max open files/ {print $4}' "/proc/$serve/limits")
serve_fds=$(find "/proc/$serve/fd" -mindepth 1 -maxdepth 1 | wc -l)
if [ "$serve_nofile" != unlimited ] && [ "$serve_nofile" -lt $((SUBSCRIBERS + serve_fds + 50)) ]; then
  die "votes serve may open $serve_nofile files and holds $serve_fds already: \
$SUBSCRIBERS subscribers do not fit; raise the hard limit or run with fewer SUBSCRIBERS"
fi

open_election "$ADMIN" sse

report=$OUT/sse-$STREAM-$PROTOCOL-$SUBSCRIBERS.json
s0=$(cpu_ticks "$serve")
"$BIN/votes-sse" --target "http://$HTTP" --election sse --subscribers "$SUBSCRIBERS" \
  --connect-rate "$CONNECT_RATE" --source-addrs "$SOURCE_ADDRS" --vote-rate "$VOTE_RATE" \
  --duration "$DURATION" --threads "$THREADS" --server-pid "$serve" --report "$report" \
  --stream "$STREAM" --protocol "$PROTOCOL"
s1=$(cpu_ticks "$serve")
echo "  serve: $((serve_fds)) files open before the run (limit $serve_nofile), \
CPU $(awk -v t=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz}') s over the run"
curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" "http://$ADMIN/metrics" | grep -Ei '^votes_(sse|results)' | sed 's/^/  metrics: /' || true
echo "  report: $report"
