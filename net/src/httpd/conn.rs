//! One accepted connection: sniff or TLS handshake, serve with hyper, enforce the watchdog,
//! drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use http::{Request, Response, StatusCode};
use http_body::{Body, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1::Parts;

use super::detached::DetachedResponse;
use super::io::{Io, StartError, Started, read_proxy_header, start};
use super::per_core::{CoreHttp, InFlight, LocalExec, SourceSlot};
use super::watchdog::{ConnState, Expiry, Proto};
use super::{App, AppResponse, ConnInfo, ListenerKind};
use crate::body::{BoxBody, BoxError, FramePoll};

/// The response body as hyper sees it: the app's body plus the in-flight guard, released when
/// hyper drops the body (after the last byte, or on abort).
pub(crate) struct TrackedBody {
    inner: BoxBody,
    guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            // hyper polls only when it can write: a frame is the client keeping up.
            this.guard.progress();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Svc<A: App> {
    app: Rc<A>,
    core: Rc<CoreHttp>,
    conn: Rc<ConnState>,
    kind: ListenerKind,
    peer: SocketAddr,
    info: ConnInfo,
    /// What runs on the socket once hyper hands it over.
    takeover: PendingTakeover,
}

/// What the connection task runs once hyper is done with the socket.
enum Takeover {
    /// A WebSocket session the app accepted (its `101`).
    WebSocket(crate::ws::Session),
    /// A long-lived HTTP/1.1 response the app marked with
    /// [`detached_stream`](super::detached::detached_stream).
    Detached(DetachedResponse),
}

type PendingTakeover = Rc<std::cell::RefCell<Option<Takeover>>>;

impl<A: App> hyper::service::Service<Request<Incoming>> for Svc<A> {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = SvcFuture;

    fn call(&self, req: Request<Incoming>) -> SvcFuture {
        // Only an HTTP/1.1 request that asks to upgrade, or an h2 CONNECT (RFC 8441's
        // extended CONNECT: the stream becomes the tunnel), can become a WebSocket session.
        let can_upgrade = req.version() == http::Version::HTTP_11
            && req.headers().contains_key(http::header::UPGRADE);
        let mut req = req;
        let tunnel = (req.version() == http::Version::HTTP_2
            && req.method() == http::Method::CONNECT)
            .then(|| hyper::upgrade::on(&mut req));
        // An HTTP/1.x response is the connection's only one while it lasts: it can leave hyper.
        let can_detach = req.version() <= http::Version::HTTP_11;
        let mut req = req.map(crate::RequestBody::Http);
        req.extensions_mut().insert(self.info);
        let guard = InFlight::start(self.conn.clone(), self.core.clone());
        // A panic while *creating* the future is caught like one while polling it.
        let inner = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.app.handle(self.kind, self.peer, req)
        }));
        // Over TLS, tell the client the same origin speaks HTTP/3 (RFC 7838).
        let alt_svc = if self.info.tls && self.kind == ListenerKind::Public {
            self.core.alt_svc.borrow().clone()
        } else {
            None
        };
        SvcFuture {
            inner: inner.ok(),
            guard: Some(guard),
            alt_svc,
            can_upgrade,
            tunnel,
            can_detach,
            detached: false,
            takeover: self.takeover.clone(),
        }
    }
}

struct SvcFuture {
    inner: Option<AppResponse>,
    guard: Option<InFlight>,
    alt_svc: Option<http::HeaderValue>,
    can_upgrade: bool,
    /// The stream of an h2 CONNECT, once its `200` is sent.
    tunnel: Option<hyper::upgrade::OnUpgrade>,
    can_detach: bool,
    /// The response left for the connection task: hyper waits on this future until it is
    /// dropped with the rest of hyper's connection.
    detached: bool,
    takeover: PendingTakeover,
}

impl Future for SvcFuture {
    type Output = Result<Response<TrackedBody>, Infallible>;

