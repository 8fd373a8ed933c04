#!/usr/bin/env bash
# The "seed design" peer (perf/peers/kstreams): a Kafka Streams app with
# processing.guarantee=exactly_once_v2 that keeps the first vote per (election, voter) in a
# RocksDB store and counts per (election, option), run over an input topic that already holds
# RECORDS vote records (v1). Measures records/s from the first processed record until every
# record is processed and the app's consumer group committed the input's end offsets, and the
# CPU-seconds of the JVM and of the Kafka broker(s) over that interval.
#
#   INPUT=topic RECORDS=n perf/scripts/peer-kstreams.sh
#   env: BROKERS=127.0.0.1:9092  OUT=target/perf/peer-kstreams.json  THREADS=2
#        EXPECTED=<file {"election":{"option":count}}>  (compared with the app's tallies; exit 1
#        and print the difference if they differ)   TIMEOUT_S=600
#
# Writes the JSON report to OUT and prints a one-line summary. Each run uses a fresh
# application id; its state dir (under target/perf/kstreams-state), output and internal topics
# are deleted afterwards.
set -euo pipefail
if ! command -v jq >/dev/null; then
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] ||
    { echo "error: jq not found (Debian: apt-get install -y jq)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BROKERS=${BROKERS:-127.0.0.1:9092}
INPUT=${INPUT:?INPUT (input topic) is required}
RECORDS=${RECORDS:?RECORDS (number of input records) is required}
OUT=${OUT:-target/perf/peer-kstreams.json}
THREADS=${THREADS:-2}
EXPECTED=${EXPECTED:-}
TIMEOUT_S=${TIMEOUT_S:-600}
PEER=$ROOT/perf/peers/kstreams
JAR=$PEER/target/peer-kstreams.jar

# Build when the jar is missing or older than the pom or any source.
if [ ! -f "$JAR" ] || [ -n "$(find "$PEER/pom.xml" "$PEER/src" -newer "$JAR" -type f -print -quit)" ]; then
  echo "peer-kstreams: building $JAR" >&2
  mvn -q -B -f "$PEER/pom.xml" package -DskipTests >&2
fi

BROKER_PIDS=$(pgrep -f 'kafka\.Kafka' | tr '\n' ' ' || true)
[ -n "$BROKER_PIDS" ] || echo "peer-kstreams: warning: no broker process found, broker CPU is 0" >&2
APP_ID=peer-kstreams-$(date +%s)-$$
STATE_ROOT=$ROOT/target/perf/kstreams-state
STATE=$STATE_ROOT/$APP_ID
mkdir -p "$STATE" "$(dirname "$OUT")"
trap 'rm -rf "$STATE"' EXIT

java -jar "$JAR" --brokers "$BROKERS" --input "$INPUT" --records "$RECORDS" --app-id "$APP_ID" \
  --state-dir "$STATE" --threads "$THREADS" --out "$OUT" --broker-pids "$BROKER_PIDS" \
  --timeout-s "$TIMEOUT_S"

jq -r '"peer-kstreams: \(.records) records (\(.first_votes) first votes, \(.invalid) invalid) in \(.wall_s) s = \(.votes_per_s) records/s; CPU \(.cpu_s) s (JVM \(.jvm_cpu_s), broker \(.broker_cpu_s)) = \(.votes_per_cpu_s) records/CPU-s; threads \(.threads) -> " + $out' \
  --arg out "$OUT" "$OUT"

if [ -n "$EXPECTED" ]; then
  diff_out=$(jq -rn --slurpfile got "$OUT" --slurpfile want "$EXPECTED" '
    ($got[0].tallies) as $g | ($want[0]) as $w
    | [(($g | keys) + ($w | keys) | unique)[] as $e
       | ((($g[$e] // {}) | keys) + (($w[$e] // {}) | keys) | unique)[] as $o
       | select(($g[$e][$o] // 0) != ($w[$e][$o] // 0))
       | "\($e)/\($o): expected \($w[$e][$o] // 0), got \($g[$e][$o] // 0)"]
    | .[]')
  if [ -n "$diff_out" ]; then
    echo "peer-kstreams: tallies differ from $EXPECTED:" >&2
    echo "$diff_out" >&2
    exit 1
  fi
  echo "peer-kstreams: tallies match $EXPECTED"
fi
