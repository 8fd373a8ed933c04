//! When a core's next transaction starts: commit pacing with an acknowledgement-latency target.
//!
//! The broker's work per transaction, not per vote, dominates the cost of a vote (perf/RESULTS.md:
//! ~2.5 ms of CPU per transaction on this kind of machine, ~1 µs per record), so a transaction
//! should carry as many votes as the latency promise allows. A vote that arrives just after a
//! transaction started waits for it to end (at most `L`, the commit latency), then for the
//! window `W` to pass since it was queued, then for its own commit (`L`): its acknowledgement
//! takes at most `max(W, L) + L`. Keeping that at the target `T` gives `W = T - L`, with `L`
//! the median of the recent commits. Not a high quantile: the broker's slow commits (tens of
//! ms on a loaded machine, whatever the batch) would collapse the window to nothing, and with
//! it the batching that keeps the broker from slowing down further; the p99 acknowledgement is
//! then `W + L99`, the broker's own commit p99 plus the window. A batch also closes at once when
//! it is full.

use super::Micros;

/// Commits remembered for the latency estimate.
const RECENT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingConfig {
    /// What a vote's acknowledgement should take at most (queue wait + commit), in µs.
    pub ack_target: Micros,
    /// Bounds of the window, whatever the estimate says (µs). `max_window = 0` disables pacing:
    /// every transaction starts as soon as the previous one ended.
    pub min_window: Micros,
    pub max_window: Micros,
}

impl PacingConfig {
    /// No waiting: a transaction starts whenever votes are queued and none is in flight.
    pub const IMMEDIATE: PacingConfig = PacingConfig {
        ack_target: 0,
        min_window: 0,
        max_window: 0,
    };

    fn validate(&self) {
        assert!(
            self.min_window <= self.max_window,
            "the window's bounds are ordered"
        );
    }
}

/// The pacing state of one core's committer.
#[derive(Clone, Debug)]
pub struct Pacing {
    cfg: PacingConfig,
    /// Latencies of the last commits, a ring.
    recent: [Micros; RECENT],
    filled: usize,
    next: usize,
    window: Micros,
}

impl Pacing {
    pub fn new(cfg: PacingConfig) -> Self {
        cfg.validate();
        let mut p = Self {
            cfg,
            recent: [0; RECENT],
            filled: 0,
            next: 0,
            window: 0,
        };
        p.window = p.compute_window();
        p
    }

    /// How long the oldest queued vote may wait before a transaction starts.
    pub fn window(&self) -> Micros {
        self.window
    }

    /// The commit latency the window is derived from: the median of the recent commits.
    pub fn latency_estimate(&self) -> Micros {
        if self.filled == 0 {
            return 0;
        }
        let mut recent = self.recent;
        let recent = &mut recent[..self.filled];
        let mid = recent.len() / 2;
        *recent.select_nth_unstable(mid).1
    }

    /// Records how long a transaction took, from its start to its outcome.
    pub fn record(&mut self, latency: Micros) {
        self.recent[self.next] = latency;
        self.next = (self.next + 1) % RECENT;
        self.filled = (self.filled + 1).min(RECENT);
        self.window = self.compute_window();
    }

    fn compute_window(&self) -> Micros {
        let w = self
            .cfg
            .ack_target
            .saturating_sub(self.latency_estimate())
            .clamp(self.cfg.min_window, self.cfg.max_window);
        debug_assert!(w <= self.cfg.max_window);
        w
    }

    /// Whether a transaction should start now, given the time the oldest queued vote was
    /// queued and whether the queued votes fill a transaction; otherwise the time to look again.
    pub fn decide(&self, now: Micros, oldest_queued: Micros, full: bool) -> Result<(), Micros> {
        let due = oldest_queued.saturating_add(self.window);
        if full || now >= due { Ok(()) } else { Err(due) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: PacingConfig = PacingConfig {
        ack_target: 20_000,
        min_window: 500,
        max_window: 15_000,
    };

    #[test]
    fn the_window_is_what_the_target_leaves_after_the_median_recent_commit() {
        let mut p = Pacing::new(CFG);
        assert_eq!(p.window(), 15_000, "no commit seen yet: the largest window");
        p.record(4_000);
        p.record(9_000);
        p.record(6_000);
        assert_eq!(p.latency_estimate(), 6_000);
        assert_eq!(p.window(), 14_000, "20 ms target − 6 ms");
        p.record(90_000);
        assert_eq!(
            p.latency_estimate(),
            9_000,
            "one slow commit moves the median by one place"
        );
        for _ in 0..3 {
            p.record(30_000);
        }
        assert_eq!(p.window(), 500, "a slow broker: commit (almost) at once");
        for _ in 0..RECENT {
            p.record(5_000);
        }
        assert_eq!(
            p.window(),
            15_000,
            "the slow commits are forgotten after {RECENT} others"
        );
    }

    #[test]
    fn a_batch_starts_when_full_or_when_its_oldest_vote_waited_the_window() {
        let mut p = Pacing::new(CFG);
        p.record(12_000);
        assert_eq!(p.window(), 8_000);
        assert_eq!(p.decide(100_000, 95_000, false), Err(103_000));
        assert_eq!(p.decide(103_000, 95_000, false), Ok(()));
        assert_eq!(p.decide(95_001, 95_000, true), Ok(()), "full: no wait");
    }

    #[test]
    fn immediate_pacing_never_waits() {
        let mut p = Pacing::new(PacingConfig::IMMEDIATE);
        p.record(3_000);
        assert_eq!(p.window(), 0);
        assert_eq!(p.decide(7, 7, false), Ok(()));
    }
}
