#!/usr/bin/env bash
# The appliance's HTTP edge against a reference server of the same protocol, in one run
# (issues #8 and #16). First the floor of the protocol: `votes-peer h1-reference` (hyper on
# tokio, keep-alive) or `votes-peer h3-reference` (tokio + quinn + h3, the h3 crate's example
# server pattern), every vote answered 202 with a fixed receipt, pinned to one CPU with one
# worker thread, driven by `votes-load --protocol P` at a few open-loop rates. Prints per rate:
# achieved votes/s, p50/p99 latency (from intended send times) and the server's CPU seconds
# per 1,000 answered requests (utime + stime from /proc/<pid>/stat over the run). Then the same
# rates against `votes serve` on the same one CPU (one reactor, PARTITIONS partitions; h1 on
# its plaintext listener, h3 on the UDP side of its TLS listener; every vote committed to
# Kafka before its 202), fresh voters per rate; and the ratios appliance / reference.
#
#   perf/scripts/http-reference.sh          (perf/scripts/h3-reference.sh: PROTOCOL=h3)
#   env: PROTOCOL=h1|h3 (default h3)  RATES="2000 5000 10000 20000"  DURATION=10s
#        CONNECTIONS=4 (h3: QUIC connections; h1 default 1,024 keep-alive connections)
#        PARTITIONS=8  SERVER_CPU=0  LOAD_CPUS=1  LOAD_THREADS=1
#        BIN=<dir with release votes, votes-peer, votes-load>
#
# The self-signed certificate (votes-peer gen-cert) and the votes-load reports are kept under
# target/perf/<protocol>-reference/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
PROTOCOL=${PROTOCOL:-h3}
case $PROTOCOL in
# One request at a time per h1 connection, and each vote waits for its commit (~10-20 ms):
# 1,024 keep-alive connections carry 20,000 votes/s; 64 would cap the appliance near 4,000/s.
h1) CONNECTIONS=${CONNECTIONS:-1024} ;;
h3) CONNECTIONS=${CONNECTIONS:-4} ;;
*) echo "http-reference.sh: PROTOCOL is h1 or h3, not '$PROTOCOL'" >&2; exit 2 ;;
esac
RATES=${RATES:-"2000 5000 10000 20000"}
DURATION=${DURATION:-10s}
PARTITIONS=${PARTITIONS:-8}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
LOAD_THREADS=${LOAD_THREADS:-1}
OUT=$ROOT/target/perf/$PROTOCOL-reference
mkdir -p "$OUT"

"$BIN/votes-peer" gen-cert --out "$OUT/cert" --names localhost,127.0.0.1 >/dev/null
CERT=$OUT/cert/cert.pem
KEY=$OUT/cert/key.pem

if [ "$PROTOCOL" = h3 ]; then
  reference=(h3-reference --listen 127.0.0.1:0 --cert "$CERT" --key "$KEY" --threads 1)
  what="tokio + quinn + h3, 1 thread"
else
  reference=(h1-reference --listen 127.0.0.1:0 --threads 1)
  what="hyper on tokio, HTTP/1.1 keep-alive, 1 thread"
fi
taskset -c "$SERVER_CPU" "$BIN/votes-peer" "${reference[@]}" >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER=$!
APPLIANCE=
trap 'kill "$SERVER" $APPLIANCE 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '^listening on ' "$OUT/server.out" 2>/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.err" >&2; exit 1; }
  sleep 0.05
done
ADDR=$(sed -n 's/^listening on //p' "$OUT/server.out")
[ -n "$ADDR" ] || { echo "http-reference.sh: the server did not start" >&2; exit 1; }
# How votes-load reaches a server at an address: h3 over TLS trusting the certificate.
load_target() {
  if [ "$PROTOCOL" = h3 ]; then
    echo --protocol h3 --target "https://$1" --ca-cert "$CERT"
  else
    echo --protocol h1 --target "http://$1"
  fi
}

echo "reference $PROTOCOL server ($what, CPU $SERVER_CPU) on $ADDR;" \
  "votes-load on CPU(s) $LOAD_CPUS, $LOAD_THREADS thread(s), $CONNECTIONS connection(s), $DURATION per rate"
