//! `votes-core`: the vocabulary every other crate of the appliance speaks.
//!
//! Domain identifiers ([`ids`]), the routing of a voter to its Kafka partition ([`routing`]),
//! the binary vote record stored in the `votes` topic ([`record`]), the names of every external
//! resource derived from one prefix ([`names`]) and the error codes of the public API
//! ([`api_error`]). Nothing here performs I/O, so all of it is unit- and property-tested and
//! fuzzed in isolation.

pub mod api_error;
pub mod ids;
pub mod names;
pub mod record;
pub mod routing;

pub use api_error::ErrorCode;
pub use ids::{ElectionId, IdError, OptionId, VoterId};
pub use names::Names;
pub use record::{RecordError, VoteRecord};
pub use routing::{partition_of, voter_key};
