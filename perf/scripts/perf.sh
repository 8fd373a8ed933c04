#!/usr/bin/env bash
# `make perf`: the appliance and its peers, measured in one run on this machine, on the same
# broker, with the same votes; then a table (appended to perf/RESULTS.md) and a plot of the
# appliance's latency percentiles against offered load (perf/latency-vs-load.png).
#
#   perf/scripts/perf.sh
#   env: RATES="1000 2000 4000 8000 12000 16000 20000"  SWEEP_DURATION=15s   (appliance sweep)
#        FIXED_RATE=1000  FIXED_DURATION=20s          (every system at the same offered load)
#        PEER_VOTES=1000000 PG_VOTES=200000  DUP_RATIO=0.1   (closed-loop runs of the peers;
#        PostgreSQL takes a vote per fsync'd transaction, so it gets fewer)
#        CORES=2  CONNECTIONS=256  SOURCE_ADDRS=8  PARTITIONS=8 (the votes topic, the floor's too)
#        COMMITTER=core|node (votes serve --committer; empty: its default)
#        NO_RESULTS_MD=1 (do not touch RESULTS.md)  SKIP_PEERS=1 (the appliance only)
#
# Systems and what their CPU-seconds include (read from /proc/<pid>/stat around each run):
#   appliance  votes serve (HTTP, tokens, dedup, tally, Kafka transactions) + the Kafka broker
#   floor      a bare rdkafka transactional producer of pre-encoded records + the Kafka broker
#   kstreams   a Kafka Streams exactly_once_v2 app (dedup store + count) + the Kafka broker
#              (its input is the floor's topic, written before it starts)
#   postgres   PostgreSQL 15, one transaction per vote, synchronous_commit on, + its client
#   redis-lua  Redis, one Lua script per vote (SADD + HINCRBY), not durable, + its client
# votes-load (the appliance's HTTP load generator) is not counted; the peers' clients are, as
# they stand in for the application that would talk to the database. Everything shares this machine's CPUs: the figures compare
# systems under the same handicap, they are not what a dedicated node does.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATES=${RATES:-1000 2000 4000 8000 12000 16000 20000}
SWEEP_DURATION=${SWEEP_DURATION:-15s}
FIXED_RATE=${FIXED_RATE:-1000}
FIXED_DURATION=${FIXED_DURATION:-20s}
PEER_VOTES=${PEER_VOTES:-1000000}
PG_VOTES=${PG_VOTES:-200000}
DUP_RATIO=${DUP_RATIO:-0.1}
CORES=${CORES:-2}
CONNECTIONS=${CONNECTIONS:-256}
SOURCE_ADDRS=${SOURCE_ADDRS:-8}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/perf/run-$STAMP
mkdir -p "$OUT"
T0=$(date +%s)
say() { printf '[perf %4ss] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

say "building release binaries"
cargo build --release --quiet -p votes -p votes-perf --bins
# The Kafka Streams peer's jar (Maven Central on first use), before anything is timed.
(cd perf/peers/kstreams && mvn -q -B package -DskipTests) >&2
BIN=$CARGO_TARGET_DIR/release
export BIN
say "starting services (Kafka, DynamoDB endpoint, Redis)"
scripts/services.sh up >/dev/null

# Loopback load from a few addresses: the per-address limits would measure themselves.
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
HTTP=127.0.0.1:18680
ADMIN=127.0.0.1:19690
PARTITIONS=${PARTITIONS:-8}
COMMITTER=${COMMITTER:-}


# --- the appliance --------------------------------------------------------------------------
export VOTES_PREFIX="perf-$STAMP-"
"$BIN/votes" init --partitions "$PARTITIONS" >/dev/null
"$BIN/votes" serve --cores "$CORES" ${COMMITTER:+--committer "$COMMITTER"} --http "$HTTP" --admin "$ADMIN" --node-id perf >"$OUT/serve.log" 2>&1 &
SERVE=$!
cleanup() { kill "$SERVE" 2>/dev/null || true; }
trap cleanup EXIT
wait_ready "$HTTP" || { echo "error: votes serve did not become ready; see $OUT/serve.log" >&2; exit 1; }
open_election "$ADMIN" perf

VOTER_BASE=1
# appliance_run NAME RATE DURATION: one open-loop votes-load run; writes $OUT/NAME.json.
appliance_run() {
  local name=$1 rate=$2 duration=$3 secs voters kp s0 k0 s1 k1 w0 w1
  secs=${duration%s}
  voters=$((rate * secs + 1000))
  kp=($(kafka_pids))
  s0=$(cpu_ticks "$SERVE"); k0=$(sum_ticks "${kp[@]}"); w0=$(date +%s.%N)
  "$BIN/votes-load" -q --target "http://$HTTP" --election perf --rate "$rate" --duration "$duration" \
    --voters "$voters" --voter-base "$VOTER_BASE" --dup-ratio "$DUP_RATIO" \
    --connections "$CONNECTIONS" --source-addrs "$SOURCE_ADDRS" --report "$OUT/$name.load.json" >/dev/null
  s1=$(cpu_ticks "$SERVE"); k1=$(sum_ticks "${kp[@]}"); w1=$(date +%s.%N)
  VOTER_BASE=$((VOTER_BASE + voters))
  python3 - "$OUT/$name.load.json" "$OUT/$name.json" "$rate" $((s1 - s0)) $((k1 - k0)) "$TICK" "$w0" "$w1" <<'PY'
import json, sys
src, dst, rate, sticks, kticks, tick, w0, w1 = sys.argv[1:]
r = json.load(open(src))
tick = int(tick)
accepted = r["by_status"].get("202", 0)
serve_cpu, broker_cpu = int(sticks) / tick, int(kticks) / tick
row = {
    "system": "appliance", "offered_rate": float(rate), "achieved_rate": r["achieved_rate"],
    "sent": r["sent"], "accepted": accepted, "by_status": r["by_status"],
    "latency_ms": r["latency_ms"], "wall_s": float(w1) - float(w0),
    "serve_cpu_s": serve_cpu, "broker_cpu_s": broker_cpu, "cpu_s": serve_cpu + broker_cpu,
    "accepted_per_s": accepted / r["elapsed_s"] if r["elapsed_s"] else 0.0,
}
row["accepted_per_cpu_s"] = accepted / row["cpu_s"] if row["cpu_s"] else 0.0
json.dump(row, open(dst, "w"), indent=1)
lat = r["latency_ms"]
print(f"appliance offered {float(rate):>7.0f}/s  accepted {row['accepted_per_s']:>7.0f}/s  "
      f"p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  {row['accepted_per_cpu_s']:.0f} votes/CPU-s",
      file=sys.stderr)
PY
}

say "appliance: warm-up"
appliance_run warmup 1000 5s
for rate in $RATES; do
  say "appliance: sweep at $rate votes/s for $SWEEP_DURATION"
  appliance_run "appliance-sweep-$rate" "$rate" "$SWEEP_DURATION"
done
say "appliance: fixed load $FIXED_RATE votes/s for $FIXED_DURATION"
appliance_run appliance-fixed "$FIXED_RATE" "$FIXED_DURATION"
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
trap - EXIT

# --- peers ----------------------------------------------------------------------------------
if [ -z "${SKIP_PEERS:-}" ]; then
PEER_VOTERS=$(python3 -c "print(int($PEER_VOTES * (1 - $DUP_RATIO)))")
PG_VOTERS=$(python3 -c "print(int($PG_VOTES * (1 - $DUP_RATIO)))")
FIXED_VOTES=$(python3 -c "print(int($FIXED_RATE * ${FIXED_DURATION%s}))")
FIXED_VOTERS=$(python3 -c "print(int($FIXED_VOTES * (1 - $DUP_RATIO)))")
FLOOR_TOPIC="perf-floor-$STAMP"

say "floor: bare transactional producer, $PEER_VOTES votes, closed loop"
TOPIC=$FLOOR_TOPIC VOTES=$PEER_VOTES VOTERS=$PEER_VOTERS PARTITIONS=$PARTITIONS \
  EXPECTED=$OUT/floor-expected.json OUT=$OUT/floor-max.json perf/scripts/peer-floor.sh >&2
say "floor: fixed load $FIXED_RATE votes/s"
TOPIC="$FLOOR_TOPIC-fixed" VOTES=$FIXED_VOTES VOTERS=$FIXED_VOTERS RATE=$FIXED_RATE PARTITIONS=$PARTITIONS \
  EXPECTED=$OUT/floor-fixed-expected.json OUT=$OUT/floor-fixed.json perf/scripts/peer-floor.sh >&2

say "kafka streams (exactly_once_v2): the floor's $PEER_VOTES records"
INPUT=$FLOOR_TOPIC RECORDS=$PEER_VOTES EXPECTED=$OUT/floor-expected.json OUT=$OUT/kstreams-max.json \
  perf/scripts/peer-kstreams.sh >&2

say "postgres: $PG_VOTES votes, closed loop"
VOTES=$PG_VOTES VOTERS=$PG_VOTERS OUT=$OUT/postgres-max.json perf/scripts/peer-postgres.sh >&2
say "postgres: fixed load $FIXED_RATE votes/s"
VOTES=$FIXED_VOTES VOTERS=$FIXED_VOTERS RATE=$FIXED_RATE OUT=$OUT/postgres-fixed.json perf/scripts/peer-postgres.sh >&2

say "redis lua: $PEER_VOTES votes, closed loop"
VOTES=$PEER_VOTES VOTERS=$PEER_VOTERS OUT=$OUT/redis-max.json perf/scripts/peer-redis.sh >&2
say "redis lua: fixed load $FIXED_RATE votes/s"
VOTES=$FIXED_VOTES VOTERS=$FIXED_VOTERS RATE=$FIXED_RATE OUT=$OUT/redis-fixed.json perf/scripts/peer-redis.sh >&2
fi

# --- report ---------------------------------------------------------------------------------
say "report and plot"
VENV=$(perf/scripts/plot-venv.sh)
RESULTS_ARGS=(--results-md perf/RESULTS.md)
[ -n "${NO_RESULTS_MD:-}" ] && RESULTS_ARGS=()
"$VENV/bin/python" perf/scripts/report.py --run "$OUT" --plot perf/latency-vs-load.png \
  --command "RATES=\"$RATES\" SWEEP_DURATION=$SWEEP_DURATION FIXED_RATE=$FIXED_RATE FIXED_DURATION=$FIXED_DURATION PEER_VOTES=$PEER_VOTES PG_VOTES=$PG_VOTES make perf" \
  "${RESULTS_ARGS[@]}"
say "done in $(($(date +%s) - T0)) s; raw figures in $OUT"
