#!/usr/bin/env bash
# The cost of the fleet's extra hop (issue "Fleet", item 2), and of TLS on it (issue "Secure
# the fleet"): two `votes serve` nodes on one prefix, one reactor core each (node-a on CPU 0,
# node-b on CPU 1), dividing the partitions through the serve group. votes-load sends every vote
# to node-a at a fixed rate; about half of them belong to node-b's partitions and are forwarded
# over the internal link. Both kinds are answered in the same run, so node-a's /metrics
# compares them directly: votes_vote_answer_seconds{route="local"} against {route="forwarded"},
# from the hand-off to the shard's answer (the forwarded one includes node-b's commit).
# votes-load's own p50/p99 covers both kinds together.
#
# Each round runs every link mode of MODES, one after the other on a fresh prefix: `keyed`
# (plaintext, a MAC on every frame under VOTES_FORWARD_KEY) and `tls` (mutual TLS 1.3 with a
# fleet CA made here with openssl). The summary compares them, round by round.
#
#   perf/scripts/fleet-hop.sh [RATE]          default rate: 1000 votes/s
#   env: DURATION=20s  CONNECTIONS=64  MODES="keyed tls"  ROUNDS=2
#        BIN=<dir with release votes, votes-load>
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
RATE=${1:-1000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
MODES=${MODES:-keyed tls}
ROUNDS=${ROUNDS:-2}
OUT=$ROOT/target/perf/hop-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
scripts/services.sh up kafka dynamodb redis >/dev/null
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0

# The fleet's PKI for the tls mode: a CA, and one certificate per node for 127.0.0.1.
pki() {
  local dir=$OUT/pki n
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj '/CN=votes perf fleet CA' -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  for n in node-a node-b; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
      -keyout "$dir/$n.key" -out "$dir/$n.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 2 -out "$dir/$n.pem" \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n') 2>/dev/null
  done
}
pki

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start_node() { # mode name cpu http admin internal
  local tls=()
  if [ "$1" = tls ]; then
    tls=(--internal-tls-cert "$OUT/pki/$2.pem" --internal-tls-key "$OUT/pki/$2.key"
      --internal-tls-ca "$OUT/pki/ca.pem")
  fi
  "$BIN/votes" serve --cpus "$3" --http "$4" --admin "$5" --internal "$6" --node-id "$2" \
    "${tls[@]}" >"$OUT/$1-$2.log" 2>&1 &
  pids+=($!)
}

run() { # mode round
  local mode=$1 tag=$1-$2 a ca0 cb0 ca1 cb1
  export VOTES_PREFIX="hop-$tag-$(date +%s)-"
  "$BIN/votes" init --partitions 8 >/dev/null
  pids=()
  start_node "$mode" node-a 0 127.0.0.1:18680 127.0.0.1:19680 127.0.0.1:17680
  start_node "$mode" node-b 1 127.0.0.1:18681 127.0.0.1:19681 127.0.0.1:17681
  local auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
  # Ready: both nodes joined and every partition of each has recovered (bounded: 60 s).
  for _ in $(seq 1 300); do
    a=$(curl -s "${auth[@]}" http://127.0.0.1:19680/admin/v1/fleet | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    if [ "$a" = 2 ] && curl -fsS http://127.0.0.1:18680/readyz >/dev/null 2>&1 &&
      curl -fsS http://127.0.0.1:18681/readyz >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  curl -fsS -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:19680/admin/v1/elections \
    -d '{"id":"hop","title":"hop","options":[{"id":"a","label":"A"},{"id":"b","label":"B"},{"id":"c","label":"C"}]}'
  curl -fsS -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:19680/admin/v1/elections/hop/open
  # node-b learns the election from the elections topic: wait until it takes a vote for it.
  for _ in $(seq 1 100); do
    curl -s http://127.0.0.1:18681/v1/elections/hop | grep -q '"open"' && break
    sleep 0.1
  done

  local secs=${DURATION%s}
  ca0=$(cpu_ticks "${pids[0]}"); cb0=$(cpu_ticks "${pids[1]}")
  "$BIN/votes-load" -q --target http://127.0.0.1:18680 --election hop --rate "$RATE" \
    --duration "$DURATION" --voters $((RATE * secs + 1000)) --connections "$CONNECTIONS" \
    --report "$OUT/$tag-load.json" >/dev/null
  ca1=$(cpu_ticks "${pids[0]}"); cb1=$(cpu_ticks "${pids[1]}")
  sleep 1.5 # metrics are published once a second
  curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" http://127.0.0.1:19680/metrics >"$OUT/$tag-node-a.metrics"
  echo "$tag $((ca1 - ca0)) $((cb1 - cb0))" >>"$OUT/cpu"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    echo "round $round: $mode" >&2
    run "$mode" "$round"
  done
done

python3 - "$OUT" "$RATE" "$TICK" <<'PY'
import json, re, sys
out, rate, tick = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = {t: (int(a), int(b)) for t, a, b in (l.split() for l in open(f"{out}/cpu"))}
def figures(tag):
    load = json.load(open(f"{out}/{tag}-load.json"))
    text = open(f"{out}/{tag}-node-a.metrics").read()
    def n(route):
        return int(re.search(r'votes_vote_answer_seconds_count\{route="%s"\} (\d+)' % route, text).group(1))
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
    def f(what):
        m = re.search(r'votes_forward_total\{what="%s"\} (\d+)' % what, text)
        return int(m.group(1)) if m else 0
    acc = load["by_status"].get("202", 0)
    ta, tb = cpu[tag]
    return dict(tag=tag, achieved=load["achieved_rate"], status=load["by_status"],
                p50=load["latency_ms"]["p50"], p99=load["latency_ms"]["p99"],
                local=(n("local"), q("local", .5), q("local", .99)),
                fwd=(n("forwarded"), q("forwarded", .5), q("forwarded", .99)),
                per_write=f("sent") / max(f("writes"), 1),
                cpu_a=ta / tick / max(acc, 1) * 1e6, cpu_b=tb / tick / max(acc, 1) * 1e6)
tags = sorted(cpu, key=lambda t: (int(t.split("-")[1]), t))
print(f"offered {rate}/s; node-a's answers by route (ms), CPU per accepted vote (us)")
print(f"{'run':<9} {'achieved':>8} {'local p50/p99':>15} {'forwarded p50/p99':>19} {'hop p50/p99':>15} {'per write':>9} {'cpu a/b':>9}  load p50/p99, status")
for t in tags:
    r = figures(t)
    hop50, hop99 = r["fwd"][1] - r["local"][1], r["fwd"][2] - r["local"][2]
    print(f"{t:<9} {r['achieved']:>8.0f} {r['local'][1]:>7.2f}/{r['local'][2]:<7.2f} {r['fwd'][1]:>9.2f}/{r['fwd'][2]:<9.2f} "
          f"{hop50:>+7.2f}/{hop99:<+7.2f} {r['per_write']:>9.2f} {r['cpu_a']:>4.0f}/{r['cpu_b']:<4.0f}  "
          f"{r['p50']:.2f}/{r['p99']:.2f}, {r['status']}")
PY
echo "raw: $OUT" >&2
