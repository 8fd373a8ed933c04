#!/usr/bin/env bash
# The Kafka floor (votes-peer floor): the cost of the durable log alone, bare transactional
# producers (one per partition) writing pre-encoded vote records to a topic that is kept, so
# another tool can read it afterwards.
#
#   perf/scripts/peer-floor.sh      env: VOTES=100000 VOTERS=90000 RATE= (closed loop)
#                                        TOPIC=perf-floor-<timestamp> PARTITIONS=8 BATCH=2048
#                                        BROKERS=127.0.0.1:9092 OUT=target/perf/peer-floor.json
#                                        EXPECTED=target/perf/peer-floor-expected.json BIN=
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins -p votes-perf --bin votes-peer
TOPIC=${TOPIC:-perf-floor-$(date +%Y%m%d-%H%M%S)}
BROKERS=${BROKERS:-127.0.0.1:9092}
OUT=${OUT:-$ROOT/target/perf/peer-floor.json}
EXPECTED=${EXPECTED:-$ROOT/target/perf/peer-floor-expected.json}
mkdir -p "$(dirname "$OUT")" "$(dirname "$EXPECTED")"
if [ "$BROKERS" = 127.0.0.1:9092 ]; then scripts/services.sh up kafka >/dev/null; fi

rate=()
[ -n "${RATE:-}" ] && rate=(--rate "$RATE")
"$BIN/votes-peer" floor --brokers "$BROKERS" --topic "$TOPIC" \
  --partitions "${PARTITIONS:-8}" --batch "${BATCH:-2048}" \
  --votes "${VOTES:-100000}" --voters "${VOTERS:-90000}" "${rate[@]}" \
  --out "$OUT" --expected "$EXPECTED"
echo "topic: $TOPIC"
echo "expected: $EXPECTED"
echo "report: $OUT"
