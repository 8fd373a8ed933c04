//! One core's HTTP state, below every protocol's connection code: the table of open
//! connections and their admission against the caps (TCP and QUIC, per core and per source),
//! the requests in flight and their guards, the counters, and the drain. The accept loop
//! (`server`), the h1/h2 connections (`conn`), HTTP/3 (`h3`) and WebSocket sessions (`ws`) all
//! use it; it uses none of them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use super::watchdog::{ConnState, Timeouts};
use super::{HttpLimits, HttpStats};
use crate::signal::{LocalSignal, Wait};

/// Spawns h2 stream tasks on the current reactor: hyper's h2 server needs an executor, and
/// ours must accept `!Send` futures (the app's handlers are `!Send`).
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}

/// Per-core HTTP state. Only this core's tasks touch it: plain cells, no locks.
pub(crate) struct CoreHttp {
    limits: HttpLimits,
    pub(crate) h1: hyper::server::conn::http1::Builder,
    pub(crate) h2: hyper::server::conn::http2::Builder<LocalExec>,
    conns: RefCell<slab::Slab<Rc<ConnState>>>,
    /// Open public connections by source address; an address leaves the map with its last one.
    per_addr: RefCell<HashMap<IpAddr, u32>>,
    /// Open connections of the admin listener (in `conns` too, but under their own cap).
    admin_open: Cell<usize>,
    requests_in_flight: Cell<usize>,
    accepted: Cell<u64>,
    rejected_over_cap: Cell<u64>,
    rejected_over_addr_cap: Cell<u64>,
    header_timeouts: Cell<u64>,
    idle_closes: Cell<u64>,
    stalled_closes: Cell<u64>,
    handler_panics: Cell<u64>,
    tls_handshake_failures: Cell<u64>,
    proxy_header_refusals: Cell<u64>,
    /// Open QUIC connections (they count against the per-core and per-address caps too).
    quic_open: Cell<usize>,
    pub(crate) h3: H3Counters,
    /// `Alt-Svc` for responses on TLS over TCP, once this core serves HTTP/3.
    pub(crate) alt_svc: RefCell<Option<http::HeaderValue>>,
    shutdown: LocalSignal,
}

impl CoreHttp {
    pub(crate) fn new(limits: HttpLimits, shutdown: LocalSignal) -> Rc<Self> {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.keep_alive(true)
            // Our watchdog bounds header reads: hyper's own timeout needs a Send + Sync timer.
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            // The read buffer cannot grow past this: bounds memory per connection, and a head
            // that does not fit is answered 431.
            .max_buf_size(limits.max_header_bytes.max(64 * 1024));
        let mut h2 = hyper::server::conn::http2::Builder::new(LocalExec);
        h2.max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // No keep-alive pings: they would need a hyper timer; idle is ours.
            .keep_alive_interval(None)
            // SETTINGS_ENABLE_CONNECT_PROTOCOL: a WebSocket over an h2 stream (RFC 8441).
            .enable_connect_protocol();
        Rc::new(Self {
            conns: RefCell::new(slab::Slab::with_capacity(
                limits.max_connections_per_core.min(4096),
            )),
            per_addr: RefCell::new(HashMap::new()),
            admin_open: Cell::new(0),
            limits,
            h1,
            h2,
            requests_in_flight: Cell::new(0),
            accepted: Cell::new(0),
            rejected_over_cap: Cell::new(0),
            rejected_over_addr_cap: Cell::new(0),
            header_timeouts: Cell::new(0),
            idle_closes: Cell::new(0),
            stalled_closes: Cell::new(0),
            handler_panics: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            proxy_header_refusals: Cell::new(0),
            quic_open: Cell::new(0),
            h3: Default::default(),
            alt_svc: RefCell::new(None),
            shutdown,
        })
    }

