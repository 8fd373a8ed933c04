//! Operational figures (docs/design.md §4.3 `/metrics`): votes by outcome code, batch sizes, commit
//! latency quantiles from HDR histograms, shard states and replay progress.
//!
//! Each core counts in its own `CoreMetrics` (no sharing on the hot path) and copies a snapshot
//! into its slot of [`NodeMetrics`] once a second; `/metrics` merges the slots.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use votes_core::{ElectionId, OptionId};
use votes_net::{HttpStats, ListenerKind};
use votes_tally::engine::TxnOutcome;
use votes_tally::shard::ShardState;

use super::status::PartitionStatus;
use crate::prom::{Exposition, Kind};

/// Commit latencies in microseconds, up to a minute.
const LATENCY_MAX_US: u64 = 60_000_000;

/// The `le` bounds of the latency histograms, in microseconds: dense around the 20 ms ack
/// target, so `histogram_quantile` over them answers "is p99 under target" precisely.
const LATENCY_BOUNDS_US: [u64; 16] = [
    1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// The `le` bounds of the votes-per-transaction histogram.
const BATCH_BOUNDS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000,
];

/// The listeners whose answers are counted, in the order of [`Counters::responses`].
const LISTENERS: [&str; 2] = ["public", "admin"];

/// Status classes by their first digit: `http::StatusCode` holds 100 to 999, so the class
/// indexes 1 to 9 (0 stays empty) and no status is ever out of range or folded into another.
const STATUS_CLASSES: usize = 10;

/// The `class` label of each index of a listener's row.
const CLASS_LABELS: [&str; STATUS_CLASSES] = [
    "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

#[derive(Clone)]
pub struct Counters {
    /// Answers the app gave, by listener (`LISTENERS`) and status class (the hundreds digit).
    /// A fixed array: counting one is an index increment, no allocation or formatting.
    pub responses: [[u64; STATUS_CLASSES]; LISTENERS.len()],
    /// Vote requests answered, by the code of the answer (`accepted` for 202).
    pub votes: BTreeMap<&'static str, u64>,
    pub batches: BTreeMap<&'static str, u64>,
    pub batch_size: Histogram<u64>,
    pub commit_latency_us: Histogram<u64>,
    /// Node-to-node forwarding, by figure (see `votes_net::forward::ForwardStats`).
    pub forward: BTreeMap<&'static str, u64>,
    /// Time from a vote's hand-off to its shard (on this node, or forwarded to the owning
    /// node) to the shard's answer, in microseconds: the cost of the extra hop is the
    /// difference between the two.
    pub answer_local_us: Histogram<u64>,
    pub answer_forwarded_us: Histogram<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            responses: [[0; STATUS_CLASSES]; LISTENERS.len()],
            votes: BTreeMap::new(),
            batches: BTreeMap::new(),
            batch_size: Histogram::new_with_bounds(1, 1 << 20, 2).expect("static bounds"),
            commit_latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("static bounds"),
            forward: BTreeMap::new(),
            answer_local_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("static bounds"),
            answer_forwarded_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("static bounds"),
        }
    }
}

impl Counters {
    fn merge(&mut self, other: &Counters) {
        for (mine, theirs) in self.responses.iter_mut().zip(&other.responses) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        for (k, v) in &other.votes {
            *self.votes.entry(k).or_default() += v;
        }
        for (k, v) in &other.batches {
            *self.batches.entry(k).or_default() += v;
        }
        self.batch_size.add(&other.batch_size).expect("same bounds");
        self.commit_latency_us
            .add(&other.commit_latency_us)
            .expect("same bounds");
        for (k, v) in &other.forward {
            *self.forward.entry(k).or_default() += v;
        }
        self.answer_local_us
            .add(&other.answer_local_us)
            .expect("same bounds");
        self.answer_forwarded_us
            .add(&other.answer_forwarded_us)
            .expect("same bounds");
    }
}

/// One core's counters; only that core touches them.
#[derive(Default)]
pub struct CoreMetrics {
    counters: RefCell<Counters>,
}

