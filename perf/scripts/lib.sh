# Sourced by the perf scripts: the project's root as the working directory (ROOT), the warm
# target directory outside the clone, target/perf for the reports, the development keys their
# local appliance runs with, CPU time read from /proc (utime + stime, in clock ticks of TICK per
# second), and the release binaries.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
mkdir -p "$ROOT/target/perf"
export VOTES_TOKEN_KEY=perf-token-key-0123456789abcdef-0001
export VOTES_AUDIT_KEY=perf-audit-key-0123456789abcdef-0001
export VOTES_FORWARD_KEY=perf-forward-key-0123456789abcdef-001
export VOTES_ADMIN_TOKEN=perf-admin-token
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
kafka_pids() { pgrep -f 'kafka\.Kafka' | tr '\n' ' '; }
# Waits up to 30 s until the node whose public listener is $1 (host:port) answers /readyz, or
# fails saying so.
wait_ready() {
  local _
  for _ in $(seq 1 150); do
    curl -fsS "http://$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$(basename "$0"): no /readyz from $1 within 30 s" >&2
  return 1
}
# Creates election $2 through the admin listener $1 (host:port) and opens it. Its options are
# a, b and c unless $3 gives the fields after its id and title (e.g. '"options":[...]').
open_election() {
  local admin=$1 id=$2
  local fields=${3:-'"options":[{"id":"a","label":"A"},{"id":"b","label":"B"},{"id":"c","label":"C"}]'}
  local auth=(-H "Authorization: Bearer $VOTES_ADMIN_TOKEN" -H 'Content-Type: application/json')
  curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$admin/admin/v1/elections" \
    -d "{\"id\":\"$id\",\"title\":\"$id\",$fields}"
  curl -fsS -o /dev/null "${auth[@]}" -X POST "http://$admin/admin/v1/elections/$id/open"
}
# Gives each NAME of the NAME=VALUE arguments its value from the environment, or VALUE when that
# is unset or empty (as NAME=${NAME:-VALUE} does): a script's settings and their defaults in one
# list, as its header lists them.
env_defaults() {
  local setting name
  for setting in "$@"; do
    name=${setting%%=*}
    [ -n "${!name:-}" ] || printf -v "$name" '%s' "${setting#*=}"
  done
}
# Sets BIN to the directory of the release binaries: as given, or built here first into
# $CARGO_TARGET_DIR (what the arguments name to cargo; by default votes and the perf tools).
release_bins() {
  if [ -z "${BIN:-}" ]; then
    [ $# -gt 0 ] || set -- -p votes -p votes-perf --bins
    cargo build --release --quiet "$@"
    BIN=$CARGO_TARGET_DIR/release
  fi
}