    pub(crate) fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_read: self.limits.header_read_timeout,
            idle: self.limits.idle_timeout,
            response_stall: self.limits.response_stall_timeout,
        }
    }

    pub(crate) fn shutdown_signal(&self) -> Wait {
        self.shutdown.wait()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_fired()
    }

    pub(crate) fn request_started(&self) {
        self.requests_in_flight
            .set(self.requests_in_flight.get() + 1);
    }

    pub(crate) fn request_finished(&self) {
        let n = self.requests_in_flight.get();
        assert!(n > 0, "core request count underflow");
        self.requests_in_flight.set(n - 1);
    }

    pub(crate) fn handler_panicked(&self) {
        self.handler_panics.set(self.handler_panics.get() + 1);
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures
            .set(self.tls_handshake_failures.get() + 1);
    }

    pub(crate) fn proxy_header_refused(&self) {
        self.proxy_header_refusals
            .set(self.proxy_header_refusals.get() + 1);
    }

    pub(crate) fn count_end(&self, header_timeout: bool, idle: bool) {
        if header_timeout {
            self.header_timeouts.set(self.header_timeouts.get() + 1);
        }
        if idle {
            self.idle_closes.set(self.idle_closes.get() + 1);
        }
    }

    pub(crate) fn count_stalled(&self) {
        self.stalled_closes.set(self.stalled_closes.get() + 1);
    }

    /// Open TCP connections of the public listeners.
    fn public_open(&self) -> usize {
        let all = self.conns.borrow().len();
        assert!(
            all >= self.admin_open.get(),
            "admin connections are in the table"
        );
        all - self.admin_open.get()
    }

    /// Counts a QUIC connection from `addr` against the core's caps; `None` when over them.
    pub(crate) fn admit_quic(self: &Rc<Self>, addr: IpAddr) -> Option<QuicSlot> {
        let addr = conn_source(addr);
        if self.public_open() + self.quic_open.get() >= self.limits.max_connections_per_core {
            self.rejected_over_cap.set(self.rejected_over_cap.get() + 1);
            return None;
        }
        if !self.count_source(addr) {
            return None;
        }
        self.quic_open.set(self.quic_open.get() + 1);
        self.accepted.set(self.accepted.get() + 1);
        Some(QuicSlot {
            core: self.clone(),
            addr,
        })
    }

    pub(crate) fn release_quic(&self, addr: IpAddr) {
        let open = self.quic_open.get();
        assert!(open > 0, "a QUIC connection is released once");
        self.quic_open.set(open - 1);
        self.release_source(addr);
    }

    /// Counts one more connection from `source` (its [`conn_source`] key) in the per-address
    /// table; `false` (and counted as a refusal) when that source is at its cap.
    fn count_source(&self, source: IpAddr) -> bool {
        let mut per_addr = self.per_addr.borrow_mut();
        let n = per_addr.entry(source).or_insert(0);
        if *n as usize >= self.limits.max_connections_per_addr {
            self.rejected_over_addr_cap
                .set(self.rejected_over_addr_cap.get() + 1);
            if *n == 0 {
                per_addr.remove(&source);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Undoes one [`Self::count_source`].
    fn release_source(&self, source: IpAddr) {
        let mut per_addr = self.per_addr.borrow_mut();
        let n = per_addr
            .get_mut(&source)
            .expect("an open connection's address is counted");
        assert!(*n > 0);
        *n -= 1;
        if *n == 0 {
            per_addr.remove(&source);
        }
    }

    /// Admits a TCP connection from `peer` accepted on a public (`admin` false) or the admin
    /// listener: counts it against its listener's cap and, when `per_addr`, its source's;
    /// `None` (counted as a refusal) when over either. The slot keeps it counted.
    pub(crate) fn admit_tcp(
        self: &Rc<Self>,
        admin: bool,
        per_addr: bool,
        peer: IpAddr,
    ) -> Option<(ConnSlot, Rc<ConnState>)> {
        debug_assert!(
            !(admin && per_addr),
            "the admin listener has no per-address cap"
        );
        let over_cap = if admin {
            self.admin_open.get() >= self.limits.max_admin_connections
        } else {
            self.public_open() >= self.limits.max_connections_per_core
        };
        if over_cap {
            self.rejected_over_cap.set(self.rejected_over_cap.get() + 1);
            return None;
        }
        let addr = conn_source(peer);
        if admin {
            self.admin_open.set(self.admin_open.get() + 1);
        } else if per_addr && !self.count_source(addr) {
            return None;
        }
        let state = Rc::new(ConnState::new(Instant::now()));
        let key = self.conns.borrow_mut().insert(state.clone());
        self.accepted.set(self.accepted.get() + 1);
        let slot = ConnSlot {
            core: self.clone(),
            key,
            addr,
            admin,
            per_addr,
        };
        Some((slot, state))
    }

    /// Behind a proxy, counts the client its PROXY header names against the per-address cap,
    /// until the returned slot drops; `None` when that client is at its cap.
    pub(crate) fn admit_proxied(self: &Rc<Self>, client: IpAddr) -> Option<SourceSlot> {
        let source = conn_source(client);
        self.count_source(source).then(|| SourceSlot {
            core: self.clone(),
            source,
        })
    }

    /// Counts a request in flight (for the drain) until the guard drops.
    pub(crate) fn request_guard(self: Rc<Self>) -> RequestGuard {
        self.request_started();
        RequestGuard(self)
    }

    pub(crate) fn stats(&self) -> HttpStats {
        HttpStats {
            open_connections: self.conns.borrow().len(),
            requests_in_flight: self.requests_in_flight.get(),
            accepted: self.accepted.get(),
            rejected_over_cap: self.rejected_over_cap.get(),
            rejected_over_addr_cap: self.rejected_over_addr_cap.get(),
            header_timeouts: self.header_timeouts.get(),
            idle_closes: self.idle_closes.get(),
            stalled_closes: self.stalled_closes.get(),
            handler_panics: self.handler_panics.get(),
            tls_handshake_failures: self.tls_handshake_failures.get(),
            proxy_header_refusals: self.proxy_header_refusals.get(),
            h3_open_connections: self.quic_open.get(),
            h3_connections: self.h3.connections.get(),
            h3_requests: self.h3.requests.get(),
            h3_retries: self.h3.retries.get(),
            h3_refused: self.h3.refused.get(),
            h3_handshake_failures: self.h3.handshake_failures.get(),
        }
    }

    /// Asks every open connection to finish gracefully (h1: close after the response in
    /// flight, or at once when idle; h2: GOAWAY, finish open streams).
    fn ask_connections_to_close(&self) {
        let conns: Vec<Rc<ConnState>> =
            self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        conns.iter().for_each(|c| c.request_shutdown());
    }

    /// Stops accepting (the accept loops watch the same signal), winds connections down and
    /// waits until they are gone or `deadline` passes. True when everything finished in time.
    pub(crate) async fn drain(&self, deadline: Instant) -> bool {
        self.shutdown.fire();
        self.ask_connections_to_close();
        loop {
            if self.conns.borrow().is_empty() && self.requests_in_flight.get() == 0 {
                // QUIC connections close with their endpoint once the reactor stops.
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                let s = self.stats();
                tracing::warn!(
                    open = s.open_connections,
                    in_flight = s.requests_in_flight,
                    "shutdown grace elapsed; dropping remaining connections"
                );
                return false;
            }
            // Polling is fine here: it runs once per core, only while shutting down.
            Timer::new((deadline - now).min(Duration::from_millis(10))).await;
        }
    }
}

/// A request in flight on a connection the core does not track itself (HTTP/3).
pub(crate) struct RequestGuard(Rc<CoreHttp>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The source a connection counts against in the per-address cap: an IPv4 address, or an IPv6
/// address's /64 (one host is handed a whole /64 and may open connections from all of it, as
/// the rate limiter also knows).
fn conn_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (!0u128 << 64)).into()),
        v4 => v4,
    }
}

