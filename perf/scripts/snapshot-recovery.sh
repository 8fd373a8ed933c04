#!/usr/bin/env bash
# Recovery time of `votes serve` from a snapshot plus the log's tail, against a full replay of the
# same log (issue #10). The log is written by the floor peer (`votes-peer floor`), whose records
# and partitioning are the appliance's own, into `{prefix}votes`:
#   1. VOTES votes (VOTERS distinct) are written; serve starts with --snapshot-dir, replays them
#      all, and writes a snapshot of each partition; it is killed (-9);
#   2. TAIL more votes (a second election, new voters) are written: the tail;
#   3. serve restarts with the snapshots: time to ready, records replayed;
#   4. serve restarts without them: time to ready (full replay of VOTES + TAIL).
# Time to ready is from process start to `/readyz` 200 (every shard recovered).
#
#   perf/scripts/snapshot-recovery.sh      env: VOTES=5000000 VOTERS=4500000 TAIL=500000
#                                               PARTITIONS=8 CORES=2 BIN=<release dir>
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
release_bins
env_defaults VOTES=5000000 VOTERS=4500000 TAIL=500000 PARTITIONS=8 CORES=2
scripts/services.sh up kafka dynamodb redis >/dev/null
export VOTES_PREFIX="perf-snap-$(date +%s)-"
OUT=$ROOT/target/perf/snapshot-recovery
SNAPS=$OUT/snapshots
rm -rf "$OUT"; mkdir -p "$SNAPS"
HTTP=127.0.0.1:18780
ADMIN=127.0.0.1:19790

"$BIN/votes" init --partitions "$PARTITIONS" >/dev/null
"$BIN/votes-peer" floor --topic "${VOTES_PREFIX}votes" --partitions "$PARTITIONS" \
  --votes "$VOTES" --voters "$VOTERS" --election perf --out "$OUT/floor-1.json" 2>&1 | tail -1

metric_sum() { curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" "http://$ADMIN/metrics" | awk -v n="$1" 'index($0, n"{") == 1 {s += $NF} END {print s + 0}'; }
# start NAME [serve args...]: starts serve (pid in SERVE), waits for /readyz; seconds to
# ready in READY_S.
SERVE=
READY_S=
start() {
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN/votes" serve --cores "$CORES" --http "$HTTP" --admin "$ADMIN" --node-id snap "$@" >"$OUT/serve-$name.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 1 6000); do
    curl -fsS -o /dev/null "http://$HTTP/readyz" 2>/dev/null && break
    kill -0 "$SERVE" 2>/dev/null || { echo "serve died; see $OUT/serve-$name.log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(date +%s.%N)
  READY_S=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
}
trap '[ -n "$SERVE" ] && kill -9 "$SERVE" 2>/dev/null || true' EXIT

start first --snapshot-dir "$SNAPS" --snapshot-every-s 1; first=$READY_S
# Wait until every partition has a snapshot (the shards are idle: one is enough).
for _ in $(seq 1 600); do
  n=$(curl -fsS -H "Authorization: Bearer $VOTES_ADMIN_TOKEN" "http://$ADMIN/metrics" | awk 'index($0, "votes_snapshot_offset{") == 1 && $NF > 0 {n++} END {print n + 0}')
  [ "$n" -ge "$PARTITIONS" ] && break
  sleep 0.2
done
snap_bytes=$(metric_sum votes_snapshot_bytes)
kill -9 "$SERVE"; wait "$SERVE" 2>/dev/null || true

"$BIN/votes-peer" floor --topic "${VOTES_PREFIX}votes" --partitions "$PARTITIONS" \
  --votes "$TAIL" --voters "$TAIL" --election perf-tail --seed 2 --out "$OUT/floor-2.json" 2>&1 | tail -1

start snapshot --snapshot-dir "$SNAPS" --snapshot-every-s 3600; with_snap=$READY_S
tail_records=$(metric_sum votes_replay_records)
kill -9 "$SERVE"; wait "$SERVE" 2>/dev/null || true
start full; full=$READY_S
full_records=$(metric_sum votes_replay_records)
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
SERVE=

echo "log: $VOTES votes ($VOTERS voters) + $TAIL in the tail, $PARTITIONS partitions, $CORES cores"
echo "first start (full replay of $VOTES): ${first} s to ready; snapshots: $snap_bytes bytes = $(python3 -c "print(f'{$snap_bytes / $VOTERS:.2f}')") B/voter"
echo "snapshot + tail: ${with_snap} s to ready, $tail_records records replayed"
echo "full replay:     ${full} s to ready, $full_records records replayed"
echo "ratio full / snapshot: $(python3 -c "print(f'{$full / $with_snap:.1f}')")x"