printf '%10s %10s %8s %8s %10s %10s %12s\n' offered achieved 202 errors p50_ms p99_ms cpu_s/1000
for RATE in $RATES; do
  before=$(cpu_ticks "$SERVER")
  # shellcheck disable=SC2046 # load_target prints several words, none with spaces
  taskset -c "$LOAD_CPUS" "$BIN/votes-load" $(load_target "$ADDR") \
    --election perf --options a,b,c --rate "$RATE" --duration "$DURATION" \
    --connections "$CONNECTIONS" --threads "$LOAD_THREADS" --quiet \
    --report "$OUT/load-$RATE.json" >"$OUT/load-$RATE.txt" 2>&1 ||
    { cat "$OUT/load-$RATE.txt" >&2; exit 1; }
  after=$(cpu_ticks "$SERVER")
  python3 - "$OUT/load-$RATE.json" "$RATE" $((after - before)) "$TICK" <<'PY' | tee "$OUT/ref-$RATE.row"
import json, sys
r = json.load(open(sys.argv[1]))
rate, ticks, tick = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = r["by_status"].get("202", 0)
answered = sum(v for k, v in r["by_status"].items() if k != "error")
cpu = ticks / tick / max(answered, 1) * 1000
print(f'{rate:10.0f} {r["achieved_rate"]:10.1f} {ok:8d} {r["by_status"].get("error", 0):8d} '
      f'{r["latency_ms"]["p50"]:10.3f} {r["latency_ms"]["p99"]:10.3f} {cpu:12.4f}')
PY
done
kill "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true

# ---- The appliance, same CPU, same rates ----------------------------------------------------
scripts/services.sh up kafka dynamodb redis >/dev/null
export VOTES_RATE_PER_ADDR=0 VOTES_RATE_PER_PREFIX=0
export VOTES_PREFIX="$PROTOCOL-$(date +%s)-"
"$BIN/votes" init --partitions "$PARTITIONS" >/dev/null
HTTPS=127.0.0.1:18743
"$BIN/votes" serve --cpus "$SERVER_CPU" --http 127.0.0.1:18780 --admin 127.0.0.1:19780 \
  --https "$HTTPS" --tls-cert "$CERT" --tls-key "$KEY" --node-id "$PROTOCOL-perf" >"$OUT/appliance.log" 2>&1 &
APPLIANCE=$!
wait_ready 127.0.0.1:18780
open_election 127.0.0.1:19780 perf
if [ "$PROTOCOL" = h3 ]; then TARGET=$HTTPS; else TARGET=127.0.0.1:18780; fi
echo "appliance (votes serve, 1 reactor on CPU $SERVER_CPU, $PARTITIONS partitions, $PROTOCOL on $TARGET, Kafka commit before each 202)"
printf '%10s %10s %8s %8s %10s %10s %12s\n' offered achieved 202 errors p50_ms p99_ms cpu_s/1000
base=1
secs=${DURATION%s}
for RATE in $RATES; do
  voters=$((RATE * secs + 1000))
  before=$(cpu_ticks "$APPLIANCE")
  # shellcheck disable=SC2046 # as above
  taskset -c "$LOAD_CPUS" "$BIN/votes-load" $(load_target "$TARGET") \
    --election perf --rate "$RATE" --duration "$DURATION" --voters "$voters" --voter-base "$base" \
    --connections "$CONNECTIONS" --threads "$LOAD_THREADS" --quiet \
    --report "$OUT/appliance-$RATE.json" >"$OUT/appliance-$RATE.txt" 2>&1 ||
    { cat "$OUT/appliance-$RATE.txt" >&2; exit 1; }
  after=$(cpu_ticks "$APPLIANCE")
  base=$((base + voters))
  python3 - "$OUT/appliance-$RATE.json" "$RATE" $((after - before)) "$TICK" "$OUT/ref-$RATE.row" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate, ticks, tick = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ref = open(sys.argv[5]).read().split()
ok = r["by_status"].get("202", 0)
answered = sum(v for k, v in r["by_status"].items() if k != "error")
cpu = ticks / tick / max(answered, 1) * 1000
print(f'{rate:10.0f} {r["achieved_rate"]:10.1f} {ok:8d} {r["by_status"].get("error", 0):8d} '
      f'{r["latency_ms"]["p50"]:10.3f} {r["latency_ms"]["p99"]:10.3f} {cpu:12.4f}'
      f'   ratio to reference: 202/s {ok / max(int(ref[2]), 1):.2f}x, p99 {r["latency_ms"]["p99"] / float(ref[5]):.1f}x, CPU/request {cpu / float(ref[6]):.1f}x')
PY
done
