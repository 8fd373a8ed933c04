//! HTTP/3 on the reactors (docs/design.md §1, §4.1 `--https` over UDP): one quinn endpoint per core on
//! its own SO_REUSEPORT UDP socket (the kernel keeps a 4-tuple on one core), driven by our
//! glommio runtime ([`super::quic_runtime`]); the `h3` crate on top; requests go to the same
//! [`App`] as over TCP, so every answer is the same.
//!
//! Limits at the transport: streams per connection (the h2 setting), the idle timeout, the
//! per-address and per-core connection caps shared with TCP, a bounded body read within the
//! header timeout, and address validation: above `retry_above_handshakes` new handshakes per
//! second on the core, a connection must first echo a Retry token (one round trip more, but a
//! spoofed source cannot make us do handshake work). Connection migration is off: after a
//! client's address changes the kernel would hash its packets to another core, whose endpoint
//! does not know the connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::per_core::CoreHttp;
use super::quic_runtime::{GlommioRuntime, GlommioUdpSocket};
use super::{Alpn, App, ConnInfo, ListenerKind};
use crate::body::{BoxBody, RequestBody};
use crate::signal::within;

/// Largest request body the HTTP/3 layer reads before the app sees the request; the app's own
/// limits (1 KiB for a vote) are lower, and a larger body is answered 413 here.
pub(crate) const H3_BODY_MAX: usize = 64 * 1024;

/// The QUIC server configuration of a TLS listener: the same certificate, ALPN `h3`, TLS 1.3
/// only (QUIC requires it), no 0-RTT (early data can be replayed, and a vote must not be).
pub(crate) fn server_config(
    tls: &rustls::ServerConfig,
    limits: &super::HttpLimits,
) -> Result<quinn::ServerConfig, String> {
    let mut crypto = tls.clone();
    crypto.alpn_protocols = vec![crate::tls::ALPN_H3.to_vec()];
    crypto.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| format!("the TLS configuration cannot serve QUIC: {e}"))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.h2_max_concurrent_streams.into())
        // The peer's control and QPACK streams; nothing else is accepted.
        .max_concurrent_uni_streams(3u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout)
                .map_err(|e| format!("idle timeout: {e}"))?,
        ));
    cfg.transport_config(Arc::new(transport));
    cfg.migration(false);
    Ok(cfg)
}

/// Handshakes per second on this core, over a sliding one-second window of two buckets.
struct HandshakeRate {
    window_start: Cell<Instant>,
    current: Cell<u64>,
    previous: Cell<u64>,
}

impl HandshakeRate {
    fn new() -> Self {
        Self {
            window_start: Cell::new(Instant::now()),
            current: Cell::new(0),
            previous: Cell::new(0),
        }
    }

    /// Counts one handshake and returns the rate including it.
    fn count(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.window_start.get());
        if elapsed >= Duration::from_secs(2) {
            self.previous.set(0);
            self.current.set(0);
            self.window_start.set(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.previous.set(self.current.get());
            self.current.set(0);
            self.window_start.set(now);
        }
        self.current.set(self.current.get() + 1);
        self.current.get() + self.previous.get()
    }
}

/// Serves HTTP/3 on `socket` until shutdown.
pub(crate) async fn serve<A: App>(
    core: Rc<CoreHttp>,
    app: Rc<A>,
    socket: std::net::UdpSocket,
    cfg: quinn::ServerConfig,
) {
    let sock = match GlommioUdpSocket::new(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "HTTP/3: cannot set up the UDP socket");
            return;
        }
    };
    let endpoint = match quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(cfg),
        sock,
        Arc::new(GlommioRuntime::default()),
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "HTTP/3: cannot start the endpoint");
            return;
        }
    };
    let rate = HandshakeRate::new();
    loop {
        let shutdown = core.shutdown_signal();
        let next = async { endpoint.accept().await }
            .or(async {
                shutdown.await;
                None
            })
            .await;
        let Some(incoming) = next else { break };
        let h3 = &core.h3;
        let peer = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        if !validated && rate.count(Instant::now()) > core.limits().h3_retry_above_handshakes {
            // Under handshake pressure, make the source prove it receives at its address.
            h3.retries.set(h3.retries.get() + 1);
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "HTTP/3: retry not possible");
            }
            continue;
        }
        let Some(slot) = core.admit_quic(peer.ip()) else {
            h3.refused.set(h3.refused.get() + 1);
            incoming.refuse();
            continue;
        };
        let (core2, app2) = (core.clone(), app.clone());
        glommio::spawn_local(async move {
            let _slot = slot;
            connection(core2, app2, incoming, peer).await;
        })
        .detach();
    }
    // Open connections get CONNECTION_CLOSE; their requests were drained with the TCP ones.
    endpoint.close(0u32.into(), b"shutting down");
    tracing::debug!("HTTP/3 endpoint stopped");
}

