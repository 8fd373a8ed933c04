//! `votes-net`: the appliance's listeners. Each reactor core accepts connections, parses and
//! authenticates requests and routes each vote to the core owning its partition (DESIGN §1).
//!
//! It starts with the one thing every listener shares: the JSON error body of DESIGN §4.2.

pub mod error_body;

pub use error_body::error_body;
