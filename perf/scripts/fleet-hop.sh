#!/usr/bin/env bash
# The cost of the fleet's extra hop (issue "Fleet", item 2): two `votes serve` nodes on one
# prefix, one reactor core each (node-a on CPU 0, node-b on CPU 1), dividing the partitions
# through the serve group. votes-load sends every vote to node-a at a fixed rate; about half of
# them belong to node-b's partitions and are forwarded over the internal link. Both kinds are
# answered in the same run, so node-a's /metrics compares them directly:
# votes_vote_answer_seconds{route="local"} against {route="forwarded"}, from the hand-off to the
# shard's answer (the forwarded one includes node-b's commit). votes-load's own p50/p99 covers
# both kinds together.
#
#   perf/scripts/fleet-hop.sh [RATE]          default rate: 1000 votes/s
#   env: DURATION=20s  CONNECTIONS=64  BIN=<dir with release votes, votes-load>
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
. "$ROOT/perf/scripts/lib.sh"
release_bins
RATE=${1:-1000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
OUT=$ROOT/target/perf
mkdir -p "$OUT"
scripts/services.sh up kafka dynamodb redis >/dev/null
. "$ROOT/perf/scripts/lib.sh"
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
export VOTES_PREFIX="hop-$(date +%s)-"
"$BIN/votes" init --partitions 8 >/dev/null

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start_node() { # name cpu http admin internal
  "$BIN/votes" serve --cpus "$2" --http "$3" --admin "$4" --internal "$5" --node-id "$1" \
    >"$OUT/hop-$1.log" 2>&1 &
  pids+=($!)
}
start_node node-a 0 127.0.0.1:18680 127.0.0.1:19680 127.0.0.1:17680
start_node node-b 1 127.0.0.1:18681 127.0.0.1:19681 127.0.0.1:17681
auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
# Ready: both nodes joined and every partition of each has recovered.
for _ in $(seq 1 150); do
  a=$(curl -s "${auth[@]}" http://127.0.0.1:19680/admin/v1/fleet | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
  if [ "$a" = 2 ] && curl -fsS http://127.0.0.1:18680/readyz >/dev/null 2>&1 &&
    curl -fsS http://127.0.0.1:18681/readyz >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -fsS -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:19680/admin/v1/elections \
  -d '{"id":"hop","title":"hop","options":[{"id":"a","label":"A"},{"id":"b","label":"B"},{"id":"c","label":"C"}]}'
curl -fsS -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:19680/admin/v1/elections/hop/open
sleep 1 # node-b learns the election from the elections topic

secs=${DURATION%s}
ca0=$(cpu_ticks "${pids[0]}"); cb0=$(cpu_ticks "${pids[1]}")
"$BIN/votes-load" -q --target http://127.0.0.1:18680 --election hop --rate "$RATE" \
  --duration "$DURATION" --voters $((RATE * secs + 1000)) --connections "$CONNECTIONS" \
  --report "$OUT/hop-load.json" >/dev/null
ca1=$(cpu_ticks "${pids[0]}"); cb1=$(cpu_ticks "${pids[1]}")
sleep 1.5 # metrics are published once a second
curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" http://127.0.0.1:19680/metrics >"$OUT/hop-node-a.metrics"
python3 - "$OUT/hop-load.json" "$OUT/hop-node-a.metrics" "$RATE" $((ca1 - ca0)) $((cb1 - cb0)) "$TICK" <<'PY'
import json, re, sys
load = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
rate, ta, tb, tick = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def q(route, quant):
    # Prometheus's histogram_quantile: linear within the bucket the rank falls in.
    buckets = [(float(le), int(c)) for le, c in re.findall(
        r'votes_vote_answer_seconds_bucket\{route="%s",le="([^"+]+)"\} (\d+)' % route, text)]
    rank, lo, below = quant * n(route), 0.0, 0
    for le, c in buckets:
        if c >= rank and c > below:
            return (lo + (le - lo) * (rank - below) / (c - below)) * 1000
        lo, below = le, c
    return lo * 1000
def n(route):
    return int(re.search(r'votes_vote_answer_seconds_count\{route="%s"\} (\d+)' % route, text).group(1))
def f(what):
    m = re.search(r'votes_forward_total\{what="%s"\} (\d+)' % what, text)
    return int(m.group(1)) if m else 0
acc = load["by_status"].get("202", 0)
print(f"offered {rate}/s, achieved {load['achieved_rate']:.0f}/s, by status {load['by_status']}")
print(f"votes-load (all votes, from the intended send): p50 {load['latency_ms']['p50']:.2f} ms  p99 {load['latency_ms']['p99']:.2f} ms")
print(f"{'route':<10} {'answers':>8} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8}")
for r in ("local", "forwarded"):
    print(f"{r:<10} {n(r):>8} {q(r, 0.5):>8.2f} {q(r, 0.9):>8.2f} {q(r, 0.99):>8.2f}")
print(f"hop cost: p50 +{q('forwarded', 0.5) - q('local', 0.5):.2f} ms ({q('forwarded', 0.5) / q('local', 0.5):.2f}x), "
      f"p99 +{q('forwarded', 0.99) - q('local', 0.99):.2f} ms ({q('forwarded', 0.99) / q('local', 0.99):.2f}x)")
sent, writes = f("sent"), f("writes")
print(f"forwarding link: {sent} votes in {writes} writes ({sent / max(writes, 1):.2f} votes per write)")
if acc:
    print(f"CPU per accepted vote: node-a {ta / tick / acc * 1e6:.0f} us, node-b {tb / tick / acc * 1e6:.0f} us")
PY