/// Removes a connection from the core's table when its task ends (or is dropped).
pub(crate) struct ConnSlot {
    core: Rc<CoreHttp>,
    key: usize,
    addr: IpAddr,
    admin: bool,
    /// Counted in the per-address table (public listeners not behind a proxy).
    per_addr: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.core.conns.borrow_mut().remove(self.key);
        if self.admin {
            let open = self.core.admin_open.get();
            assert!(open > 0, "an admin connection is released once");
            self.core.admin_open.set(open - 1);
            return;
        }
        if self.per_addr {
            self.core.release_source(self.addr);
        }
    }
}

/// A proxied client's place in the per-address table, for as long as its connection lasts.
pub(crate) struct SourceSlot {
    core: Rc<CoreHttp>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.core.release_source(self.source);
    }
}

/// Counts a request from head to end of response, for the watchdog and the shutdown drain.
pub(crate) struct InFlight {
    pub(crate) conn: Rc<ConnState>,
    pub(crate) core: Rc<CoreHttp>,
    /// The app answered: the response being written, by its key in the connection's table.
    response: Option<usize>,
}

impl InFlight {
    pub(crate) fn start(conn: Rc<ConnState>, core: Rc<CoreHttp>) -> Self {
        conn.request_started();
        core.request_started();
        Self {
            conn,
            core,
            response: None,
        }
    }

    pub(crate) fn responding(mut self) -> Self {
        debug_assert!(self.response.is_none());
        self.response = Some(self.conn.response_started());
        self
    }

    /// The response wrote a frame: the client keeps up (the stall bound restarts).
    pub(crate) fn progress(&self) {
        let key = self.response.expect("progress of a response being written");
        self.conn.response_progress(key);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(key) = self.response {
            self.conn.response_finished(key);
        }
        self.conn.request_finished();
        self.core.request_finished();
    }
}

/// Counters of one core's HTTP/3 endpoint.
#[derive(Default)]
pub(crate) struct H3Counters {
    pub(crate) connections: Cell<u64>,
    pub(crate) requests: Cell<u64>,
    pub(crate) retries: Cell<u64>,
    pub(crate) refused: Cell<u64>,
    pub(crate) handshake_failures: Cell<u64>,
}

/// Keeps a QUIC connection counted against its address and the core's cap.
pub(crate) struct QuicSlot {
    pub(crate) core: Rc<CoreHttp>,
    pub(crate) addr: IpAddr,
}

impl Drop for QuicSlot {
    fn drop(&mut self) {
        self.core.release_quic(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::conn_source;
    use std::net::IpAddr;

    #[test]
    fn an_ipv6_host_is_its_64_and_an_ipv4_one_its_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(conn_source(ip("2001:db8:1:2::7")), ip("2001:db8:1:2::"));
        assert_eq!(
            conn_source(ip("2001:db8:1:2:ffff:1:2:3")),
            conn_source(ip("2001:db8:1:2::9"))
        );
        assert_ne!(conn_source(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(conn_source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(conn_source(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
