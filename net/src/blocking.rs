//! Off-reactor execution of blocking calls (librdkafka transaction commits: several ms each,
//! several in flight per core).
//!
//! Choice: glommio's own `spawn_blocking`, with the executor's blocking pool sized by
//! [`crate::ReactorConfig::blocking_threads`] and left *unpinned*, plus an admission bound here.
//! * Completion is delivered the way glommio delivers io_uring completions: the pool thread
//!   pushes the result on the executor's bounded response queue and writes the reactor's
//!   eventfd, so a sleeping reactor wakes at once and no waker crosses threads.
//! * glommio's default pool is one thread pinned to the reactor's own CPU: commits would be
//!   serialised and would preempt the reactor. We ask for N unpinned threads instead; they
//!   mostly wait on the broker, and the scheduler may run them on any allowed CPU.
//! * glommio's request queue holds 4096 entries and a full one makes the submitter *wait*:
//!   bounded, but not a fast failure. [`Blocking::run`] refuses beyond
//!   [`crate::ReactorConfig::max_blocking_in_flight`] with [`BlockingError::Saturated`], which
//!   the app turns into a 503.
//! * A panic in the closure would kill the pool thread and leave the waiting task hanging
//!   forever (glommio never answers it). We catch it and return [`BlockingError::Panicked`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockingError {
    #[error("{limit} blocking calls already in flight on this core")]
    Saturated { limit: usize },
    #[error("blocking call panicked: {0}")]
    Panicked(String),
}

/// Per-core handle to the blocking pool. Cheap to clone; `Send` is not needed (it is used
/// from its own reactor), but the in-flight count is shared with the pool threads.
#[derive(Clone)]
pub struct Blocking {
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

/// Decrements the in-flight count when the closure is done, on the pool thread: a request
/// cancelled on the reactor does not free the slot while its closure still runs.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        let prev = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev > 0, "blocking in-flight count underflow");
    }
}

impl Blocking {
    pub(crate) fn new(limit: usize) -> Self {
        assert!(limit > 0);
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Calls currently admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Runs `f` on a blocking-pool thread of this core and resolves with its result on this
    /// reactor. Must be called from a reactor started by [`crate::start_reactors`].
    pub async fn run<F, R>(&self, f: F) -> Result<R, BlockingError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        // Only this reactor increments, so check-then-add cannot overshoot.
        if self.in_flight.load(Ordering::Acquire) >= self.limit {
            return Err(BlockingError::Saturated { limit: self.limit });
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.in_flight.clone());
        let result = glommio::executor()
            .spawn_blocking(move || {
                let _slot = slot;
                std::panic::catch_unwind(AssertUnwindSafe(f))
            })
            .await;
        result.map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            BlockingError::Panicked(msg)
        })
    }
}