impl CoreMetrics {
    /// One answer of the app on `listener`, counted by its status class. Called for every
    /// request (the hot path): a borrow of this core's own counters and one increment.
    pub fn responded(&self, listener: ListenerKind, status: u16) {
        let listener = match listener {
            ListenerKind::Public => 0,
            ListenerKind::Admin => 1,
            // Not HTTP: nothing is answered there.
            ListenerKind::Internal => return,
        };
        let class = usize::from(status / 100).min(STATUS_CLASSES - 1);
        self.counters.borrow_mut().responses[listener][class] += 1;
    }

    pub fn vote(&self, outcome: &'static str) {
        *self.counters.borrow_mut().votes.entry(outcome).or_default() += 1;
    }

    /// One transaction of the core: how many votes it carried, how long it took, how it ended.
    pub fn commit(&self, size: usize, latency: Duration, outcome: &TxnOutcome) {
        let mut c = self.counters.borrow_mut();
        let name = match outcome {
            TxnOutcome::Committed { .. } => "committed",
            TxnOutcome::Aborted => "aborted",
            TxnOutcome::Fenced => "fenced",
            TxnOutcome::Unknown => "unknown",
        };
        *c.batches.entry(name).or_default() += 1;
        c.batch_size.saturating_record(size as u64);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_US);
        c.commit_latency_us.saturating_record(us);
    }

    pub fn snapshot(&self) -> Counters {
        self.counters.borrow().clone()
    }

    /// How long the shard's answer to one vote took, by route.
    pub fn answered(&self, forwarded: bool, took: Duration) {
        let us = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_US);
        let mut c = self.counters.borrow_mut();
        let h = if forwarded {
            &mut c.answer_forwarded_us
        } else {
            &mut c.answer_local_us
        };
        h.saturating_record(us);
    }

    /// Copies the forwarder's counters into this core's figures.
    pub fn set_forward(&self, f: &votes_net::forward::ForwardStats) {
        let mut c = self.counters.borrow_mut();
        for (name, v) in [
            ("sent", f.sent.get()),
            ("answered", f.answered.get()),
            ("refused", f.refused.get()),
            ("broken", f.broken.get()),
            ("writes", f.writes.get()),
            ("connects", f.connects.get()),
            ("connect_failures", f.connect_failures.get()),
            ("received", f.received.get()),
            ("rejected_links", f.rejected_links.get()),
            ("refused_sources", f.refused_sources.get()),
            ("refused_frames", f.refused_frames.get()),
            ("bad_answers", f.bad_answers.get()),
            ("held", f.held.get()),
            ("held_refused", f.held_refused.get()),
            ("hold_full", f.hold_full.get()),
        ] {
            c.forward.insert(name, v);
        }
    }
}

/// The node's view for `/metrics` and `/readyz`: one snapshot slot per core (written once a
/// second by its core) and the status of every partition.
pub struct NodeMetrics {
    pub cores: Vec<Mutex<Counters>>,
    /// Each core's shards' absolute tallies, as of its last snapshot.
    pub tallies: Vec<Mutex<Vec<TallyRow>>>,
    pub partitions: Vec<Arc<PartitionStatus>>,
    /// Open SSE subscriptions of each core, as of its last snapshot.
    sse: Vec<AtomicU64>,
    /// Each core's connection counters, as of its last snapshot.
    http: Vec<Mutex<HttpStats>>,
}

/// (partition, election, counts by option, offset they reflect).
pub type TallyRow = (u32, ElectionId, Vec<(OptionId, u64)>, u64);

impl NodeMetrics {
    pub fn new(cores: usize, partitions: u32) -> Arc<Self> {
        Arc::new(Self {
            cores: (0..cores)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            tallies: (0..cores).map(|_| Mutex::new(Vec::new())).collect(),
            partitions: (0..partitions)
                .map(|_| Arc::new(PartitionStatus::default()))
                .collect(),
            sse: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            http: (0..cores)
                .map(|_| Mutex::new(HttpStats::default()))
                .collect(),
        })
    }

