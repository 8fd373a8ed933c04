//! `votes-perf`: the harness performance engineers drive (docs/design.md §4.1, §6).
//!
//! [`report`] is the JSON report every load run writes, built from HDR histograms of latencies
//! measured from each request's intended send time. [`load`] is the open-loop run behind the
//! `votes-load` binary: its [`schedule`] (constant rate or a TV-style ramp), request [`mix`]
//! (fresh, duplicate and malformed votes), voter [`tokens`] and HTTP/1.1, h2 (h2c or TLS) or
//! HTTP/3 [`client`].
//! [`subscribe`] is the live-results scale run behind `votes-sse`: many subscribers (SSE over
//! h1, h2 or h3, or WebSocket, plain or TLS) read by the small incremental readers of [`sse`]
//! and [`ws`], the delay from a vote's commit to each
//! subscriber, and the server's memory per subscriber ([`sys`]).

pub mod attack;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod duration;
pub mod election;
pub mod flow;
pub mod load;
pub mod mix;
pub mod peers;
pub mod report;
pub mod schedule;
pub mod sse;
pub mod subscribe;
pub mod sys;
pub mod tokens;
pub mod ws;

/// Makes mimalloc the allocator of the binary that invokes it at its top level, as the
/// appliance's own binary does (`src/main.rs`), so a harness binary allocates as what it
/// measures. Every binary of this crate invokes it; a macro and not a `#[global_allocator]` here
/// because a library must not choose the allocator of whoever links it (the root package's
/// tests link this one).
#[macro_export]
macro_rules! mimalloc_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: ::mimalloc::MiMalloc = ::mimalloc::MiMalloc;
    };
}
