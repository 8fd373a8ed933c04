//! `votes-core`: the vocabulary every other crate of the appliance speaks.
//!
//! Domain identifiers ([`ids`]), the routing of a voter to its Kafka partition ([`routing`]),
//! the binary vote record stored in the `votes` topic ([`record`]), the names of every external
//! resource derived from one prefix ([`names`]), the error codes of the public API
//! ([`api_error`]), voter tokens ([`token`]), the vote request body ([`vote_body`]), receipts
//! ([`receipt`]), a vote between the edge and the log and its outcome ([`vote`]), the election's
//! Merkle tree ([`merkle`]) and the WebSocket frames of the live results ([`ws`]). Nothing here performs I/O, so all
//! of it is unit- and property-tested and fuzzed in isolation.

pub mod api_error;
pub mod clock;
pub mod election;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_check;
pub mod group;
pub mod hash;
pub mod ids;
mod json;
pub mod merkle;
pub mod names;
pub mod pow;
pub mod proxy_header;
pub mod receipt;
pub mod record;
pub mod routing;
pub mod snapshot;
pub mod token;
pub mod vote;
pub mod vote_body;
mod wire;
pub mod ws;

pub use api_error::ErrorCode;
pub use election::{Election, ElectionOption, ElectionState};
pub use ids::{ElectionId, IdError, OptionId, VoterId};
pub use merkle::MerkleBuilder;
pub use names::Names;
pub use receipt::{Leaf, LeafError, pseudonym};
pub use record::{RecordError, VoteRecord};
pub use routing::{VOTE_BUCKETS, bucket_of, partition_of, vote_item_pk, voter_key};
pub use token::{TokenError, TokenKey, TokenKeys};
pub use vote::{OwnerVerdict, VoteIntent, VoteOutcome};
pub use vote_body::{BodyError, PowSolution, VoteBody};
