//! `votes-shard`: the sans-IO core of the appliance.
//!
//! [`shard`] is one partition's state machine (dedup against the committed voter set, tallies,
//! the open batch, close markers, snapshots); [`engine`] is a core's commit engine over its
//! shards (ownership, recovery, pacing, one transaction at a time, every outcome); [`sim`]
//! drives cores × partitions × nodes over a simulated log and checks the invariants after every
//! step. Events in, commands out: the glommio driver (`src/serve/shards.rs`) and the committer
//! thread (`votes_tally::committer`) carry the commands out against Kafka.

pub mod engine;
pub mod shard;
pub mod sim;
