#!/usr/bin/env bash
# The browser test of `make test`: headless Chromium drives the pages that `votes serve` embeds
# (voter page, live results over SSE, admin dashboard) against a real appliance on the local
# services.
#
#   1. Debian's chromium (installed when missing and running as root);
#   2. playwright-core and axe-core from package-lock.json (`npm ci`) when node_modules is
#      missing or stale;
#   3. Kafka, DynamoDB and Redis via scripts/services.sh; only what this run started is stopped
#      afterwards (under CI, the services go in $VOTES_SERVICES_SESSION and CI stops them);
#   4. `votes init`, `votes serve --dev-login` and `votes persist` (the recount that makes a
#      closed election's result official waits for it) under a fresh prefix, on free loopback
#      ports, with fresh secrets, and a TLS listener (HTTP/3 on its UDP side) with a development
#      certificate from `votes dev-cert`; an open election created through the admin API;
#   5. `node --test` of tests/browser/receipt-check.test.mjs (the voter page's receipt check,
#      as pure functions) and tests/browser/vote.test.mjs (the browser).
#
# Uses the binary that `make build` made (never builds); the test fails early when the pages it
# embeds differ from src/serve/web/. BROWSER_WEB_FROM_SOURCE=1 serves the pages from
# src/serve/web/ instead (the browser intercepts /static/… and the pages, keeping the server's
# headers and CSP): for working on the pages without a rebuild, never for CI.
# Exit status: the tests'. Logs and failure screenshots: target/browser/.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/browser
OUT=$ROOT/target/browser
VOTES=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}/debug/votes
SERVICES=$ROOT/scripts/services.sh
READY_TIMEOUT=${BROWSER_READY_TIMEOUT:-120}
# Proof-of-work difficulty of the test election: small, but enough to exercise the worker.
POW=${BROWSER_POW_DIFFICULTY:-8}

log() { printf 'browser-test: %s\n' "$*"; }
die() {
  printf 'browser-test: error: %s\n' "$*" >&2
  exit 1
}

mkdir -p "$OUT"
[[ -x $VOTES ]] || die "$VOTES is not built (run make build)"

# ---- 1. Chromium -----------------------------------------------------------------------------
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [[ -z $CHROMIUM ]]; then
  if [[ $(id -u) == 0 ]]; then
    log "installing Debian's chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } ||
      die "could not install the Debian package chromium"
    CHROMIUM=$(command -v chromium) || die "chromium is still missing after installing it"
  else
    die "chromium is missing: install the Debian package chromium (apt-get install chromium)"
  fi
fi
export CHROMIUM
command -v node >/dev/null || die "node is missing: install the Debian package nodejs"
command -v npm >/dev/null || die "npm is missing: install the Debian package npm"

# ---- 2. playwright-core ----------------------------------------------------------------------
if [[ ! -d $HERE/node_modules || $HERE/package-lock.json -nt $HERE/node_modules ]]; then
  log "npm ci in tests/browser"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$HERE/node_modules"
fi

# ---- Cleanup (set before anything is started) ------------------------------------------------
SERVE_PID=
PERSIST_PID=
OWN_SESSION=
if [[ -n ${VOTES_SERVICES_SESSION:-} ]]; then
  SESSION=$VOTES_SERVICES_SESSION # CI's: it stops them at the end of the whole run
else
  SESSION=$(mktemp -t votes-browser-services.XXXXXX)
  OWN_SESSION=$SESSION
fi

