#!/usr/bin/env bash
# `make demo`: the appliance end to end on the local services. Creates the topics and tables of
# the `demo-` prefix, (re)starts `votes serve` in the background with every role and the
# development sign-in, opens a demo election, sends a short burst of votes with the load
# generator, and prints the URLs of the voter page, the live results page and the dashboard.
#
# The keys below are for this local demo only; a real deployment sets its own secrets.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# The optimized build that ships (Cargo.toml's `ship` profile): a debug build answers a
# burst of a few hundred votes/s with a p99 near a second, which is not this product.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
BIN=$CARGO_TARGET_DIR/ship
RUN=$ROOT/target/demo
mkdir -p "$RUN"
echo "demo: building votes and votes-load (optimized; the first build takes several minutes)"
cargo build --profile ship -p votes --bin votes -p votes-perf --bin votes-load

export VOTES_PREFIX=demo-
export VOTES_TOKEN_KEY=demo-token-key-for-local-use-only-0001
export VOTES_AUDIT_KEY=demo-audit-key-for-local-use-only-0001
export VOTES_ADMIN_TOKEN=demo-admin-token
HTTP=127.0.0.1:8080
ADMIN=127.0.0.1:9090
HTTPS=127.0.0.1:8443

"$ROOT/scripts/demo-stop.sh" >/dev/null 2>&1 || true
"$BIN/votes" init --partitions 8
# TLS (HTTP/1.1, h2) and HTTP/3 on 8443: a development certificate unless one is given.
TLS_CERT=${VOTES_TLS_CERT:-}
TLS_KEY=${VOTES_TLS_KEY:-}
SPKI=
if [ -z "$TLS_CERT" ] || [ -z "$TLS_KEY" ]; then
  SPKI=$("$BIN/votes" dev-cert --out "$RUN/tls" --names localhost,127.0.0.1)
  TLS_CERT=$RUN/tls/cert.pem
  TLS_KEY=$RUN/tls/key.pem
fi

setsid nohup "$BIN/votes" serve --roles ingest,results,admin --dev-login --cores 2 \
  --http "$HTTP" --admin "$ADMIN" --node-id demo-node \
  --https "$HTTPS" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY" \
  >"$RUN/serve.log" 2>&1 < /dev/null &
echo $! >"$RUN/serve.pid"
# The persister writes every committed vote to DynamoDB; closing an election on the dashboard
# then makes its result official (the recount needs the persister to have caught up).
setsid nohup "$BIN/votes" persist --instance-id demo-persister --metrics 127.0.0.1:9191 \
  >"$RUN/persist.log" 2>&1 < /dev/null &
echo $! >"$RUN/persist.pid"
for _ in $(seq 1 120); do
  if curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$RUN/serve.pid")" 2>/dev/null; then
    echo "demo: votes serve exited:" >&2; tail -20 "$RUN/serve.log" >&2; exit 1
  fi
  sleep 0.5
done
curl -fsS "http://$HTTP/readyz" >/dev/null || { echo "demo: votes serve is not ready" >&2; tail -20 "$RUN/serve.log" >&2; exit 1; }

auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
# A fresh election per run: one from an earlier run may be closed or final already.
E=song-$(date +%m%d-%H%M%S)
curl -sS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections" \
  -d '{"id":"'"$E"'","title":"Song of the night","options":[{"id":"aurora","label":"Aurora"},{"id":"borealis","label":"Borealis"},{"id":"cascade","label":"Cascade"}]}'
curl -sS -o /dev/null "${auth[@]}" -X POST "http://$ADMIN/admin/v1/elections/$E/open"

# Open loop at a fixed rate over enough keep-alive connections that the client never waits for
# a free one (a vote's answer waits for its commit: ~10-40 ms here).
echo "demo: a burst of votes (5,000 requests over 5 s, 10% of them a voter's second vote)"
"$BIN/votes-load" --target "http://$HTTP" --election "$E" --rate 1000 --duration 5s --voters 4500 \
  --voter-base "$(date +%s)000" --dup-ratio 0.1 --connections 256 --report "$RUN/load.json" >"$RUN/load.out"
sleep 1.2 # the cores publish their figures once a second
# What a newcomer should see: the rate answered, how fast, and how many votes each Kafka
# transaction carried (the appliance's whole point: few, large, paced transactions).
curl -sS "${auth[@]}" "http://$ADMIN/admin/v1/stats" >"$RUN/stats.json"
python3 - "$RUN/load.json" "$RUN/stats.json" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
stats = json.load(open(sys.argv[2]))
lat, by = load["latency_ms"], load["by_status"]
other = sum(v for k, v in by.items() if k not in ("202", "409"))
print(f"demo: {load['achieved_rate']:.0f} votes/s answered: {by.get('202', 0)} accepted (202), "
      f"{by.get('409', 0)} second votes refused (409), {other} other")
print(f"      answer latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms (from each request's intended send)")
commit = stats.get("commit_latency_ms", {})
print(f"      {stats.get('batch_size_mean', 0):.1f} votes per Kafka transaction; "
      f"commit p50 {commit.get('p50', 0):.1f} ms, p99 {commit.get('p99', 0):.1f} ms")
PY

echo
echo "Running: votes serve (pid $(cat "$RUN/serve.pid")), log $RUN/serve.log"
echo "         votes persist (pid $(cat "$RUN/persist.pid")), log $RUN/persist.log, metrics http://127.0.0.1:9191/metrics"
echo "  voter page:    http://$HTTP/            (development sign-in: any voter id)"
echo "  over HTTP/3:   https://$HTTPS/   (TLS over TCP advertises it with Alt-Svc)"
if [ -n "$SPKI" ]; then
  echo "                 chromium --origin-to-force-quic-on=$HTTPS --ignore-certificate-errors-spki-list=$SPKI https://$HTTPS/"
fi
echo "                 votes-load --protocol h3 --target https://$HTTPS --ca-cert $TLS_CERT --election $E"
echo "  live results:  http://$HTTP/results/$E"
echo "  dashboard:     http://$ADMIN/admin#token=$VOTES_ADMIN_TOKEN"
echo "  results API:   http://$HTTP/v1/elections/$E/results   (stream: …/results/stream)"
echo "  voter API:  http://$HTTP/v1/elections/$E"
echo "  vote:       TOKEN=\$(VOTES_TOKEN_KEY=$VOTES_TOKEN_KEY $BIN/votes token --voter 7)"
echo "              curl -H \"Authorization: Bearer \$TOKEN\" -H 'Content-Type: application/json' \\"
echo "                   -d '{\"option\":\"aurora\"}' http://$HTTP/v1/elections/$E/votes"
echo "  admin API:  curl -H 'Authorization: Bearer $VOTES_ADMIN_TOKEN' http://$ADMIN/admin/v1/elections"
echo "  metrics:    curl -H 'Authorization: Bearer $VOTES_ADMIN_TOKEN' http://$ADMIN/metrics"
echo "  services:   scripts/services.sh status   (logs under target/services/)"
echo "Live totals now:"
curl -sS "${auth[@]}" "http://$ADMIN/admin/v1/elections" | python3 -c 'import json,sys; [print("  ", e["id"], e["state"], e["live"]) for e in json.load(sys.stdin)]'
echo "Close the election on the dashboard (or POST /admin/v1/elections/$E/close): the recount"
echo "compares Kafka, DynamoDB and Redis and makes the result official; or run"
echo "  VOTES_PREFIX=demo- $BIN/votes recount --election $E"
echo "Stop: make demo-stop (the appliance) and make services-down (Kafka, DynamoDB, Redis)"
