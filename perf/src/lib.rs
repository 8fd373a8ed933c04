//! `votes-perf`: the harness performance engineers drive (DESIGN §4.1, §6).
//!
//! [`report`] is the JSON report every load run writes, built from HDR histograms of latencies
//! measured from each request's intended send time.

pub mod report;
