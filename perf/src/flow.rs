//! The request counters of an open loop (`votes-load`, `votes-flood`): a request falls due on
//! the schedule and is sent only while fewer than a bound are in flight; otherwise it is
//! dropped and counted, so a stalled server shows as drops rather than slowing the offered load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Flow {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub in_flight: AtomicU64,
    pub answered: AtomicU64,
}

impl Flow {
    /// Takes a due request unless `max_in_flight` are outstanding (it is then counted as
    /// dropped); on `true` send it, and call [`Flow::finished`] when it has ended.
    pub fn admit(&self, max_in_flight: u64) -> bool {
        if self.in_flight.load(Ordering::Acquire) >= max_in_flight {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Returns once every admitted request has finished (each ends within its timeout).
    pub async fn drained(&self) {
        while self.in_flight.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_counts_the_rest_as_dropped() {
        let flow = Flow::default();
        assert!(flow.admit(2));
        assert!(flow.admit(2));
        assert!(!flow.admit(2));
        flow.finished();
        assert!(flow.admit(2));
        assert_eq!(flow.sent.load(Ordering::Relaxed), 3);
        assert_eq!(flow.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(flow.in_flight.load(Ordering::Relaxed), 2);
    }
}