    /// Long because one poll decides what the handler's answer asks of the connection (a
    /// WebSocket upgrade, an h2 tunnel, a detached stream, Alt-Svc) where hyper still holds the
    /// response.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.detached {
            return Poll::Pending;
        }
        let polled = match this.inner.as_mut() {
            Some(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))),
            None => Err(Box::new("handler panicked while building its future")
                as Box<dyn std::any::Any + Send>),
        };
        let mut resp = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(resp)) => resp,
            Err(_) => {
                // Never let a handler bug take the reactor down; the panic message was printed
                // by the panic hook already.
                this.inner = None;
                let guard = this.guard.as_ref().expect("polled after completion");
                guard.core.handler_panicked();
                unavailable()
            }
        };
        if let Some(session) = crate::ws::take_parked(&mut resp) {
            match (this.can_upgrade, this.tunnel.take(), resp.status()) {
                (true, _, StatusCode::SWITCHING_PROTOCOLS) => {
                    let mut pending = this.takeover.borrow_mut();
                    assert!(pending.is_none(), "one takeover per connection");
                    *pending = Some(Takeover::WebSocket(session));
                }
                (_, Some(tunnel), StatusCode::OK) => {
                    // hyper sends the 200 and then hands the stream over, outside this future:
                    // the session runs in a task of its own, counted like a response being
                    // written (the watchdog's stall bound and the shutdown drain see it).
                    let guard = this.guard.as_ref().expect("polled after completion");
                    let session_guard =
                        InFlight::start(guard.conn.clone(), guard.core.clone()).responding();
                    glommio::spawn_local(async move {
                        match tunnel.await {
                            Ok(upgraded) => {
                                let socket = crate::ws::Socket::h2(upgraded, session_guard);
                                session(socket).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "an h2 CONNECT never opened"),
                        }
                    })
                    .detach();
                }
                // The app accepted a handshake that cannot become a session: its bug.
                _ => {
                    tracing::error!("a WebSocket session answered a request that cannot upgrade");
                    resp = unavailable();
                }
            }
        } else if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            tracing::error!("101 without a session to run");
            resp = unavailable();
        }
        if let Some(v) = this.alt_svc.take() {
            resp.headers_mut().insert(http::header::ALT_SVC, v);
        }
        if super::detached::take_mark(&mut resp) && this.can_detach {
            // Counted as responding from now: the stall bound covers the wait for hyper's
            // flush of what it still holds.
            let guard = this
                .guard
                .take()
                .expect("polled after completion")
                .responding();
            guard.conn.request_detach();
            this.guard = Some(guard);
            let mut pending = this.takeover.borrow_mut();
            assert!(pending.is_none(), "one takeover per connection");
            *pending = Some(Takeover::Detached(DetachedResponse::new(resp)));
            this.detached = true;
            return Poll::Pending;
        }
        let guard = this
            .guard
            .take()
            .expect("polled after completion")
            .responding();
        Poll::Ready(Ok(resp.map(|inner| TrackedBody { inner, guard })))
    }
}

