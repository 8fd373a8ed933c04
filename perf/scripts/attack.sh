#!/usr/bin/env bash
# Edge protection under attack (issue #7): the honest voters' ack latency with and without a
# flood of bad requests hitting the same `votes serve`, and what the flood costs that process.
# One serve process, three phases, one run:
#
#   1. baseline  votes-load alone: HONEST_RATE votes/s of new voters for DURATION   → p99 without
#   2. attack    the same honest load, and votes-flood at FLOOD_RATE bad requests/s
#                (every kind of docs/design.md §4.2's 4xx, duplicates of phase 1's voters and
#                wrong proofs of work included), starting before and ending after it → p99 with
#   3. absorb    votes-flood alone, closed loop (FLOOD_CONCURRENCY workers, ABSORB)
#                → rejections/s per reactor core, and serve CPU per rejected request
#
# CPU is the serve process's utime+stime from /proc/PID/stat over each phase. Phase 2's CPU per
# rejection subtracts the honest votes' share at phase 1's CPU per vote; phase 3's "net" figure
# subtracts the process's idle CPU, measured over 5 s without requests before phase 1.
#
#   perf/scripts/attack.sh
#   env: CORES=2 HONEST_RATE=200 FLOOD_RATE=2000 DURATION=20s ABSORB=10s FLOOD_CONCURRENCY=64
#        CONNECTIONS=64 BIN=<dir with release votes, votes-load, votes-flood>
#
# Exits 1 when the honest p99 with the flood is more than 2x the p99 without, when an honest vote
# was not accepted, or when a flood request did not get its own status and error code.
# Everything runs on this machine over loopback against the local Kafka; per-address rate limits
# are off (the flood comes from one address and would otherwise meet 429 first).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
env_defaults CORES=2 HONEST_RATE=200 FLOOD_RATE=2000 DURATION=20s ABSORB=10s FLOOD_CONCURRENCY=64 \
  CONNECTIONS=64
OUT=$ROOT/target/perf/attack
mkdir -p "$OUT"
scripts/services.sh up kafka dynamodb >/dev/null

export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
export VOTES_PREFIX="perf-attack-$(date +%s)-"
HTTP=127.0.0.1:18680
ADMIN=127.0.0.1:19690

"$BIN/votes" init --partitions 8 >/dev/null
"$BIN/votes" serve --cores "$CORES" --http "$HTTP" --admin "$ADMIN" --node-id perf-attack \
  >"$OUT/serve.log" 2>&1 &
serve=$!
flood=
trap 'kill $serve ${flood:-} 2>/dev/null || true' EXIT
wait_ready "$HTTP"
open_election "$ADMIN" atk
open_election "$ADMIN" atk-pow '"options":[{"id":"a","label":"A"},{"id":"b","label":"B"}],"pow_difficulty":8'

secs=${DURATION%s}
voters=$((HONEST_RATE * secs + 100))
voted=$((HONEST_RATE * secs)) # phase 1's voters, every one accepted (checked below): the duplicates
honest() { # $1 voter base, $2 report
  "$BIN/votes-load" -q --target "http://$HTTP" --election atk --rate "$HONEST_RATE" --duration "$DURATION" \
    --voters "$voters" --voter-base "$1" --connections "$CONNECTIONS" --report "$2" >/dev/null
}

# 0. idle: the serve process's own CPU with no requests (its pollers and tickers), to subtract
i0=$(cpu_ticks $serve)
sleep 5
i1=$(cpu_ticks $serve)

# 1. baseline
s0=$(cpu_ticks $serve)
honest 1 "$OUT/honest-alone.json"
s1=$(cpu_ticks $serve)

# 2. the same honest load inside a flood (2 s of flood before it and after it)
flood_secs=$((secs + 4))
"$BIN/votes-flood" -q --target "http://$HTTP" --election atk --pow-election atk-pow \
  --rate "$FLOOD_RATE" --duration "${flood_secs}s" --connections "$CONNECTIONS" \
  --dup-base 1 --dup-voters "$voted" --report "$OUT/flood-beside.json" >"$OUT/flood-beside.txt" &
flood=$!
sleep 2
s2=$(cpu_ticks $serve)
honest $((1 + voters)) "$OUT/honest-flooded.json"
s3=$(cpu_ticks $serve)
wait $flood
flood=

# 3. the flood alone, as fast as it goes
s4=$(cpu_ticks $serve)
"$BIN/votes-flood" -q --target "http://$HTTP" --election atk --pow-election atk-pow \
  --rate 0 --concurrency "$FLOOD_CONCURRENCY" --duration "$ABSORB" --connections "$CONNECTIONS" \
  --dup-base 1 --dup-voters "$voted" --report "$OUT/flood-alone.json" >"$OUT/flood-alone.txt"