async fn connection<A: App>(
    core: Rc<CoreHttp>,
    app: Rc<A>,
    incoming: quinn::Incoming,
    peer: SocketAddr,
) {
    let timeout = core.limits().header_read_timeout;
    let handshake = within(timeout, async { incoming.await }).await;
    let conn = match handshake {
        Some(Ok(c)) => c,
        _ => {
            core.h3
                .handshake_failures
                .set(core.h3.handshake_failures.get() + 1);
            return;
        }
    };
    core.h3.connections.set(core.h3.connections.get() + 1);
    let built = h3::server::builder()
        .max_field_section_size(core.limits().max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3c = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3: connection setup failed");
            return;
        }
    };
    loop {
        let shutdown = core.shutdown_signal();
        let next = async { Some(h3c.accept().await) }
            .or(async {
                shutdown.await;
                None
            })
            .await;
        match next {
            Some(Ok(Some(resolver))) => {
                let (core, app) = (core.clone(), app.clone());
                glommio::spawn_local(async move {
                    if let Err(e) = request(core, app, resolver, peer).await {
                        tracing::debug!(%peer, error = %e, "HTTP/3 request ended early");
                    }
                })
                .detach();
            }
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                }
                return;
            }
            None => {
                // GOAWAY: the client finishes what it sent and opens no more requests here.
                let _ = h3c.shutdown(0).await;
                return;
            }
        }
    }
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// One request of an HTTP/3 connection: its body read (bounded), the app's answer, and the
/// answer's frames sent as they come.
async fn request<A: App>(
    core: Rc<CoreHttp>,
    app: Rc<A>,
    resolver: Resolver,
    peer: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let (req, mut stream) = resolver.resolve_request().await?;
    core.h3.requests.set(core.h3.requests.get() + 1);
    let _in_flight = core.clone().request_guard();
    // The body, bounded in size and in time (a trickled body must not hold the stream).
    let body = within(core.limits().header_read_timeout, read_body(&mut stream)).await;
    let resp = match body {
        None => refusal(
            StatusCode::BAD_REQUEST,
            votes_core::ErrorCode::InvalidRequest,
            "the body did not arrive in time",
        ),
        Some(Ok(None)) => refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            votes_core::ErrorCode::TooLarge,
            &format!("the body is larger than {H3_BODY_MAX} bytes"),
        ),
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(Some(bytes))) => {
            let mut req: Request<RequestBody> =
                req.map(|()| RequestBody::Read((!bytes.is_empty()).then_some(bytes)));
            req.extensions_mut().insert(ConnInfo {
                tls: true,
                alpn: Some(Alpn::H3),
                http_version: http::Version::HTTP_3,
            });
            answer(&core, &*app, peer, req).await
        }
    };
    let (parts, body) = resp.into_parts();
    stream
        .send_response(Response::from_parts(parts, ()))
        .await?;
    send_body(&core, &mut stream, body).await
}

/// The request's body, whole; `None` past [`H3_BODY_MAX`].
async fn read_body(stream: &mut Stream) -> Result<Option<Bytes>, h3::error::StreamError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        if body.len() + chunk.remaining() > H3_BODY_MAX {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            body.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(Some(body.freeze()))
}

/// The app's answer; a `503` (counted) when its handler panics, so a bug never takes the
/// reactor down.
async fn answer<A: App>(
    core: &CoreHttp,
    app: &A,
    peer: SocketAddr,
    req: Request<RequestBody>,
) -> Response<BoxBody> {
    let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        app.handle(ListenerKind::Public, peer, req)
    }));
    match handled {
        Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(resp) => resp,
            Err(_) => {
                core.handler_panicked();
                super::conn::unavailable()
            }
        },
        Err(_) => {
            core.handler_panicked();
            super::conn::unavailable()
        }
    }
}

/// The answer's frames as they come: a results stream (SSE) stays open and sends each event,
/// until shutdown; a client that stops reading is cut off after the stall bound.
async fn send_body(
    core: &CoreHttp,
    stream: &mut Stream,
    mut body: BoxBody,
) -> Result<(), Box<dyn std::error::Error>> {
    let stall = core.limits().response_stall_timeout;
    loop {
        let frame = async { Some(body.frame().await) }
            .or(async {
                core.shutdown_signal().await;
                None
            })
            .await;
        let Some(Some(frame)) = frame else { break };
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            // A client that stops reading holds the stream's flow control shut.
            let sent = within(stall, stream.send_data(data)).await;
            match sent {
                Some(r) => r?,
                None => {
                    core.count_stalled();
                    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                    return Ok(());
                }
            }
        }
    }
    stream.finish().await?;
    Ok(())
}

fn refusal(status: StatusCode, code: votes_core::ErrorCode, message: &str) -> Response<BoxBody> {
    let mut resp = Response::new(BoxBody::full(crate::error_body(code, message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
