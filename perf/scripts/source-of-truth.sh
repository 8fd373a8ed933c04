#!/usr/bin/env bash
# The source of truth's figures (issue "Source of truth"): how fast `votes persist` writes
# committed votes into the local DynamoDB endpoint, and how long `votes recount` takes for an
# election of VOTES votes. Everything on this machine, over loopback.
#
#   perf/scripts/source-of-truth.sh            env: VOTES=1000000 RATE=5000 CONCURRENCY=16
#
# 1. votes serve (release, 2 cores) takes VOTES distinct voters from votes-load at RATE/s;
# 2. votes persist --exit-when-caught-up writes them (timed: items/s, and its CPU and moto's);
# 3. the election is closed and `votes recount` is timed, step by step.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
cargo build --release --quiet -p votes -p votes-perf --bins
BIN=$CARGO_TARGET_DIR/release
N=${VOTES:-1000000}
RATE=${RATE:-5000}
CONCURRENCY=${CONCURRENCY:-16}
OUT=$ROOT/target/perf
mkdir -p "$OUT"
scripts/services.sh up >/dev/null

. "$ROOT/perf/scripts/lib.sh"
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
VOTES_PREFIX="sot-$(date +%s)-"
export VOTES_PREFIX
HTTP=127.0.0.1:18581
ADMIN=127.0.0.1:19591
cpu_s() { awk -v t="$TICK" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }

"$BIN/votes" init --partitions 8 >/dev/null
"$BIN/votes" serve --cores 2 --http "$HTTP" --admin "$ADMIN" --node-id sot >"$OUT/sot-serve.log" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections" \
  -d '{"id":"sot","title":"sot","options":[{"id":"a","label":"A"},{"id":"b","label":"B"},{"id":"c","label":"C"}]}'
curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections/sot/open"

secs=$(( (N + RATE - 1) / RATE ))
echo "loading $N votes at $RATE/s (${secs}s)…"
"$BIN/votes-load" -q --target "http://$HTTP" --election sot --rate "$RATE" --duration "${secs}s" \
  --voters "$N" --voter-base 1 --connections 256 --report "$OUT/sot-load.json" >/dev/null
accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["by_status"].get("202",0))' "$OUT/sot-load.json")
echo "accepted $accepted"

moto=$(cat target/services/dynamodb/*.pid 2>/dev/null | head -1 || true)
m0=$( [ -n "$moto" ] && cpu_s "$moto" || echo 0)
start=$(date +%s.%N)
"$BIN/votes" persist --exit-when-caught-up --concurrency "$CONCURRENCY" >"$OUT/sot-persist.out" 2>"$OUT/sot-persist.log"
end=$(date +%s.%N)
m1=$( [ -n "$moto" ] && cpu_s "$moto" || echo 0)
cat "$OUT/sot-persist.out"
python3 -c "import sys; n,a,b,m0,m1=map(float,sys.argv[1:]); print(f'persist: {n:.0f} items in {b-a:.1f} s = {n/(b-a):.0f} items/s; moto used {m1-m0:.1f} CPU-s')" "$accepted" "$start" "$end" "$m0" "$m1"

# Closing starts the recount inside serve: timed from the close to state final.
start=$(date +%s.%N)
curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections/sot/close"
until curl -fsS "http://$HTTP/v1/elections/sot" | grep -q '"state":"final"'; do
  kill -0 $serve || { echo "serve died" >&2; exit 1; }
  sleep 0.2
done
end=$(date +%s.%N)
python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'close -> official result ($accepted votes): {b-a:.1f} s')" "$start" "$end"
sleep 0.5; grep -i "recount agrees" "$OUT/sot-serve.log" | tail -1 || true
# The CLI on the final election: the same three counts, step by step, without rewriting.
start=$(date +%s.%N)
"$BIN/votes" recount --election sot | tee "$OUT/sot-recount.txt"
end=$(date +%s.%N)
python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'votes recount of $accepted votes: {b-a:.1f} s')" "$start" "$end"
