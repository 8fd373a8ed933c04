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
    /// At least one request in flight. `progress` is `None` while no response is being
    /// written (only handlers run, and the app bounds its own work); otherwise, of the
    /// responses being written, the oldest time one of them last started or yielded a frame:
    /// each response must progress, so a lively stream beside a stalled one is no cover. A client that stops reading stops that
    /// progress: hyper polls a body only when it can write (h1 buffer, h2 window).
    Busy { progress: Option<Instant> },
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
    /// A response made no progress for too long (the client keeps its h2 window shut, or
    /// does not read): close at once, a graceful close would wait on the same stalled writes.
    Stalled,
    /// The socket has refused our writes for too long in all: ask the kernel what the client
    /// acknowledged ([`ConnState::send_stall_expired`]), then close or start over.
    SendStalled,
}

/// A client must acknowledge this much of what we sent since the last stall check for its
/// connection's stall clock to start over: at the 30 s default a reader slower than about
/// 2 KiB/s while we have data for it is closed.
pub(crate) const DRAIN_BYTES: u64 = 64 * 1024;

/// How long the connection has been behind on its writes (the socket refusing them) in this
/// epoch. Episodes add up: the kernel takes more of our bytes now and then (as it grows the
/// send buffer, or answers a zero-window probe) even from a client that reads nothing, so the
/// writer catching up says nothing about the client. What the client acknowledged does: it
/// is read (TCP_INFO) when the clock runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SendStall {
    /// Since when the socket has been refusing writes, if it is.
    blocked_since: Option<Instant>,
    /// Time behind in earlier episodes of this epoch.
    used: Duration,
    /// Bytes the peer had acknowledged when the epoch began (read at its first refusal).
    acked_base: Option<u64>,
}

impl SendStall {
    /// The socket refused a write or flush; `acked` reads what the peer acknowledged so far
    /// (a syscall, made once per epoch).
    pub(crate) fn refused(&mut self, now: Instant, acked: impl FnOnce() -> Option<u64>) {
        if self.blocked_since.is_none() {
            self.blocked_since = Some(now);
        }
        if self.acked_base.is_none() {
            // Unknown counts as nothing acknowledged: the epoch is judged from zero.
            self.acked_base = Some(acked().unwrap_or(0));
        }
    }

    /// The writer's buffer is all in the socket: the episode ends, its time stays counted.
    pub(crate) fn caught_up(&mut self, now: Instant) {
        if let Some(since) = self.blocked_since.take() {
            self.used += now.saturating_duration_since(since);
        }
    }

    /// When the clock runs out, while the connection is behind.
    pub(crate) fn deadline(&self, stall: Duration) -> Option<Instant> {
        self.blocked_since
            .map(|since| since + stall.saturating_sub(self.used))
    }

