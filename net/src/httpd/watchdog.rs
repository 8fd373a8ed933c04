//! Per-connection timeouts, decided without I/O.
//!
//! Why our own: hyper's timeouts need a `hyper::rt::Timer` whose sleeps are `Send + Sync`,
//! which glommio's timers are not; and nothing in hyper bounds the time before the protocol is
//! even known (the h2 preface sniff). The connection task records what happened in
//! [`ConnState`]; [`deadline`] says when the connection must go and how.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Unknown,
    H1,
    H2,
}

/// What the connection is doing, as far as timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted, no request head seen yet.
    Fresh { since: Instant },
    /// At least one request in flight (handler running or response streaming).
    Busy,
    /// No request in flight since `since`; `first_byte` is when bytes of a next request
    /// started to arrive, if they did.
    Idle {
        since: Instant,
        first_byte: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head did not arrive in time: close at once (nothing is in flight).
    HeaderTimeout,
    /// Idle for too long: close gracefully (h2 GOAWAY).
    Idle,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// When the connection must be closed, and why; `None` while a request is in flight (the app
/// bounds its own work; body upload speed is bounded by the app's read timeout).
pub(crate) fn deadline(phase: Phase, proto: Proto, t: Timeouts) -> Option<(Instant, Expiry)> {
    match phase {
        Phase::Fresh { since } => Some((since + t.header_read, Expiry::HeaderTimeout)),
        Phase::Busy => None,
        Phase::Idle { since, first_byte } => {
            let idle = (since + t.idle, Expiry::Idle);
            match (proto, first_byte) {
                // HTTP/1.1: bytes after idle are the next request head, which must complete in
                // time. On h2 idle bytes may be PINGs or WINDOW_UPDATEs: only idle applies.
                (Proto::H1, Some(fb)) if fb + t.header_read < idle.0 => {
                    Some((fb + t.header_read, Expiry::HeaderTimeout))
                }
                _ => Some(idle),
            }
        }
    }
}

/// Shared between the connection task, its IO adapter, its request guards (which may live in
/// h2 stream tasks) and the core's shutdown. Single-threaded: plain cells.
pub(crate) struct ConnState {
    phase: Cell<Phase>,
    in_flight: Cell<u32>,
    proto: Cell<Proto>,
    shutdown: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ConnState {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            phase: Cell::new(Phase::Fresh { since: now }),
            in_flight: Cell::new(0),
            proto: Cell::new(Proto::Unknown),
            shutdown: Cell::new(false),
            waker: RefCell::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase.get()
    }

    pub(crate) fn set_proto(&self, p: Proto) {
        self.proto.set(p);
    }

    pub(crate) fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        deadline(self.phase.get(), self.proto.get(), t)
    }

    /// Bytes arrived from the peer.
    pub(crate) fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Phase::Idle {
            since,
            first_byte: None,
        } = self.phase.get()
        {
            self.phase.set(Phase::Idle {
                since,
                first_byte: Some(Instant::now()),
            });
        }
    }

    /// A request head was parsed and handed to the app.
    pub(crate) fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.phase.set(Phase::Busy);
    }

    /// A request's response finished (or was abandoned).
    pub(crate) fn request_finished(&self) {
        let n = self.in_flight.get();
        assert!(n > 0, "request_finished without request_started");
        self.in_flight.set(n - 1);
        if n == 1 {
            self.phase.set(Phase::Idle {
                since: Instant::now(),
                first_byte: None,
            });
            // May run in an h2 stream task: the connection task must re-arm its deadline.
            self.wake();
        }
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.set(true);
        self.wake();
    }

    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.get()
    }

    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn fresh_connection_must_send_a_head_in_time() {
        let t0 = Instant::now();
        for proto in [Proto::Unknown, Proto::H1, Proto::H2] {
            assert_eq!(
                deadline(Phase::Fresh { since: t0 }, proto, T),
                Some((t0 + T.header_read, Expiry::HeaderTimeout))
            );
        }
    }

    #[test]
    fn busy_connection_has_no_deadline() {
        assert_eq!(deadline(Phase::Busy, Proto::H1, T), None);
    }

    #[test]
    fn idle_h1_uses_idle_until_bytes_arrive_then_the_header_bound() {
        let t0 = Instant::now();
        let idle = Phase::Idle {
            since: t0,
            first_byte: None,
        };
        assert_eq!(
            deadline(idle, Proto::H1, T),
            Some((t0 + T.idle, Expiry::Idle))
        );
        let fb = t0 + Duration::from_secs(5);
        let started = Phase::Idle {
            since: t0,
            first_byte: Some(fb),
        };
        assert_eq!(
            deadline(started, Proto::H1, T),
            Some((fb + T.header_read, Expiry::HeaderTimeout))
        );
        // Bytes right before the idle deadline must not extend the connection's life.
        let late = Phase::Idle {
            since: t0,
            first_byte: Some(t0 + Duration::from_secs(55)),
        };
        assert_eq!(
            deadline(late, Proto::H1, T),
            Some((t0 + T.idle, Expiry::Idle))
        );
    }

    #[test]
    fn idle_h2_ignores_control_frames() {
        let t0 = Instant::now();
        let p = Phase::Idle {
            since: t0,
            first_byte: Some(t0 + Duration::from_secs(1)),
        };
        assert_eq!(deadline(p, Proto::H2, T), Some((t0 + T.idle, Expiry::Idle)));
    }

    #[test]
    fn state_transitions() {
        let s = ConnState::new(Instant::now());
        s.on_read(100); // fresh: bytes do not change the fresh deadline
        assert!(matches!(s.phase(), Phase::Fresh { .. }));
        s.request_started();
        s.request_started();
        assert_eq!(s.phase(), Phase::Busy);
        s.request_finished();
        assert_eq!(s.phase(), Phase::Busy, "one still in flight");
        s.request_finished();
        assert!(matches!(
            s.phase(),
            Phase::Idle {
                first_byte: None,
                ..
            }
        ));
        s.on_read(0);
        assert!(matches!(
            s.phase(),
            Phase::Idle {
                first_byte: None,
                ..
            }
        ));
        s.on_read(1);
        assert!(matches!(
            s.phase(),
            Phase::Idle {
                first_byte: Some(_),
                ..
            }
        ));
    }
}
