//! What this node knows of each partition, published by the shards' slots and read by
//! `/readyz` and `/metrics` on any core: ownership, readiness, replay and snapshot progress.

use std::sync::atomic::{AtomicU64, Ordering};

use votes_tally::shard::ShardState;

/// Ownership, readiness and replay progress of one partition on this node, shared with
/// `/readyz` and `/metrics` on any core. Each field has one writer at a time: the slot that
/// owns the partition (its core or its replay thread), recognised by its claim epoch.
#[derive(Default)]
pub struct PartitionStatus {
    /// `epoch << 8 | state`: a slot writes only while the epoch is still the one its claim
    /// got, so a slot that is leaving cannot overwrite the state of the one that replaced it.
    state: AtomicU64,
    pub replayed_records: AtomicU64,
    pub replay_offset: AtomicU64,
    pub log_duplicates: AtomicU64,
    /// Offset of the snapshot the last recovery started from (0: the log's beginning).
    pub snapshot_start: AtomicU64,
    /// Offset and size of the newest snapshot this node wrote.
    pub snapshot_offset: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    /// Snapshots recovery skipped as damaged or untrustworthy.
    pub snapshots_skipped: AtomicU64,
}

const NOT_OWNED: u64 = 0;
const RECOVERING: u64 = 1;
const ACTIVE: u64 = 2;
const FENCED: u64 = 3;

impl PartitionStatus {
    /// A new owner on this node: a fresh epoch, recovering.
    pub(super) fn claim(&self) -> u64 {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let epoch = (current >> 8) + 1;
            match self.state.compare_exchange(
                current,
                epoch << 8 | RECOVERING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return epoch,
                Err(now) => current = now,
            }
        }
    }

    /// Sets the state if `epoch` still owns the partition.
    fn set_if(&self, epoch: u64, state: u64) {
        let mut current = self.state.load(Ordering::Acquire);
        while current >> 8 == epoch {
            match self.state.compare_exchange(
                current,
                epoch << 8 | state,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    pub(super) fn set(&self, epoch: u64, state: ShardState) {
        let v = match state {
            ShardState::Recovering => RECOVERING,
            ShardState::Active => ACTIVE,
            ShardState::Fenced => FENCED,
            ShardState::Released => NOT_OWNED,
        };
        self.set_if(epoch, v);
    }

    /// The state of this node's shard of the partition; `None` when no core of this node
    /// owns it.
    pub fn state(&self) -> Option<ShardState> {
        match self.state.load(Ordering::Acquire) & 0xff {
            RECOVERING => Some(ShardState::Recovering),
            ACTIVE => Some(ShardState::Active),
            FENCED => Some(ShardState::Fenced),
            _ => None,
        }
    }
}
