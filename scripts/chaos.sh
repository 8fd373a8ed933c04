#!/usr/bin/env bash
# `make chaos [RUNS=N] [SEED=S] [DURATION=120s]`: seeded fault-campaign runs (votes-chaos) on a
# 3-broker KRaft cluster (9092-9094, replication 3, min ISR 2), the local DynamoDB engine and
# Redis (dynoxide keeps its tables in a tmpfs file for the run, so it can be stopped and
# started). Each run's history, logs and report stay under target/chaos/<seed>/; exits non-zero on
# any anomaly. The single-node broker shares port 9092: it is stopped first and, when it was up
# before, started again afterwards, as scripts/test-cluster.sh does.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
S=scripts/services.sh
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
RUNS=${RUNS:-1}
SEED=${SEED:-1}
DURATION=${DURATION:-120s}

cargo build --bin votes -p votes
# The harness is light: a debug build, sharing the tests' warm target directory.
cargo build --bin votes-chaos -p votes-perf

single_was_up=0
if $S status kafka >/dev/null 2>&1; then single_was_up=1; fi
dynamodb_was_up=0
if $S status dynamodb >/dev/null 2>&1; then dynamodb_was_up=1; fi
# The "stop-dynamodb" fault needs tables that survive a restart of the engine: dynoxide with a
# file on tmpfs for the campaign, the shared in-memory engine again afterwards.
export VOTES_DYNAMODB_DB=/dev/shm/votes-chaos-$$.db
restore() {
  local rc=$?
  $S down kafka >/dev/null || rc=1
  if [ "$single_was_up" = 1 ]; then $S up kafka >/dev/null || rc=1; fi
  $S up redis >/dev/null || rc=1
  $S down dynamodb >/dev/null || rc=1
  rm -f "$VOTES_DYNAMODB_DB"*
  if [ "$dynamodb_was_up" = 1 ]; then VOTES_DYNAMODB_DB= $S up dynamodb >/dev/null || rc=1; fi
  exit "$rc"
}
trap restore EXIT

$S down kafka
$S down dynamodb
$S up dynamodb redis
$S up --brokers 3 kafka

"$TARGET/debug/votes-chaos" --votes-bin "$TARGET/debug/votes" --services "$S" \
  --seed "$SEED" --runs "$RUNS" --duration "$DURATION" --out "$ROOT/target/chaos"