    pub fn set_http(&self, core: usize, stats: HttpStats) {
        *self.http[core].lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    pub fn set_sse_subscribers(&self, core: usize, n: usize) {
        self.sse[core].store(n as u64, Ordering::Relaxed);
    }

    pub fn sse_subscribers(&self) -> u64 {
        self.sse.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    pub fn publish(&self, core: usize, counters: Counters, tallies: Vec<TallyRow>) {
        *self.cores[core].lock().unwrap_or_else(|p| p.into_inner()) = counters;
        *self.tallies[core].lock().unwrap_or_else(|p| p.into_inner()) = tallies;
    }

    /// Live totals per election and option, summed over every partition of the node.
    pub fn election_totals(&self) -> HashMap<ElectionId, BTreeMap<String, u64>> {
        let mut out: HashMap<ElectionId, BTreeMap<String, u64>> = HashMap::new();
        for slot in &self.tallies {
            for (_, election, counts, _) in slot.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let e = out.entry(election.clone()).or_default();
                for (option, n) in counts {
                    *e.entry(option.to_string()).or_default() += n;
                }
            }
        }
        out
    }

    /// Partitions a core of this node owns now.
    pub fn owned_partitions(&self) -> Vec<u32> {
        (0..self.partitions.len())
            .filter(|p| self.partitions[*p].state().is_some())
            .map(|p| u32::try_from(p).expect("partition count fits u32"))
            .collect()
    }

    pub fn merged(&self) -> Counters {
        let mut all = Counters::default();
        for slot in &self.cores {
            all.merge(&slot.lock().unwrap_or_else(|p| p.into_inner()));
        }
        all
    }

    /// The node's families of the Prometheus page. Long because it is the catalogue itself,
    /// one entry per family with its help text: a new metric is one more entry here.
    pub fn render(&self, page: &mut Exposition) {
        let c = self.merged();
        let mut f = page.family(
            "votes_http_responses_total",
            Kind::Counter,
            "Answers the app gave, by listener and status class; every route is counted. Not counted: requests whose handler panicked (answered 503, see votes_http_handler_panics_total) and connections the connection layer refused or closed before a request reached the app.",
        );
        for (listener, classes) in LISTENERS.iter().zip(&c.responses) {
            for (digit, (class, n)) in CLASS_LABELS.iter().zip(classes).enumerate() {
                // The classes HTTP defines are always shown, so rates over them exist from
                // the start; any other only once answered.
                if (1..=5).contains(&digit) || *n > 0 {
                    f.sample(&[("listener", listener), ("class", class)], n);
                }
            }
        }
        let mut f = page.family(
            "votes_votes_total",
            Kind::Counter,
            "Vote requests answered, by outcome code.",
        );
        for (outcome, n) in &c.votes {
            f.sample(&[("outcome", outcome)], n);
        }
        let mut f = page.family(
            "votes_batches_total",
            Kind::Counter,
            "Kafka transactions, by outcome.",
        );
        for (outcome, n) in &c.batches {
            f.sample(&[("outcome", outcome)], n);
        }
        page.family(
            "votes_commit_latency_seconds",
            Kind::Histogram,
            "Time to commit one batch's transaction.",
        )
        .histogram(&[], &c.commit_latency_us, &LATENCY_BOUNDS_US, 1e6);
        page.family(
            "votes_batch_size",
            Kind::Histogram,
            "Votes per committed transaction.",
        )
        .histogram(&[], &c.batch_size, &BATCH_BOUNDS, 1.0);
        page.single(
            "votes_batch_size_mean",
            Kind::Gauge,
            "Votes per committed transaction, averaged since the start.",
            format_args!("{:.1}", c.batch_size.mean()),
        );
        type Field = fn(&PartitionStatus) -> u64;
        let per_partition: [(&str, &str, Field); 10] = [
            (
                "votes_shard_ready",
                "Whether the shard of a partition accepts votes (1) or not.",
                |s| u64::from(s.state() == Some(ShardState::Active)),
            ),
            (
                "votes_shard_fenced",
                "Whether a newer owner fenced the shard.",
                |s| u64::from(s.state() == Some(ShardState::Fenced)),
            ),
            (
                "votes_partition_owned",
                "Whether a core of this node owns the partition (the serve group assigned it).",
                |s| u64::from(s.state().is_some()),
            ),
            (
                "votes_replay_records",
                "Records replayed by the last recovery of the shard.",
                |s| s.replayed_records.load(Ordering::Relaxed),
            ),
            (
                "votes_replay_offset",
                "Offset the shard's replay reached.",
                |s| s.replay_offset.load(Ordering::Relaxed),
            ),
            (
                "votes_log_duplicates",
                "Committed records of a voter who had already voted (never counted).",
                |s| s.log_duplicates.load(Ordering::Relaxed),
            ),
            (
                "votes_snapshot_start_offset",
                "Offset of the snapshot the shard's last recovery started from (0: the log's beginning).",
                |s| s.snapshot_start.load(Ordering::Relaxed),
            ),
            (
                "votes_snapshot_offset",
                "Offset the newest snapshot this node wrote reflects.",
                |s| s.snapshot_offset.load(Ordering::Relaxed),
            ),
            (
                "votes_snapshot_bytes",
                "Size of the newest snapshot this node wrote.",
                |s| s.snapshot_bytes.load(Ordering::Relaxed),
            ),
            (
                "votes_snapshots_skipped",
                "Snapshots recovery skipped as damaged or untrustworthy.",
                |s| s.snapshots_skipped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, field) in per_partition {
            let mut f = page.family(name, Kind::Gauge, help);
            for (p, s) in self.partitions.iter().enumerate() {
                f.sample(&[("partition", &p)], field(s));
            }
        }
        let mut f = page.family(
            "votes_vote_answer_seconds",
            Kind::Histogram,
            "From a vote's hand-off to its shard to the shard's answer, by route: on this node (local) or through the owning node (forwarded).",
        );
        for (route, h) in [
            ("local", &c.answer_local_us),
            ("forwarded", &c.answer_forwarded_us),
        ] {
            f.histogram(&[("route", &route)], h, &LATENCY_BOUNDS_US, 1e6);
        }
        let mut f = page.family(
            "votes_forward_total",
            Kind::Counter,
            "Node-to-node forwarding: votes sent, answers received, refusals, broken links, writes (sent/writes is the batching), connections, votes received from peers; links refused in their handshake, connections from outside the fleet map, frames refused (forged, replayed, reflected, modified), answers that match no vote sent; votes received for an election this node did not know open yet and held for its view, those refused when it still did not, and those refused because the core held its maximum.",
        );
        for (what, n) in &c.forward {
            f.sample(&[("what", what)], n);
        }
        let mut f = page.family(
            "votes_sse_subscribers",
            Kind::Gauge,
            "Open results streams (SSE and WebSocket), by core.",
        );
        for (core, n) in self.sse.iter().enumerate() {
            f.sample(&[("core", &core)], n.load(Ordering::Relaxed));
        }
        self.render_http(page);
    }

    /// The connection layer of every core: what the edge limits are doing. Long for the same
    /// reason as [`Self::render`]: one entry per family.
    fn render_http(&self, page: &mut Exposition) {
        let stats: Vec<HttpStats> = self
            .http
            .iter()
            .map(|s| *s.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        type Field = fn(&HttpStats) -> u64;
        let figures: [(&str, Kind, &str, Field); 17] = [
            (
                "votes_http_open_connections",
                Kind::Gauge,
                "Open connections.",
                |s| s.open_connections as u64,
            ),
            (
                "votes_http_requests_in_flight",
                Kind::Gauge,
                "Requests being answered.",
                |s| s.requests_in_flight as u64,
            ),
            (
                "votes_http_accepted_total",
                Kind::Counter,
                "Connections accepted.",
                |s| s.accepted,
            ),
            (
                "votes_http_rejected_over_cap_total",
                Kind::Counter,
                "Connections closed at accept: the core's table was full.",
                |s| s.rejected_over_cap,
            ),
            (
                "votes_http_rejected_over_addr_cap_total",
                Kind::Counter,
                "Connections closed at accept: their source address had its share open.",
                |s| s.rejected_over_addr_cap,
            ),
            (
                "votes_http_header_timeouts_total",
                Kind::Counter,
                "Connections closed because a request head (or TLS handshake) did not arrive in time.",
                |s| s.header_timeouts,
            ),
            (
                "votes_http_idle_closes_total",
                Kind::Counter,
                "Connections closed after the idle timeout.",
                |s| s.idle_closes,
            ),
            (
                "votes_http_stalled_closes_total",
                Kind::Counter,
                "Connections closed because a response made no progress (the client did not read).",
                |s| s.stalled_closes,
            ),
            (
                "votes_http_handler_panics_total",
                Kind::Counter,
                "Requests answered 503 because their handler panicked.",
                |s| s.handler_panics,
            ),
            (
                "votes_http_tls_handshake_failures_total",
                Kind::Counter,
                "Failed TLS handshakes.",
                |s| s.tls_handshake_failures,
            ),
            (
                "votes_http_proxy_header_refusals_total",
                Kind::Counter,
                "Connections to a --proxy-protocol listener closed for want of a valid PROXY v2 header.",
                |s| s.proxy_header_refusals,
            ),
            (
                "votes_http3_open_connections",
                Kind::Gauge,
                "Open QUIC connections (HTTP/3).",
                |s| s.h3_open_connections as u64,
            ),
            (
                "votes_http3_connections_total",
                Kind::Counter,
                "QUIC connections established (HTTP/3).",
                |s| s.h3_connections,
            ),
            (
                "votes_http3_requests_total",
                Kind::Counter,
                "Requests received over HTTP/3.",
                |s| s.h3_requests,
            ),
            (
                "votes_http3_retries_total",
                Kind::Counter,
                "QUIC Retry packets sent: address validation under handshake pressure.",
                |s| s.h3_retries,
            ),
            (
                "votes_http3_refused_total",
                Kind::Counter,
                "QUIC connections refused over the per-core or per-address cap.",
                |s| s.h3_refused,
            ),
            (
                "votes_http3_handshake_failures_total",
                Kind::Counter,
                "QUIC handshakes that failed or timed out.",
                |s| s.h3_handshake_failures,
            ),
        ];
        for (name, kind, help, field) in figures {
            let mut f = page.family(name, kind, help);
            for (core, s) in stats.iter().enumerate() {
                f.sample(&[("core", &core)], field(s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_is_counted_by_listener_and_class() {
        let core = CoreMetrics::default();
        for status in [202, 409, 503, 503] {
            core.responded(ListenerKind::Public, status);
        }
        core.responded(ListenerKind::Admin, 200);
        core.responded(ListenerKind::Admin, 503);
        core.responded(ListenerKind::Internal, 500);
        // Two cores' slots are summed.
        let node = NodeMetrics::new(2, 1);
        node.publish(0, core.snapshot(), Vec::new());
        node.publish(1, core.snapshot(), Vec::new());
        let mut page = Exposition::new();
        node.render(&mut page);
        let page = page.into_string();
        let value = |series: &str| -> u64 {
            page.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        };
        let series = |l: &str, c: &str| {
            format!("votes_http_responses_total{{listener=\"{l}\",class=\"{c}\"}}")
        };
        assert_eq!(value(&series("public", "2xx")), 2);
        assert_eq!(value(&series("public", "4xx")), 2);
        assert_eq!(value(&series("public", "5xx")), 4);
        assert_eq!(value(&series("admin", "2xx")), 2);
        assert_eq!(value(&series("admin", "5xx")), 2);
        assert_eq!(
            value(&series("admin", "1xx")),
            0,
            "HTTP's classes are always shown"
        );
        assert!(!page.contains("class=\"9xx\""), "{page}");
        assert!(page.contains("# TYPE votes_http_responses_total counter"));
    }

    #[test]
    fn a_status_beyond_the_classes_http_defines_keeps_its_own_class() {
        let core = CoreMetrics::default();
        core.responded(ListenerKind::Public, 999);
        let node = NodeMetrics::new(1, 1);
        node.publish(0, core.snapshot(), Vec::new());
        let mut page = Exposition::new();
        node.render(&mut page);
        let page = page.into_string();
        assert!(
            page.contains("votes_http_responses_total{listener=\"public\",class=\"9xx\"} 1"),
            "{page}"
        );
        assert!(page.contains("votes_http_responses_total{listener=\"public\",class=\"5xx\"} 0"));
    }
}
