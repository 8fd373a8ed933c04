#!/usr/bin/env bash
# The 3-broker check of `make test`: `scripts/services.sh up --brokers 3` gives a KRaft cluster
# (9092-9094, replication 3, min ISR 2) on which `votes init --replication-factor 3` creates
# fully replicated topics, and on which the transaction tests (commit, abort, fencing) pass.
#
# The single-node broker shares port 9092, so it is stopped first and, when it was up before,
# started again afterwards: the services are left as they were found.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
S=scripts/services.sh
VOTES=${CARGO_TARGET_DIR:-$HOME/.cache/votes-target}/debug/votes
BROKERS=127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094
[ -x "$VOTES" ] || { echo "test-cluster: $VOTES is not built (run make build)" >&2; exit 1; }

single_was_up=0
if $S status kafka >/dev/null 2>&1; then single_was_up=1; fi
restore() {
  local rc=$?
  $S down kafka >/dev/null || rc=1
  if [ "$single_was_up" = 1 ]; then $S up kafka >/dev/null || rc=1; fi
  if [ "$rc" = 0 ]; then echo "test-cluster: passed"; else echo "test-cluster: FAILED" >&2; fi
  exit "$rc"
}
trap restore EXIT

$S down kafka
$S up dynamodb
$S up --brokers 3 kafka

prefix="cluster-$$-"
VOTES_PREFIX=$prefix "$VOTES" init --partitions 3 --replication-factor 3 --kafka-brokers "$BROKERS"

describe=$($S kafka-topics --describe --topic "${prefix}votes")
echo "$describe"
partitions=$(grep -c 'Partition: ' <<<"$describe" || true)
full=$(grep -cE 'Replicas: [0-9]+,[0-9]+,[0-9]+[[:space:]]+Isr: [0-9]+,[0-9]+,[0-9]+' <<<"$describe" || true)
if [ "$partitions" != 3 ] || [ "$full" != 3 ]; then
  echo "test-cluster: expected 3 partitions with 3 replicas all in sync, got $full of $partitions" >&2
  exit 1
fi
grep -q 'min.insync.replicas=2' <<<"$describe" || {
  echo "test-cluster: ${prefix}votes lacks min.insync.replicas=2" >&2
  exit 1
}

# Transactions on the replicated cluster: the same tests as on the single node.
VOTES_TEST_KAFKA_BROKERS=$BROKERS VOTES_TEST_REPLICATION=3 \
  cargo test --quiet --test kafka_transactions

# The serve group across a kill -9 of its coordinator, with a 2 s group session (shorter than
# the brokers' failover): every partition is served again (tests/group_failover.rs).
VOTES_TEST_KAFKA_BROKERS=$BROKERS VOTES_TEST_REPLICATION=3 \
  cargo test --quiet --test group_failover -- --ignored
