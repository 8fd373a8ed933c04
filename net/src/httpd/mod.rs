//! HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the reactors, with hyper 1.x.
//!
//! Each core accepts on its own SO_REUSEPORT listener, sniffs the h2 preface on each connection
//! and hands the socket to hyper's HTTP/1 or HTTP/2 server on a local (`!Send`) executor. The
//! app sees one [`App::handle`] call per request.

pub(crate) mod conn;
pub(crate) mod io;
pub(crate) mod server;
pub(crate) mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::BoxBody;

/// A boxed future that stays on its core.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Which API a listener serves (DESIGN §4.2 public, §4.3 admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Bound on every core; the kernel spreads connections over them (SO_REUSEPORT).
    Public,
    /// Bound on core 0 only: low traffic, and the admin state lives in one place.
    Admin,
}

/// One address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Port 0 picks a free port once; every core then binds that same port.
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

/// Per-core HTTP limits. Every queue and buffer on the connection path is bounded by one.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections per core, all listeners together. Beyond it a new connection is
    /// closed right after accept (cheaper than keeping it in the backlog, and visible).
    pub max_connections_per_core: usize,
    /// Slowloris bound: a new connection must deliver its first request head within this time,
    /// and on HTTP/1.1 a request head must complete within this time of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this time (h2: GOAWAY first).
    pub idle_timeout: Duration,
    /// Request line + headers (HTTP/1.1: 431 beyond it; h2: SETTINGS_MAX_HEADER_LIST_SIZE).
    /// At least 8192 (hyper's minimum read buffer).
    pub max_header_bytes: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on h2 connections.
    pub h2_max_concurrent_streams: u32,
    /// After an idle GOAWAY/close, how long a connection may take to wind down.
    pub graceful_close_timeout: Duration,
    /// listen(2) backlog of each core's socket.
    pub listen_backlog: i32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections_per_core: 16_384,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 128,
            graceful_close_timeout: Duration::from_secs(5),
            listen_backlog: 1024,
        }
    }
}

impl HttpLimits {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_connections_per_core == 0 {
            return Err("max_connections_per_core must be > 0".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("max_header_bytes must be >= 8192 (hyper's minimum buffer)".into());
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err("h2_max_concurrent_streams must be > 0".into());
        }
        if self.header_read_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err("timeouts must be > 0".into());
        }
        if self.listen_backlog <= 0 {
            return Err("listen_backlog must be > 0".into());
        }
        Ok(())
    }
}

/// The per-core application. Built on its core by the `make_app` closure given to
/// [`crate::start_reactors`], so it may hold `Rc`s and other `!Send` state.
pub trait App: 'static {
    /// Answers one request. Reading the body (with [`crate::read_body_limited`]) is up to the
    /// app. A panic in the returned future is caught and answered with 503.
    fn handle(
        &self,
        kind: ListenerKind,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> LocalBoxFuture<'static, Response<BoxBody>>;

    /// Called once per core after its HTTP connections drained on shutdown, before the reactor
    /// stops (e.g. to abort open batches). Bounded by the shutdown grace.
    fn shutdown(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Counters of one core's HTTP layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    pub open_connections: usize,
    pub requests_in_flight: usize,
    pub accepted: u64,
    pub rejected_over_cap: u64,
    pub header_timeouts: u64,
    pub idle_closes: u64,
    pub handler_panics: u64,
}