pub(crate) fn unavailable() -> Response<BoxBody> {
    let body = crate::error_body(
        votes_core::ErrorCode::Unavailable,
        "internal error, retry later",
    );
    let mut resp = Response::new(BoxBody::full(body));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// The two hyper connection types behind one interface.
trait GracefulConn: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<S> GracefulConn for hyper::server::conn::http1::Connection<Io, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = TrackedBody>,
    S::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S> GracefulConn for hyper::server::conn::http2::Connection<Io, S, LocalExec>
where
    S: hyper::service::HttpService<Incoming, ResBody = TrackedBody>,
    S::Error: Into<BoxError>,
    S::Future: 'static,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How a connection ended, for counters.
enum End {
    Done,
    HeaderTimeout,
    IdleTimeout,
    Stalled,
    /// A response asked to leave hyper and hyper has flushed: the socket is the task's.
    Detached,
}

/// How a connection came in.
pub(crate) struct Accepted {
    pub(crate) kind: ListenerKind,
    pub(crate) tls: Option<TlsAcceptor>,
    /// A PROXY v2 header comes first and names the client.
    pub(crate) proxy_protocol: bool,
    /// The socket's peer: the client, or the balancer when `proxy_protocol`.
    pub(crate) peer: SocketAddr,
}

/// Serves one connection to completion. Registered in the core's table by the caller.
pub(crate) async fn serve<A: App>(
    core: Rc<CoreHttp>,
    app: Rc<A>,
    conn: Rc<ConnState>,
    stream: TcpStream,
    how: Accepted,
) {
    let Accepted {
        kind,
        tls,
        proxy_protocol,
        peer,
    } = how;
    let t = core.timeouts();
    // Stays open as long as the connection: `Io` owns the stream until `drive` returns.
    let fd = stream.as_raw_fd();
    let Some(Opened {
        proto,
        info,
        io,
        peer,
        proxied_source: _proxied_source,
    }) = open(&core, &conn, stream, tls.as_ref(), proxy_protocol, peer).await
    else {
        return;
    };
    let takeover: PendingTakeover = Rc::default();
    let svc = Svc {
        app,
        core: core.clone(),
        conn: conn.clone(),
        kind,
        peer,
        info,
        takeover: takeover.clone(),
    };
    let end = match proto {
        Proto::H2 => {
            let c = core.h2.serve_connection(io, svc);
            drive(std::pin::pin!(c), &conn, &core, fd).await
        }
        Proto::H1 | Proto::Unknown => {
            let mut c = core.h1.serve_connection(io, svc);
            let end = drive(Pin::new(&mut c), &conn, &core, fd).await;
            // hyper stops after writing a 101 and hands the socket back, and a detached
            // response takes it once hyper has flushed: either runs in this task, so the
            // connection's slot stays taken while it lasts.
            let taken = takeover.borrow_mut().take();
            match (end, taken) {
                // Only what the session needs is kept of hyper's parts: the rest (its service,
                // and for a detached response its 8 KiB read buffer, shared by what it parsed)
                // is dropped here, not when the session ends.
                (End::Done, Some(Takeover::WebSocket(session))) => {
                    let Parts { io, read_buf, .. } = c.into_parts();
                    session(crate::ws::Socket::tcp(io, read_buf)).await;
                    return;
                }
                (End::Detached, Some(Takeover::Detached(response))) => {
                    // What the client sent after this request (nothing, from a browser) would
                    // be a request never answered: dropped with the buffer.
                    let Parts { io, .. } = c.into_parts();
                    let end = super::detached::serve(io, response, t.response_stall).await;
                    tracing::debug!(?end, "a detached response ended");
                    if end == super::detached::DetachedEnd::Stalled {
                        core.count_stalled();
                    }
                    return;
                }
                (End::Detached, _) => unreachable!("detached without a detached response"),
                (end, _) => end,
            }
        }
    };
    match end {
        End::Done => {}
        End::Detached => unreachable!("only an HTTP/1.1 response detaches"),
        End::HeaderTimeout => core.count_end(true, false),
        End::IdleTimeout => core.count_end(false, true),
        End::Stalled => core.count_stalled(),
    }
}

/// A connection ready for hyper: its protocol, what the app learns of it, its I/O, its
/// client, and (behind a proxy) the client's place in the per-address table, held as long as
/// the connection.
struct Opened {
    proto: Proto,
    info: ConnInfo,
    io: Io,
    peer: SocketAddr,
    proxied_source: Option<SourceSlot>,
}

/// The PROXY header, then sniff or handshake, bounded together by the fresh-connection
/// deadline and by shutdown; `None` (logged at debug, counted) when the connection ends
/// before it is ready.
///
/// Long because the PROXY header, the sniff or handshake share one deadline and one shutdown, and
/// each way the opening can end is counted where it ends.
async fn open(
    core: &Rc<CoreHttp>,
    conn: &Rc<ConnState>,
    mut stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    proxy_protocol: bool,
    mut peer: SocketAddr,
) -> Option<Opened> {
    let t = core.timeouts();
    let mut proxied_source = None;
    let started = {
        let (at, why) = conn.deadline(t).expect("a fresh connection has a deadline");
        debug_assert_eq!(why, Expiry::HeaderTimeout);
        let timeout = at.saturating_duration_since(Instant::now());
        let shutdown = core.shutdown_signal();
        let peer = &mut peer;
        let proxied_source = &mut proxied_source;
        futures_lite::future::or(
            async {
                if proxy_protocol {
                    match read_proxy_header(&mut stream).await {
                        Ok(votes_core::proxy_header::Proxied::Client { source, .. }) => {
                            *peer = source;
                            match core.admit_proxied(source.ip()) {
                                Some(slot) => *proxied_source = Some(slot),
                                // Counted by the cap; closed without an answer, as at accept.
                                None => return Some(Ok(Started::Closed)),
                            }
                        }
                        // The balancer's own connection (a health check): its address is
                        // the client's.
                        Ok(votes_core::proxy_header::Proxied::Local) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(start(stream, tls, conn.clone()).await)
            },
            futures_lite::future::or(
                async {
                    Timer::new(timeout).await;
                    None
                },
                async {
                    shutdown.await;
                    None
                },
            ),
        )
        .await
    };
    match started {
        Some(Ok(Started::Proto(proto, info, io))) => {
            return Some(Opened {
                proto,
                info,
                io,
                peer,
                proxied_source,
            });
        }
        Some(Ok(Started::Closed)) => {}
        Some(Err(StartError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "connection failed before its first request");
        }
        Some(Err(StartError::ProxyHeader(why))) => {
            // Debug only, like handshake failures: whoever reaches the listener directly can
            // make them in floods; the counter is what operators watch.
            tracing::debug!(%peer, %why, "connection refused: no valid PROXY v2 header");
            core.proxy_header_refused();
        }
        Some(Err(StartError::Handshake(e))) => {
            // Debug only: handshake failures are the peer's doing and can come in floods
            // (scanners, plain HTTP to the TLS port); the counter is what operators watch.
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            core.tls_handshake_failed();
        }
        None => {
            if !core.is_shutting_down() {
                core.count_end(true, false);
            }
        }
    }
    None
}

/// Polls the hyper connection and enforces the watchdog deadline and shutdown on it.
///
/// Long because it is one poll loop over hyper's connection, the watchdog's deadline and
/// shutdown, each ending told apart.
async fn drive<C: GracefulConn>(
    mut c: Pin<&mut C>,
    conn: &ConnState,
    core: &CoreHttp,
    fd: RawFd,
) -> End {
    let t = core.timeouts();
    let grace = core.limits().graceful_close_timeout;
    let mut timer: Option<(Instant, Timer)> = None;
    // Set once graceful shutdown was asked of hyper; the Instant bounds an idle wind-down.
    let mut graceful: Option<Option<Instant>> = None;
    let mut idle_closed = false;
    futures_lite::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(res) = c.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Poll::Ready(if idle_closed {
                    End::IdleTimeout
                } else {
                    End::Done
                });
            }
            if conn.detach_ready() {
                return Poll::Ready(End::Detached);
            }
            conn.register(cx.waker());
            let now = Instant::now();
            if conn.shutdown_requested() && graceful.is_none() {
                // Server shutdown: finish what is in flight; the core's drain bound stops the rest.
                c.as_mut().graceful();
                graceful = Some(None);
                continue;
            }
            let due = match graceful {
                Some(Some(hard)) => Some((hard, None)),
                Some(None) => None,
                None => conn.deadline(t).map(|(at, why)| (at, Some(why))),
            };
            let Some((at, why)) = due else {
                timer = None;
                return Poll::Pending;
            };
            if now >= at {
                match why {
                    None => return Poll::Ready(End::IdleTimeout),
                    Some(Expiry::HeaderTimeout) => return Poll::Ready(End::HeaderTimeout),
                    Some(Expiry::Stalled) => return Poll::Ready(End::Stalled),
                    Some(Expiry::SendStalled) => {
                        if conn.send_stall_expired(super::io::bytes_acked(fd)) {
                            return Poll::Ready(End::Stalled);
                        }
                        continue;
                    }
                    Some(Expiry::Idle) => {
                        c.as_mut().graceful();
                        graceful = Some(Some(now + grace));
                        idle_closed = true;
                        continue;
                    }
                }
            }
            match &mut timer {
                Some((armed, tm)) => {
                    if *armed != at {
                        tm.reset(at - now);
                        *armed = at;
                    }
                }
                None => timer = Some((at, Timer::new(at - now))),
            }
            let (_, tm) = timer.as_mut().expect("armed above");
            if Pin::new(tm).poll(cx).is_ready() {
                timer = None;
                continue; // due now: decide on the next turn
            }
            return Poll::Pending;
        }
    })
    .await
}
