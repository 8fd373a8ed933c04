//! HTTP/1.1 and HTTP/2 on the reactors, with hyper 1.x: plaintext (h2c by prior knowledge) or
//! TLS (h2 by ALPN).
//!
//! Each core accepts on its own SO_REUSEPORT listener. On a plaintext listener it sniffs the h2
//! preface; on a TLS listener it does the handshake and lets ALPN choose. It then hands the
//! connection to hyper's HTTP/1 or HTTP/2 server on a local (`!Send`) executor. The app sees one
//! [`App::handle`] call per request, with a [`ConnInfo`] in the request's extensions.

pub(crate) mod conn;
mod detached;
pub use detached::detached_stream;
mod h3;
pub(crate) use h3::{serve as serve_h3, server_config as h3_server_config};
pub(crate) mod io;
pub(crate) mod per_core;
mod quic_runtime;
pub(crate) mod server;
pub(crate) mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use crate::body::BoxBody;

/// A boxed future that stays on its core.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A request as an [`App`] receives it, its body not yet read.
pub type AppRequest = Request<crate::RequestBody>;

/// An [`App`]'s answer to one request: a future run on the core that accepted the connection.
pub type AppResponse = LocalBoxFuture<'static, Response<BoxBody>>;

/// Which API a listener serves (docs/design.md §4.2 public, §4.3 admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Bound on every core; the kernel spreads connections over them (SO_REUSEPORT).
    Public,
    /// Bound on core 0 only: low traffic, and the admin state lives in one place.
    Admin,
    /// Node-to-node forwarding (`--internal`), bound on every core; not HTTP: each core's app
    /// takes its socket with [`crate::CoreContext::take_internal_listener`].
    Internal,
}

/// One address to listen on.
#[derive(Clone)]
pub struct ListenerSpec {
    /// Port 0 picks a free port once; every core then binds that same port.
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    /// `None`: plaintext HTTP/1.1 and h2c. `Some`: TLS, then HTTP/2 when ALPN chose `h2`,
    /// HTTP/1.1 otherwise (ALPN `http/1.1` or none). Its `alpn_protocols` may only hold those
    /// two ids ([`crate::start_reactors`] refuses others); see [`crate::tls_server_config`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Every connection starts with a PROXY protocol v2 header from a load balancer (before
    /// TLS); its source address is the client's for the app (rate limits, logs). A connection
    /// without a valid one is closed. Never on a listener clients reach directly: anyone could
    /// claim any address.
    pub proxy_protocol: bool,
}

impl ListenerSpec {
    /// A plaintext listener (HTTP/1.1 and h2c).
    pub fn plain(addr: SocketAddr, kind: ListenerKind) -> Self {
        Self {
            addr,
            kind,
            tls: None,
            proxy_protocol: false,
        }
    }

    /// A TLS listener (HTTP/1.1 and h2, chosen by ALPN).
    pub fn tls(addr: SocketAddr, kind: ListenerKind, cfg: Arc<rustls::ServerConfig>) -> Self {
        Self {
            addr,
            kind,
            tls: Some(cfg),
            proxy_protocol: false,
        }
    }

    /// The same listener, behind a balancer that speaks the PROXY protocol v2.
    pub fn behind_proxy(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl std::fmt::Debug for ListenerSpec {
    /// The rustls configuration would print keys' debug forms and pages of suites: only say
    /// whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSpec")
            .field("addr", &self.addr)
            .field("kind", &self.kind)
            .field("tls", &self.is_tls())
            .field("proxy_protocol", &self.proxy_protocol)
            .finish()
    }
}

/// Same address, kind and the very same TLS configuration (`Arc` identity: rustls
/// configurations have no equality of their own).
impl PartialEq for ListenerSpec {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.kind == other.kind
            && self.proxy_protocol == other.proxy_protocol
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for ListenerSpec {}

/// An application protocol chosen by TLS ALPN (RFC 7301); only the two we offer over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// `h2`
    H2,
    /// `http/1.1`
    Http11,
    /// `h3` (QUIC)
    H3,
}

impl Alpn {
    /// The protocol id on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Self::H2 => crate::tls::ALPN_H2,
            Self::Http11 => crate::tls::ALPN_HTTP11,
            Self::H3 => crate::tls::ALPN_H3,
        }
    }

    pub(crate) fn from_id(id: &[u8]) -> Option<Self> {
        match id {
            crate::tls::ALPN_H2 => Some(Self::H2),
            crate::tls::ALPN_HTTP11 => Some(Self::Http11),
            _ => None,
        }
    }
}

