//! The appliance as a library (ARCHITECTURE.md has the map). Each module is one role or one
//! edge of the `votes` binary: `cli` parses the command line and runs a role; `serve` is the
//! node (voter API, admin API, the vote path, per-core wiring, start-up and shutdown, metrics);
//! `persist`, `recount`, `reprocess`, `init` and `audit` are the other commands. The pure parts
//! (the vote, the shard, the commit engine) live in the workspace crates below it, so that a
//! test of them builds no I/O.

pub mod audit;
pub mod cli;
pub mod config;
pub mod init;
mod keys;
pub mod persist;
mod prom;
pub mod recount;
pub mod reprocess;
mod secrets;
pub mod serve;
mod stop;

pub use cli::{Cli, Common};