s5=$(cpu_ticks $serve)
sleep 2 # each core publishes its counters once a second
curl -fsS "http://$ADMIN/metrics" -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" \
  | grep '^votes_votes_total' >"$OUT/metrics.txt" || true
kill $serve
wait $serve 2>/dev/null || true
trap - EXIT

python3 - "$OUT" "$CORES" "$TICK" $((s1 - s0)) $((s3 - s2)) $((s5 - s4)) "$FLOOD_RATE" $((i1 - i0)) <<'PY'
import json, sys
out, cores, tick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c_alone, c_flooded, c_absorb = (int(x) / tick for x in sys.argv[4:7])
flood_rate = float(sys.argv[7])
idle_per_s = int(sys.argv[8]) / tick / 5.0
load = lambda n: json.load(open(f"{out}/{n}.json"))
ha, hf, fb, fa = load("honest-alone"), load("honest-flooded"), load("flood-beside"), load("flood-alone")
problems = []
for name, r in (("alone", ha), ("flooded", hf)):
    ok = r["by_status"].get("202", 0)
    if ok != r["sent"] or r.get("dropped", 0):
        problems.append(f"honest voters {name}: {ok} of {r['sent']} got 202, by status {r['by_status']}, dropped {r.get('dropped', 0)}")
for name, r in (("beside the honest voters", fb), ("alone", fa)):
    errs = sum(r["errors"].values())
    if r["unexpected"] or errs:
        problems.append(f"flood {name}: {r['unexpected']} unexpected answers, {errs} errors: {r['by_kind']} {r['errors']}")
p99a, p99f = ha["latency_ms"]["p99"], hf["latency_ms"]["p99"]
ratio = p99f / p99a if p99a > 0 else float("inf")
# The flood's share of phase 2's CPU: phase 2's CPU minus the honest votes at phase 1's cost.
per_vote = c_alone / max(ha["by_status"].get("202", 0), 1)
flood_share = max(c_flooded - per_vote * hf["by_status"].get("202", 0), 0.0)
# Only the flood requests sent while the honest load ran fall in the measured window: prorate.
beside_rej = fb["rejected"] * (hf["elapsed_s"] / fb["elapsed_s"])
row = "| {:<34} | {:>12} | {:>9} | {:>9} | {:>12} | {:>14} | {:>20} |"
print(row.format("phase", "honest 202/s", "p50 ms", "p99 ms", "flood rej/s", "rej/s per core", "serve CPU µs / rej"))
print(row.format("-" * 34, "-" * 12, "-" * 9, "-" * 9, "-" * 12, "-" * 14, "-" * 20))
print(row.format("1 honest alone", f"{ha['achieved_rate']:.0f}", f"{ha['latency_ms']['p50']:.2f}", f"{p99a:.2f}", "-", "-", "-"))
print(row.format(f"2 honest + flood {flood_rate:.0f}/s offered", f"{hf['achieved_rate']:.0f}", f"{hf['latency_ms']['p50']:.2f}", f"{p99f:.2f}",
                 f"{fb['rejected_rate']:.0f}", f"{fb['rejected_rate'] / cores:.0f}", f"{flood_share / max(beside_rej, 1) * 1e6:.1f} (est.)"))
absorb_net = max(c_absorb - idle_per_s * fa["elapsed_s"], 0.0)
print(row.format("3 flood alone, closed loop", "-", f"{fa['latency_ms']['p50']:.2f}", f"{fa['latency_ms']['p99']:.2f}",
                 f"{fa['rejected_rate']:.0f}", f"{fa['rejected_rate'] / cores:.0f}",
                 f"{c_absorb / max(fa['rejected'], 1) * 1e6:.1f} ({absorb_net / max(fa['rejected'], 1) * 1e6:.1f} net)"))
print()
print(f"honest p99 with flood / without: {p99f:.2f} / {p99a:.2f} ms = {ratio:.2f}x (limit 2x)")
print(f"serve CPU idle: {idle_per_s:.3f} CPU-s per s (subtracted for the 'net' figure)")
print(f"serve CPU: phase 1 {c_alone:.2f} s ({per_vote * 1e6:.0f} µs per honest vote), phase 2 {c_flooded:.2f} s, "
      f"phase 3 {c_absorb:.2f} s over {fa['elapsed_s']:.1f} s = {c_absorb / fa['elapsed_s'] / cores * 100:.0f}% of {cores} core(s)")
print(f"flood kinds (phase 3): " + ", ".join(f"{k} {sorted(v)}" for k, v in sorted(fa['by_kind'].items())))
if ratio > 2.0:
    problems.append(f"honest p99 with the flood is {ratio:.2f}x the p99 without (more than 2x)")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
PY