/// How the request's connection was made. Every request handed to [`App::handle`] carries one
/// in its extensions (`req.extensions().get::<ConnInfo>()`), on plaintext and TLS listeners
/// alike; e.g. to add `Alt-Svc` only over TLS, or to count requests per protocol.
///
/// Chosen over a new [`ListenerKind`] variant or `App::handle` parameter: the kind says *which
/// API* a listener serves, independent of transport, and apps that ignore the transport stay
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connection is TLS (a listener with [`ListenerSpec::tls`]).
    pub tls: bool,
    /// What ALPN chose; `None` on plaintext, or when the TLS client offered no ALPN.
    pub alpn: Option<Alpn>,
    /// The protocol the connection speaks: `HTTP_11` (HTTP/1.x: a request may still say 1.0,
    /// see `Request::version`) or `HTTP_2`.
    pub http_version: http::Version,
}

/// Per-core HTTP limits. Every queue and buffer on the connection path is bounded by one.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections per core on the public listeners: TCP connections are admitted while
    /// the TCP ones are under it, QUIC ones while TCP and QUIC together are. Beyond it a new
    /// connection is closed right after accept (cheaper than keeping it in the backlog, and
    /// visible).
    pub max_connections_per_core: usize,
    /// Open connections on the admin listener, counted apart from the public ones (and from
    /// the per-address table): voters or SSE holders filling the public table cannot lock the
    /// operator out, and the admin listener cannot take the voters' share.
    pub max_admin_connections: usize,
    /// Slowloris bound: a new connection must deliver its first request head within this time
    /// (on TLS listeners: finish the handshake *and* deliver its first head, both counted from
    /// accept), and on HTTP/1.1 a request head must complete within this time of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this time (h2: GOAWAY first).
    pub idle_timeout: Duration,
    /// Slow-read bound: a connection whose responses yield no frame for this long (its client
    /// does not read, or keeps its h2 window shut) is closed at once. Streaming responses must
    /// send something more often (the results stream's heartbeat).
    pub response_stall_timeout: Duration,
    /// Open connections per source address, per core: one address (or a few) cannot take the
    /// whole table. Generous: carrier-grade NAT puts many voters behind one address.
    pub max_connections_per_addr: usize,
    /// Request line + headers (HTTP/1.1: 431 beyond it; h2: SETTINGS_MAX_HEADER_LIST_SIZE).
    /// At least 8192 (hyper's minimum read buffer).
    pub max_header_bytes: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on h2 connections.
    pub h2_max_concurrent_streams: u32,
    /// After an idle GOAWAY/close, how long a connection may take to wind down.
    pub graceful_close_timeout: Duration,
    /// listen(2) backlog of each core's socket.
    pub listen_backlog: i32,
    /// New QUIC handshakes per second and core above which a client must first prove its
    /// address with a Retry round trip.
    pub h3_retry_above_handshakes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections_per_core: 16_384,
            max_admin_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            response_stall_timeout: Duration::from_secs(30),
            max_connections_per_addr: 4_096,
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 128,
            graceful_close_timeout: Duration::from_secs(5),
            listen_backlog: 1024,
            h3_retry_above_handshakes: 1_000,
        }
    }
}

impl HttpLimits {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_connections_per_core == 0 {
            return Err("max_connections_per_core must be > 0".into());
        }
        if self.max_admin_connections == 0 {
            return Err("max_admin_connections must be > 0".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("max_header_bytes must be >= 8192 (hyper's minimum buffer)".into());
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err("h2_max_concurrent_streams must be > 0".into());
        }
        if self.max_connections_per_addr == 0 {
            return Err("max_connections_per_addr must be > 0".into());
        }
        if self.header_read_timeout.is_zero()
            || self.idle_timeout.is_zero()
            || self.response_stall_timeout.is_zero()
        {
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
    fn handle(&self, kind: ListenerKind, peer: SocketAddr, req: AppRequest) -> AppResponse;

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
    /// Connections closed at accept because their source address had its share open.
    pub rejected_over_addr_cap: u64,
    /// Connections closed because no request head arrived in time (on TLS listeners the
    /// handshake counts against the same bound, so a stalled handshake lands here).
    pub header_timeouts: u64,
    pub idle_closes: u64,
    /// Connections closed because a response made no progress (slow or stalled reader).
    pub stalled_closes: u64,
    pub handler_panics: u64,
    /// TLS handshakes that failed: not TLS at all (plain HTTP to the TLS port), no common
    /// version, cipher suite or ALPN id, or the peer closed mid-handshake (a TCP health check
    /// that connects and closes counts here too). Logged at debug level only: a flood of them
    /// must not fill the log.
    pub tls_handshake_failures: u64,
    /// Connections to a `--proxy-protocol` listener closed because they did not start with a
    /// valid PROXY v2 header (a client reaching the listener directly, a misconfigured balancer).
    pub proxy_header_refusals: u64,
    /// HTTP/3: open QUIC connections, connections established, requests, Retry packets sent
    /// (address validation under handshake pressure), connections refused over a cap, and
    /// handshakes that failed or timed out.
    pub h3_open_connections: usize,
    pub h3_connections: u64,
    pub h3_requests: u64,
    pub h3_retries: u64,
    pub h3_refused: u64,
    pub h3_handshake_failures: u64,
}
