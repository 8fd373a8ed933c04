#!/usr/bin/env bash
# The source of truth's figures against each local DynamoDB engine, in one run: how fast
# `votes persist` writes committed votes (items/s, its CPU and the engine's per item), how long
# the recount of VOTES votes takes and which phase limits it, and the p99 of `/votes/me` at a
# fixed rate. Everything on this machine, over loopback.
#
#   perf/scripts/source-of-truth.sh     env: VOTES=1000000 RATE=5000 CONCURRENCY=16
#                                            ENGINES="dynoxide moto" ME_RATE=1000 ME_SECONDS=20
#                                            MOTO_VOTES=100000
#
# moto takes conditional puts at ~300 items/s here, so it gets MOTO_VOTES votes (a million
# would take it an hour); its per-item figures do not depend on the count.
#
# Per engine (the DynamoDB service is restarted with VOTES_DYNAMODB_ENGINE=<engine>; a fresh
# prefix each time, so each engine gets the same election from an empty table):
# 1. votes serve (release, 2 cores) takes VOTES distinct voters from votes-load at RATE/s;
# 2. votes persist --exit-when-caught-up writes them (timed; CPU of the persister and engine);
# 3. votes-load --lookups asks /votes/me at ME_RATE/s for ME_SECONDS (p50/p99);
# 4. the election is closed (the recount inside serve, timed to `final`), and `votes recount`
#    is timed on the final election, phase by phase.
# The DynamoDB service is left running the default engine (dynoxide) afterwards.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
N=${VOTES:-1000000}
env_defaults RATE=5000 CONCURRENCY=16 ENGINES='dynoxide moto' ME_RATE=1000 ME_SECONDS=20
OUT=$ROOT/target/perf/source-of-truth-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
scripts/services.sh up kafka redis >/dev/null
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
HTTP=127.0.0.1:18581
ADMIN=127.0.0.1:19591
auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
secs() { awk -v t="$TICK" -v n="$1" 'BEGIN {printf "%.1f", n / t}'; }
# CPU ticks of the children this script has waited for (the persister, once it exited).
reaped_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
serve=
trap '[ -n "$serve" ] && kill $serve 2>/dev/null || true' EXIT

for engine in $ENGINES; do
  echo "=== $engine"
  n=$N
  [ "$engine" = moto ] && n=${MOTO_VOTES:-100000}
  scripts/services.sh down dynamodb >/dev/null
  VOTES_DYNAMODB_ENGINE=$engine scripts/services.sh up dynamodb >/dev/null
  engine_pid=$(cat target/services/dynamodb/dynamodb.pid)
  export VOTES_PREFIX="sot-$engine-$(date +%s)-"
  "$BIN/votes" init --partitions 8 >/dev/null
  "$BIN/votes" serve --cores 2 --http "$HTTP" --admin "$ADMIN" --node-id sot >"$OUT/$engine-serve.log" 2>&1 &
  serve=$!
  wait_ready "$HTTP"
  open_election "$ADMIN" sot

  echo "loading $n votes at $RATE/s ($(( (n + RATE - 1) / RATE ))s)…"
  "$BIN/votes-load" -q --target "http://$HTTP" --election sot --rate "$RATE" \
    --duration "$(( (n + RATE - 1) / RATE ))s" --voters "$n" --voter-base 1 --connections 256 \
    --report "$OUT/$engine-load.json" >/dev/null
  accepted=$(jq '.by_status["202"] // 0' "$OUT/$engine-load.json")
  echo "accepted $accepted"

  e0=$(cpu_ticks "$engine_pid"); p0=$(reaped_ticks); start=$(date +%s.%N)
  "$BIN/votes" persist --exit-when-caught-up --concurrency "$CONCURRENCY" >"$OUT/$engine-persist.out" 2>"$OUT/$engine-persist.log"
  end=$(date +%s.%N); e1=$(cpu_ticks "$engine_pid"); p1=$(reaped_ticks)
  cat "$OUT/$engine-persist.out"
  python3 -c "
import sys
n, a, b, p, e, t = map(float, sys.argv[1:])
s = b - a
print(f'persist [$engine]: {n:.0f} items in {s:.1f} s = {n/s:.0f} items/s; '
      f'persister {p/t:.1f} CPU-s ({p/t/n*1e6:.0f} us/item), engine {e/t:.1f} CPU-s ({e/t/n*1e6:.0f} us/item)')
" "$accepted" "$start" "$end" "$((p1 - p0))" "$((e1 - e0))" "$TICK" | tee -a "$OUT/summary.txt"

  "$BIN/votes-load" -q --lookups --target "http://$HTTP" --election sot --rate "$ME_RATE" \
    --duration "${ME_SECONDS}s" --voters "$n" --voter-base 1 --connections 64 \
    --report "$OUT/$engine-me.json" >/dev/null
  jq -r --arg e "$engine" --arg r "$ME_RATE" \
    '"/votes/me [\($e)] at \($r)/s: \(.by_status) p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms"' \
    "$OUT/$engine-me.json" | tee -a "$OUT/summary.txt"

  # Closing starts the recount inside serve: timed from the close to state final.
  start=$(date +%s.%N)
  curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections/sot/close"
  until curl -fsS "http://$HTTP/v1/elections/sot" | grep -q '"state":"final"'; do
    kill -0 $serve || { echo "serve died" >&2; exit 1; }
    sleep 0.2
  done
  end=$(date +%s.%N)
  python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'close -> official result [$engine] ($accepted votes): {b-a:.1f} s')" "$start" "$end" | tee -a "$OUT/summary.txt"
  # The CLI on the final election: the same three counts, phase by phase, without rewriting.
  start=$(date +%s.%N)
  "$BIN/votes" recount --election sot >"$OUT/$engine-recount.txt"
  end=$(date +%s.%N)
  sed "s/^/  [$engine] /" "$OUT/$engine-recount.txt" | tee -a "$OUT/summary.txt"
  python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'votes recount [$engine] of $accepted votes: {b-a:.1f} s')" "$start" "$end" | tee -a "$OUT/summary.txt"
  kill $serve; wait $serve 2>/dev/null || true; serve=
done
scripts/services.sh down dynamodb >/dev/null
scripts/services.sh up dynamodb >/dev/null
echo "summary: $OUT/summary.txt"
