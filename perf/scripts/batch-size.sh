#!/usr/bin/env bash
# One run of `votes serve` on a fresh topic of PARTITIONS partitions with --linger-ms LINGER,
# driven at RATE votes/s for 10 s by votes-load (HTTP/1.1, 256 connections): prints the mean
# votes per transaction and the serve process's and broker's CPU per vote. Used to split the
# cost into per-vote and per-transaction parts (perf/RESULTS.md).
#
#   perf/scripts/batch-size.sh PARTITIONS LINGER_MS RATE [CORES]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PARTS=$1; LINGER=$2; RATE=$3; CORES=${4:-1}
B=${BIN:-$CARGO_TARGET_DIR/release}
HTTP=127.0.0.1:18382
ADMIN=127.0.0.1:19392
export VOTES_PREFIX="batch-$PARTS-$LINGER-$RATE-$(date +%s%N)-"
# The whole load comes from one loopback address: per-source rate limits would measure
# themselves, not the write path.
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
scripts/services.sh up kafka dynamodb >/dev/null
"$B/votes" init --partitions "$PARTS" >/dev/null
"$B/votes" serve --cores "$CORES" --linger-ms "$LINGER" --http "$HTTP" --admin "$ADMIN" >/dev/null 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null || true' EXIT
wait_ready "$HTTP"
open_election "$ADMIN" e1 '"options":[{"id":"red","label":"Red"},{"id":"blue","label":"Blue"}]'
kafka=$(pgrep -f 'kafka\.Kafka' | head -1)
s0=$(cpu_ticks $serve); k0=$(cpu_ticks "$kafka")
"$B/votes-load" -q --target "http://$HTTP" --election e1 --rate "$RATE" --duration 10s \
  --voters $((RATE * 10 + 100)) --connections 256 --report /tmp/batch-size.json >/dev/null
s1=$(cpu_ticks $serve); k1=$(cpu_ticks "$kafka")
batch=$(curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" "http://$ADMIN/metrics" | awk '/^votes_batch_size_mean/ {print $2}')
python3 - /tmp/batch-size.json $((s1 - s0)) $((k1 - k0)) "$(getconf CLK_TCK)" "$batch" <<PY
import json, sys
r = json.load(open(sys.argv[1])); acc = r["by_status"].get("202", 0) or 1
s, k, tick, batch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
us = lambda t: t / tick / acc * 1e6
print(f"partitions=$PARTS linger_ms=$LINGER rate=$RATE cores=$CORES accepted/s={r['achieved_rate']:.0f} "
      f"p50_ms={r['latency_ms']['p50']:.1f} p99_ms={r['latency_ms']['p99']:.1f} batch_mean={batch} "
      f"serve_us_per_vote={us(s):.1f} kafka_us_per_vote={us(k):.1f}")
PY