# Stops process $1 (named $2): SIGTERM, then SIGKILL after 10 s.
# shellcheck disable=SC2317 # (reached through the EXIT trap)
stop() {
  local pid=$1 name=$2
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop within 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # (reached through the EXIT trap)
cleanup() {
  local rc=$?
  stop "$PERSIST_PID" 'votes persist'
  stop "$SERVE_PID" 'votes serve'
  if [[ -n $OWN_SESSION ]]; then
    "$SERVICES" down --session-file "$OWN_SESSION" || rc=1
    rm -f "$OWN_SESSION"
  fi
  if [[ $rc == 0 ]]; then log "passed"; else log "FAILED (logs and screenshots in $OUT)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 3. Services -----------------------------------------------------------------------------
"$SERVICES" up --session-file "$SESSION" kafka dynamodb redis

# ---- 4. The appliance ------------------------------------------------------------------------
# Two free loopback ports, both held open until both are known so that they differ. Ephemeral
# ports never collide with the fixed ones of the services (9092-9094, 19092-19094, 8000, 6379).
# A third port for TLS (TCP) and HTTP/3 (UDP): free on both.
read -r HTTP_PORT ADMIN_PORT HTTPS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
while True:
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", t.getsockname()[1]))
        break
    except OSError:
        continue
print(*(s.getsockname()[1] for s in socks), t.getsockname()[1])
')
[[ -n $HTTP_PORT && -n $ADMIN_PORT && -n $HTTPS_PORT ]] || die "could not pick free ports"

# A development certificate for the TLS listener; Chromium trusts it by its key's hash. The
# HTTP/3 origin is 127.0.0.1, not localhost: Chromium tries ::1 first, where nothing listens.
TLS_DIR=$OUT/tls
SPKI=$("$VOTES" dev-cert --out "$TLS_DIR" --names localhost,127.0.0.1)

secret() { head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }
export VOTES_PREFIX VOTES_TOKEN_KEY VOTES_AUDIT_KEY VOTES_ADMIN_TOKEN
VOTES_PREFIX="browser-$(date +%s)-$$-"
VOTES_TOKEN_KEY=$(secret 32)
VOTES_AUDIT_KEY=$(secret 32)
VOTES_ADMIN_TOKEN=$(secret 24)

log "votes init (prefix $VOTES_PREFIX)"
"$VOTES" init --partitions 4

SERVE_LOG=$OUT/serve.log
PUBLIC_URL=http://127.0.0.1:$HTTP_PORT
ADMIN_URL=http://127.0.0.1:$ADMIN_PORT
log "votes serve on $PUBLIC_URL (admin $ADMIN_URL), log $SERVE_LOG"
"$VOTES" serve --roles ingest,results,admin --dev-login --cores 2 \
  --http "127.0.0.1:$HTTP_PORT" --admin "127.0.0.1:$ADMIN_PORT" --node-id browser \
  --https "127.0.0.1:$HTTPS_PORT" --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem" \
  >"$SERVE_LOG" 2>&1 </dev/null &
SERVE_PID=$!

deadline=$((SECONDS + READY_TIMEOUT))
until [[ $(curl -s -o /dev/null -w '%{http_code}' "$PUBLIC_URL/readyz" || true) == 200 ]]; do
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then
    tail -n 40 "$SERVE_LOG" >&2 || true
    SERVE_PID=
    die "votes serve exited before it was ready (log above, full log $SERVE_LOG)"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 40 "$SERVE_LOG" >&2 || true
    die "votes serve was not ready within ${READY_TIMEOUT}s (log above, full log $SERVE_LOG)"
  fi
  sleep 0.5
done
log "votes serve is ready"

# The persister writes every committed vote to DynamoDB: closing the election starts the
# recount, which makes the result official only once the persisters have reached the end of
# the votes log.
PERSIST_LOG=$OUT/persist.log
log "votes persist, log $PERSIST_LOG"
"$VOTES" persist --instance-id browser-persister >"$PERSIST_LOG" 2>&1 </dev/null &
PERSIST_PID=$!

# An admin call that must answer $1; prints the body.
admin_call() {
  local want=$1 method=$2 path=$3 body=${4:-} out code
  out=$(mktemp)
  local args=(-s -o "$out" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $VOTES_ADMIN_TOKEN")
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data "$body")
  code=$(curl "${args[@]}" "$ADMIN_URL$path" || true)
  if [[ $code != "$want" ]]; then
    log "$method $path answered ${code:-nothing}, expected $want: $(cat "$out")" >&2
    rm -f "$out"
    return 1
  fi
  cat "$out"
  rm -f "$out"
}

ELECTION=browser-$(date +%s)-$$
admin_call 201 POST /admin/v1/elections "$(printf '{"id":"%s","title":"Browser test %s","options":[{"id":"aurora","label":"Aurora"},{"id":"borealis","label":"Borealis"},{"id":"cascade","label":"Cascade"}],"pow_difficulty":%d}' "$ELECTION" "$$" "$POW")" >/dev/null
admin_call 200 POST "/admin/v1/elections/$ELECTION/open" >/dev/null
log "election $ELECTION is open (proof-of-work difficulty $POW)"

# ---- 5. The test -----------------------------------------------------------------------------
# Voter ids from the clock: fresh for every run (each id votes once per election anyway).
VOTER=$(($(date +%s%N) / 1000))
WEB_DIR=
[[ ${BROWSER_WEB_FROM_SOURCE:-0} == 1 ]] && WEB_DIR=$ROOT/src/serve/web
kill -0 "$PERSIST_PID" 2>/dev/null || {
  tail -n 40 "$PERSIST_LOG" >&2 || true
  PERSIST_PID=
  die "votes persist exited (log above, full log $PERSIST_LOG)"
}
set +e
VOTES_PUBLIC_URL=$PUBLIC_URL VOTES_ADMIN_URL=$ADMIN_URL VOTES_ELECTION=$ELECTION \
  VOTES_H3_ORIGIN=127.0.0.1:$HTTPS_PORT VOTES_TLS_SPKI=$SPKI \
  VOTES_VOTER=$VOTER VOTES_SERVE_LOG=$SERVE_LOG VOTES_PERSIST_LOG=$PERSIST_LOG VOTES_WEB_DIR=$WEB_DIR \
  node --test --test-concurrency=1 --test-reporter=spec "$HERE/receipt-check.test.mjs" "$HERE/vote.test.mjs"
rc=$?
set -e
exit "$rc"