    /// The clock ran out; `acked` is what the peer has acknowledged in all (`None` if the kernel
    /// would not say). True when the connection is stalled: close it. Otherwise the client
    /// proved it reads, and a new epoch starts now.
    pub(crate) fn expired(&mut self, now: Instant, acked: Option<u64>) -> bool {
        let Some(acked) = acked else { return true };
        if acked.saturating_sub(self.acked_base.unwrap_or(0)) < DRAIN_BYTES {
            return true;
        }
        *self = SendStall {
            blocked_since: self.blocked_since.map(|_| now),
            used: Duration::ZERO,
            acked_base: Some(acked),
        };
        false
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub response_stall: Duration,
}

/// When the connection must be closed, and why; `None` while only handlers run (the app
/// bounds its own work; body upload speed is bounded by the app's read timeout).
/// `send` applies whatever the phase: hyper over HTTP/1.1 does not even poll the next pipelined
/// request's handler while its previous answer cannot be flushed.
pub(crate) fn deadline(
    phase: Phase,
    proto: Proto,
    send: SendStall,
    t: Timeouts,
) -> Option<(Instant, Expiry)> {
    let by_phase = phase_deadline(phase, proto, t);
    let by_writes = send
        .deadline(t.response_stall)
        .map(|at| (at, Expiry::SendStalled));
    match (by_phase, by_writes) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn phase_deadline(phase: Phase, proto: Proto, t: Timeouts) -> Option<(Instant, Expiry)> {
    match phase {
        Phase::Fresh { since } => Some((since + t.header_read, Expiry::HeaderTimeout)),
        Phase::Busy { progress: None } => None,
        Phase::Busy {
            progress: Some(last),
        } => Some((last + t.response_stall, Expiry::Stalled)),
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
    /// Responses handed to hyper and not yet finished (a subset of `in_flight`), each with the
    /// last time it started or yielded a frame. At most the h2 stream limit of them.
    responses: RefCell<slab::Slab<Instant>>,
    send: Cell<SendStall>,
    proto: Cell<Proto>,
    shutdown: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// Flushes that completed: hyper and h2 flush the socket only once their own write buffer
    /// is empty, so a flush after a point in time says all they had then is in the kernel.
    flushes: Cell<u64>,
    /// An HTTP/1.1 response asked to leave hyper ([`Self::request_detach`]), with the flush
    /// count at that moment.
    detach_at_flush: Cell<Option<u64>>,
}

impl ConnState {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            phase: Cell::new(Phase::Fresh { since: now }),
            in_flight: Cell::new(0),
            responses: RefCell::new(slab::Slab::new()),
            send: Cell::new(SendStall::default()),
            proto: Cell::new(Proto::Unknown),
            shutdown: Cell::new(false),
            waker: RefCell::new(None),
            flushes: Cell::new(0),
            detach_at_flush: Cell::new(None),
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
        deadline(self.phase.get(), self.proto.get(), self.send.get(), t)
    }

    /// The socket refused a write or flush (its send buffer is full); `acked` reads what the
    /// peer acknowledged so far, called only when an epoch starts.
    pub(crate) fn on_write_blocked(&self, acked: impl FnOnce() -> Option<u64>) {
        if self.send.get().blocked_since.is_none() {
            self.update_send(|s| s.refused(Instant::now(), acked));
        }
    }

    /// A flush completed: everything the connection had to write is in the kernel.
    pub(crate) fn on_flushed(&self) {
        self.flushes.set(self.flushes.get() + 1);
        if self.send.get().blocked_since.is_some() {
            self.update_send(|s| s.caught_up(Instant::now()));
        }
    }

    /// The send-stall clock ran out (see [`SendStall::expired`]).
    pub(crate) fn send_stall_expired(&self, acked: Option<u64>) -> bool {
        let mut stalled = false;
        self.update_send(|s| stalled = s.expired(Instant::now(), acked));
        stalled
    }

    fn update_send(&self, f: impl FnOnce(&mut SendStall)) {
        let mut s = self.send.get();
        f(&mut s);
        self.send.set(s);
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
        // Another stream's response may be streaming already: its progress stands. A new
        // request is not progress: a client could open streams to dodge the stall bound.
        if !matches!(self.phase.get(), Phase::Busy { .. }) {
            self.phase.set(Phase::Busy { progress: None });
        }
    }

    /// The app answered a request in flight: hyper now writes its head and body. The key names
    /// the response in [`Self::response_progress`] and [`Self::response_finished`].
    pub(crate) fn response_started(&self) -> usize {
        let was = self.phase.get();
        let key = {
            let mut responses = self.responses.borrow_mut();
            assert!(
                (responses.len() as u64) < u64::from(self.in_flight.get()),
                "a response without its request"
            );
            responses.insert(Instant::now())
        };
        self.update_progress();
        // On h2 this runs in a stream task: the connection task sleeps without a deadline
        // (only handlers were running) and must arm the stall timer. On HTTP/1.1 this runs
        // inside the connection task's own poll, which reads the deadline afterwards.
        if was == (Phase::Busy { progress: None }) && self.proto.get() == Proto::H2 {
            self.wake();
        }
        key
    }

    /// Response `key` yielded a frame.
    pub(crate) fn response_progress(&self, key: usize) {
        *self
            .responses
            .borrow_mut()
            .get_mut(key)
            .expect("progress of a response being written") = Instant::now();
        self.update_progress();
    }

    /// Response `key` was written completely (or abandoned); `request_finished` follows.
    pub(crate) fn response_finished(&self, key: usize) {
        self.responses.borrow_mut().remove(key);
        self.update_progress();
    }

    /// Busy's progress: the oldest of the responses' (handlers alone have no deadline of ours).
    fn update_progress(&self) {
        let oldest = self.responses.borrow().iter().map(|(_, t)| *t).min();
        assert!(
            matches!(self.phase.get(), Phase::Busy { .. }),
            "responses only while requests are in flight"
        );
        self.phase.set(Phase::Busy { progress: oldest });
    }

    /// A request's response finished (or was abandoned).
    pub(crate) fn request_finished(&self) {
        let n = self.in_flight.get();
        assert!(n > 0, "request_finished without request_started");
        assert!(
            (self.responses.borrow().len() as u64) < u64::from(n),
            "request finished before its response"
        );
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

    /// The response being answered asks to be written outside hyper (HTTP/1.1 only): the
    /// connection task takes the socket once hyper has flushed what it holds.
    pub(crate) fn request_detach(&self) {
        assert_eq!(
            self.proto.get(),
            Proto::H1,
            "only an HTTP/1.1 response detaches"
        );
        assert!(
            self.detach_at_flush.get().is_none(),
            "one detached response per connection"
        );
        self.detach_at_flush.set(Some(self.flushes.get()));
    }

    /// A detach was asked and hyper has flushed since: its write buffer is empty, nothing of
    /// an earlier response is lost by taking the socket from it. (hyper reads the request after
    /// a bodiless one only once its answer is flushed, but after a request with a body it may
    /// read on while that answer still waits in its buffer.)
    pub(crate) fn detach_ready(&self) -> bool {
        self.detach_at_flush
            .get()
            .is_some_and(|mark| self.flushes.get() > mark)
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
        response_stall: Duration::from_secs(30),
    };

    #[test]
    fn fresh_connection_must_send_a_head_in_time() {
        let t0 = Instant::now();
        for proto in [Proto::Unknown, Proto::H1, Proto::H2] {
            assert_eq!(
                deadline(Phase::Fresh { since: t0 }, proto, SendStall::default(), T),
                Some((t0 + T.header_read, Expiry::HeaderTimeout))
            );
        }
    }

    #[test]
    fn a_running_handler_has_no_deadline_but_a_response_must_progress() {
        for proto in [Proto::H1, Proto::H2] {
            assert_eq!(
                deadline(
                    Phase::Busy { progress: None },
                    proto,
                    SendStall::default(),
                    T
                ),
                None
            );
            let t0 = Instant::now();
            assert_eq!(
                deadline(
                    Phase::Busy { progress: Some(t0) },
                    proto,
                    SendStall::default(),
                    T
                ),
                Some((t0 + T.response_stall, Expiry::Stalled))
            );
        }
    }

    #[test]
    fn idle_h1_uses_idle_until_bytes_arrive_then_the_header_bound() {
        let t0 = Instant::now();
        let idle = Phase::Idle {
            since: t0,
            first_byte: None,
        };
        assert_eq!(
            deadline(idle, Proto::H1, SendStall::default(), T),
            Some((t0 + T.idle, Expiry::Idle))
        );
        let fb = t0 + Duration::from_secs(5);
        let started = Phase::Idle {
            since: t0,
            first_byte: Some(fb),
        };
        assert_eq!(
            deadline(started, Proto::H1, SendStall::default(), T),
            Some((fb + T.header_read, Expiry::HeaderTimeout))
        );
        // Bytes right before the idle deadline must not extend the connection's life.
        let late = Phase::Idle {
            since: t0,
            first_byte: Some(t0 + Duration::from_secs(55)),
        };
        assert_eq!(
            deadline(late, Proto::H1, SendStall::default(), T),
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
        assert_eq!(
            deadline(p, Proto::H2, SendStall::default(), T),
            Some((t0 + T.idle, Expiry::Idle))
        );
    }

    #[test]
    fn a_socket_that_refuses_writes_stalls_the_connection_in_any_phase() {
        let t0 = Instant::now();
        let mut send = SendStall::default();
        send.refused(t0 + Duration::from_secs(1), || Some(0));
        let at = t0 + Duration::from_secs(1) + T.response_stall;
        for phase in [
            Phase::Busy { progress: None },
            Phase::Idle {
                since: t0,
                first_byte: None,
            },
        ] {
            assert_eq!(
                deadline(phase, Proto::H1, send, T),
                Some((at, Expiry::SendStalled))
            );
        }
        // The earlier bound wins.
        let fresh = Phase::Fresh { since: t0 };
        assert_eq!(
            deadline(fresh, Proto::H1, send, T),
            Some((t0 + T.header_read, Expiry::HeaderTimeout))
        );
    }

    #[test]
    fn a_trickle_reader_adds_up_its_stalls_and_a_real_reader_starts_over() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut send = SendStall::default();
        send.refused(s(0), || Some(0));
        send.refused(s(5), || panic!("the epoch's base is read once"));
        assert_eq!(
            send.deadline(T.response_stall),
            Some(s(30)),
            "the first refusal counts"
        );
        // The kernel takes more of our bytes, the writer catches up, then is refused again.
        send.caught_up(s(10));
        assert_eq!(
            send.deadline(T.response_stall),
            None,
            "not behind: no deadline"
        );
        send.refused(s(100), || panic!("the epoch's base is read once"));
        assert_eq!(
            send.deadline(T.response_stall),
            Some(s(120)),
            "10 s of the 30 were used in the first episode"
        );
        // The peer acknowledged a trickle: stalled.
        assert!({ send }.expired(s(120), Some(4_096)));
        assert!({ send }.expired(s(120), None), "unknown counts as stalled");
        // It acknowledged DRAIN_BYTES: a new epoch, with its whole allowance.
        assert!(!send.expired(s(120), Some(DRAIN_BYTES + 10)));
        assert_eq!(send.deadline(T.response_stall), Some(s(150)));
        assert!(
            { send }.expired(s(150), Some(DRAIN_BYTES + 20)),
            "measured from the new epoch's base"
        );
        assert!(!send.expired(s(150), Some(2 * DRAIN_BYTES + 10)));
    }

    #[test]
    fn what_a_client_read_before_it_stopped_does_not_buy_it_time() {
        let t0 = Instant::now();
        let mut send = SendStall::default();
        // 1 MiB acknowledged over the connection's life, then the client stops reading.
        send.refused(t0, || Some(1 << 20));
        assert!(send.expired(t0 + T.response_stall, Some((1 << 20) + 100)));
    }

    #[test]
    fn a_new_request_does_not_refresh_a_stalled_response() {
        let s = ConnState::new(Instant::now());
        s.request_started();
        s.response_started();
        let before = s.phase();
        s.request_started();
        assert_eq!(s.phase(), before);
    }

    #[test]
    fn a_lively_response_does_not_cover_a_stalled_one() {
        let s = ConnState::new(Instant::now());
        s.request_started();
        s.request_started();
        let stalled = s.response_started();
        let Phase::Busy {
            progress: Some(stalled_at),
        } = s.phase()
        else {
            panic!("{:?}", s.phase());
        };
        let lively = s.response_started();
        std::thread::sleep(Duration::from_millis(2));
        s.response_progress(lively);
        assert_eq!(
            s.phase(),
            Phase::Busy {
                progress: Some(stalled_at)
            },
            "the oldest progress rules"
        );
        s.response_finished(stalled);
        s.request_finished();
        assert!(
            matches!(s.phase(), Phase::Busy { progress: Some(t) } if t > stalled_at),
            "then the lively one's"
        );
        s.response_finished(lively);
        s.request_finished();
    }

    #[test]
    fn state_transitions() {
        let s = ConnState::new(Instant::now());
        s.on_read(100); // fresh: bytes do not change the fresh deadline
        assert!(matches!(s.phase(), Phase::Fresh { .. }));
        s.request_started();
        s.request_started();
        assert_eq!(s.phase(), Phase::Busy { progress: None });
        let key = s.response_started();
        let Phase::Busy {
            progress: Some(first),
        } = s.phase()
        else {
            panic!("a response in flight has a progress time: {:?}", s.phase());
        };
        s.response_progress(key);
        assert!(matches!(s.phase(), Phase::Busy { progress: Some(t) } if t >= first));
        s.response_finished(key);
        s.request_finished();
        assert_eq!(
            s.phase(),
            Phase::Busy { progress: None },
            "one still in flight, its handler running"
        );
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
