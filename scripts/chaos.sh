#!/usr/bin/env bash
# `make chaos [RUNS=N] [SEED=S] [DURATION=120s]`: seeded fault-campaign runs (votes-chaos) on a
# 3-broker KRaft cluster (9092-9094, replication 3, min ISR 2), the local DynamoDB engine and
# Redis (dynoxide keeps its tables in a tmpfs file for the run, so it can be stopped and
# started). Each run's history, logs and report stay under target/chaos/<seed>/; exits non-zero on
# any anomaly. The single-node broker shares port 9092: it is stopped first and, when it was up
# before, started again afterwards, as scripts/test-cluster.sh does.
#
# Each node runs in a network namespace of its own, tied by a veth pair to a bridge whose
# address (10.77.0.1) the services listen on for the campaign, so the nemesis can cut a node off
# from the brokers, its peers, the services and the voters (needs root, as ip netns does).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
S=scripts/services.sh
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}
RUNS=${RUNS:-1}
SEED=${SEED:-1}
DURATION=${DURATION:-120s}

cargo build --bin votes -p votes
# The jump-clock fault runs nodes under libfaketime (Debian's package; LD_PRELOAD).
FAKETIME_LIB=$(scripts/libfaketime.sh)
# The harness is light: a debug build, sharing the tests' warm target directory.
cargo build --bin votes-chaos -p votes-perf

single_was_up=0
if $S status kafka >/dev/null 2>&1; then single_was_up=1; fi
dynamodb_was_up=0
if $S status dynamodb >/dev/null 2>&1; then dynamodb_was_up=1; fi
redis_was_up=0
if $S status redis >/dev/null 2>&1; then redis_was_up=1; fi

BRIDGE=votes-chaos
NET_HOST=10.77.0.1
NET_TAG=c$(($$ % 100000))
# What a campaign killed before its cleanup could leaves namespaces and the bridge behind.
for ns in $(ip netns list | awk '/^votes-c[0-9]+-n[0-9]+/ {print $1}'); do ip netns del "$ns" || true; done
ip link del "$BRIDGE" 2>/dev/null || true
# The "stop-dynamodb" fault needs tables that survive a restart of the engine: dynoxide with a
# file on tmpfs for the campaign, the shared in-memory engine again afterwards.
export VOTES_DYNAMODB_DB=/dev/shm/votes-chaos-$$.db
restore() {
  local rc=$?
  # The campaign's services listen on the bridge: stopped before it goes, then the shared ones
  # come back on loopback as they were.
  $S down kafka >/dev/null || rc=1
  $S down redis >/dev/null || rc=1
  $S down dynamodb >/dev/null || rc=1
  rm -f "$VOTES_DYNAMODB_DB"*
  ip link del "$BRIDGE" 2>/dev/null || true
  unset SERVICES_HOST
  if [ "$single_was_up" = 1 ]; then $S up kafka >/dev/null || rc=1; fi
  if [ "$redis_was_up" = 1 ]; then $S up redis >/dev/null || rc=1; fi
  if [ "$dynamodb_was_up" = 1 ]; then VOTES_DYNAMODB_DB= $S up dynamodb >/dev/null || rc=1; fi
  exit "$rc"
}
trap restore EXIT

$S down kafka
$S down dynamodb
$S down redis
ip link add "$BRIDGE" type bridge
ip addr add "$NET_HOST/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
export SERVICES_HOST=$NET_HOST
$S up dynamodb redis
$S up --brokers 3 kafka

"$TARGET/debug/votes-chaos" --votes-bin "$TARGET/debug/votes" --services "$S" \
  --brokers "$NET_HOST:9092,$NET_HOST:9093,$NET_HOST:9094" --dynamodb "http://$NET_HOST:8000" \
  --redis "redis://$NET_HOST:6379" --bridge "$BRIDGE" --host-ip "$NET_HOST" --net-tag "$NET_TAG" \
  --faketime "$FAKETIME_LIB" \
  --seed "$SEED" --runs "$RUNS" --duration "$DURATION" --out "$ROOT/target/chaos"
