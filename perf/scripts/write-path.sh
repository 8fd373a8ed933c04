#!/usr/bin/env bash
# The write path's figures (issue "Write path"): accepted votes/s and ack latency (p50/p99 from
# the intended send time) of `votes serve` at 1 and 2 reactor cores, with votes-load over
# HTTP/1.1, and the CPU-seconds the serve process (and the broker) used per 100,000 accepted
# votes. Everything runs on this machine, over loopback, against the local Kafka.
#
#   perf/scripts/write-path.sh [RATES...]        default rates: 2000 5000 10000 20000
#   env: CORES="1 2"  DURATION=20s  CONNECTIONS=256  BIN=<dir with release votes, votes-load>
#
# Prints one row per (cores, rate) and writes the votes-load reports under target/perf/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(2000 5000 10000 20000)
CORES=${CORES:-1 2}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-256}
OUT=$ROOT/target/perf
mkdir -p "$OUT"
scripts/services.sh up kafka dynamodb >/dev/null

# The whole load comes from one loopback address: per-source rate limits would measure
# themselves, not the write path.
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
HTTP=127.0.0.1:18580
ADMIN=127.0.0.1:19590


printf '%-5s %-8s %-10s %-8s %-8s %-9s %-9s %-12s %-12s\n' cores offered achieved 202 other p50_ms p99_ms serve_cpu_s/100k kafka_cpu_s/100k
for cores in $CORES; do
  export VOTES_PREFIX="perf-$cores-$(date +%s)-"
  "$BIN/votes" init --partitions 8 >/dev/null
  "$BIN/votes" serve --cores "$cores" --http "$HTTP" --admin "$ADMIN" --node-id perf >"$OUT/serve-$cores.log" 2>&1 &
  serve=$!
  trap 'kill $serve 2>/dev/null || true' EXIT
  wait_ready "$HTTP"
  open_election "$ADMIN" perf
  base=1
  for rate in "${RATES[@]}"; do
    secs=${DURATION%s}
    voters=$((rate * secs + 1000))
    kp=($(kafka_pids))
    s0=$(cpu_ticks $serve); k0=$(sum_ticks "${kp[@]}")
    "$BIN/votes-load" -q --target "http://$HTTP" --election perf --rate "$rate" --duration "$DURATION" \
      --voters "$voters" --voter-base "$base" --connections "$CONNECTIONS" --report "$OUT/load-$cores-$rate.json" >/dev/null
    s1=$(cpu_ticks $serve); k1=$(sum_ticks "${kp[@]}")
    base=$((base + voters))
    python3 - "$OUT/load-$cores-$rate.json" "$cores" "$rate" $((s1 - s0)) $((k1 - k0)) "$TICK" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cores, rate, sticks, kticks, tick = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
acc = r["by_status"].get("202", 0)
other = sum(v for k, v in r["by_status"].items() if k != "202")
per = lambda t: f"{t / tick / acc * 100000:.2f}" if acc else "-"
print(f"{cores:<5} {rate:<8} {r['achieved_rate']:<10.0f} {acc:<8} {other:<8} {r['latency_ms']['p50']:<9.2f} {r['latency_ms']['p99']:<9.2f} {per(sticks):<12} {per(kticks):<12}")
PY
  done
  kill $serve; wait $serve 2>/dev/null || true
  trap - EXIT
done
