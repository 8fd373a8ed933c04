//! The generator's HTTP client: a fixed number of connections to one target.
//!
//! HTTP/1.1 keeps `N` keep-alive connections and sends one request at a time on each (a request
//! waits, FIFO, for a free connection, and that wait is part of its latency); h2 (h2c with prior
//! knowledge on `http://`, ALPN `h2` on `https://`) opens `N` connections and multiplexes
//! streams over them round-robin; h3 opens `N` QUIC connections (`https://` only, ALPN `h3`,
//! each its own UDP socket) and sends each request on its own bidirectional stream, round-robin.
//! A broken connection is replaced on its next use. With source addresses, connection `i`
//! binds to `sources[i % len]` (its TCP or UDP socket): many voters behind different addresses,
//! as per-address limits see them.
//!
//! `https://` targets need a [`Trust`]: a CA or self-signed certificate (`--ca-cert`), or none
//! at all (`--insecure`, testing only).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
    H3,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown protocol {0:?}: expected h1, h2 or h3")]
    Unknown(String),
}

impl std::str::FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "h1" | "http1" | "http/1.1" => Ok(Self::H1),
            "h2" | "h2c" | "http2" => Ok(Self::H2),
            "h3" | "http3" => Ok(Self::H3),
            _ => Err(ProtocolError::Unknown(s.to_string())),
        }
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
            Self::H3 => "h3",
        }
    }
}

/// How an `https://` target's certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// Nothing configured: an `https://` target is refused.
    #[default]
    Unset,
    /// Trust the certificates of this PEM file (a CA, or the server's self-signed certificate).
    CaFile(PathBuf),
    /// No verification at all (`--insecure`): for tests on a trusted machine only, never
    /// across a network anyone else can reach.
    Insecure,
}

impl Trust {
    /// From the `--ca-cert` and `--insecure` flags (`--ca-cert` wins).
    pub fn from_flags(ca_cert: Option<PathBuf>, insecure: bool) -> Self {
        match (ca_cert, insecure) {
            (Some(p), _) => Self::CaFile(p),
            (None, true) => Self::Insecure,
            (None, false) => Self::Unset,
        }
    }
}

/// A target URL reduced to what the client needs: `http[s]://host[:port]`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, what to connect to and the `Host`/`:authority`.
    pub authority: String,
    /// The host alone (TLS server name).
    pub host: String,
    /// `https://`: TLS (and the only scheme HTTP/3 accepts).
    pub tls: bool,
    /// How the server's certificate is checked (`https://` only).
    pub trust: Trust,
}

impl Target {
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid --target {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Invalid(String),
    #[error("--target {0:?}: only http:// and https:// are supported")]
    Scheme(String),
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|_| TargetError::Invalid(s.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(TargetError::Scheme(s.to_string())),
            None => return Err(TargetError::Invalid(s.to_string())),
        };
        let auth = uri
            .authority()
            .ok_or_else(|| TargetError::Invalid(s.to_string()))?;
        if !matches!(uri.path(), "" | "/") {
            return Err(TargetError::Invalid(s.to_string()));
        }
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = auth.host().to_string();
        Ok(Self {
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            tls,
            trust: Trust::Unset,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    #[error("body: {0}")]
    Body(#[source] hyper::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Config(String),
    #[error("quic connect: {0}")]
    Quic(String),
    #[error("h3: {0}")]
    H3(String),
    #[error("an extended CONNECT needs an h2 client")]
    NotH2,
}

impl ClientError {
    /// A short label for the report's error counts.
    pub fn label(&self) -> String {
        let s = self.to_string();
        match s.char_indices().nth(80) {
            Some((i, _)) => s[..i].to_string(),
            None => s,
        }
    }
}

/// An answered request: status and whole body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Source addresses handed out round-robin to new connections (none: the kernel chooses).
struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        Some(self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()])
    }
}

/// The address of `authority` to connect to: the first, or the first of `source`'s family.
async fn resolve(authority: &str, source: Option<IpAddr>) -> Result<SocketAddr, ClientError> {
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .map_err(ClientError::Connect)?;
    let found = match source {
        None => addrs.next(),
        Some(src) => addrs.find(|a| a.is_ipv4() == src.is_ipv4()),
    };
    found.ok_or_else(|| {
        ClientError::Connect(std::io::Error::other(match source {
            None => format!("{authority} has no address"),
            Some(src) => format!("{authority} has no address of the family of source {src}"),
        }))
    })
}

async fn tcp(authority: &str, source: Option<IpAddr>) -> Result<TcpStream, ClientError> {
    let s = match source {
        None => TcpStream::connect(authority)
            .await
            .map_err(ClientError::Connect)?,
        Some(src) => {
            let to = resolve(authority, Some(src)).await?;
            let sock = if to.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(ClientError::Connect)?;
            if src.is_ipv4() {
                crate::sys::bind_address_no_port(&sock).map_err(ClientError::Connect)?;
            }
            sock.bind(SocketAddr::new(src, 0))
                .map_err(ClientError::Connect)?;
            sock.connect(to).await.map_err(ClientError::Connect)?
        }
    };
    s.set_nodelay(true).map_err(ClientError::Connect)?;
    Ok(s)
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate (`--insecure`); handshake signatures are still checked, so the
/// peer holds the key of the certificate it showed, whoever that is.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificates of a PEM file.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(certs)
}

/// A rustls client configuration for `target` offering `alpn` (TLS 1.3 only for QUIC).
fn tls_config(
    target: &Target,
    alpn: &[u8],
    tls13_only: bool,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut cfg = match &target.trust {
        Trust::Unset => {
            return Err(ClientError::Config(format!(
                "{}://{} needs --ca-cert PEM (or --insecure, testing only)",
                target.scheme(),
                target.authority
            )));
        }
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A TCP connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to open a TCP connection (h1, h2) to the target: plain, or TLS with this connector.
struct Dial {
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dial {
    fn new(target: &Target, protocol: Protocol) -> Result<Self, ClientError> {
        let tls = if target.tls {
            let alpn: &[u8] = match protocol {
                Protocol::H2 => b"h2",
                _ => b"http/1.1",
            };
            let cfg = tls_config(target, alpn, false)?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| ClientError::Tls(format!("server name {:?}: {e}", target.host)))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Self {
            authority: target.authority.clone(),
            tls,
        })
    }

    async fn stream(&self, source: Option<IpAddr>) -> Result<Stream, ClientError> {
        let tcp = tcp(&self.authority, source).await?;
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ClientError::Tls(e.to_string()))?,
            )),
        })
    }

    async fn io(&self, source: Option<IpAddr>) -> Result<TokioIo<Stream>, ClientError> {
        Ok(TokioIo::new(self.stream(source).await?))
    }

    async fn h1(&self, source: Option<IpAddr>) -> Result<http1::SendRequest<Body>, ClientError> {
        let (send, conn) = http1::handshake(self.io(source).await?)
            .await
            .map_err(ClientError::Handshake)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    async fn h2(&self, source: Option<IpAddr>) -> Result<http2::SendRequest<Body>, ClientError> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake(self.io(source).await?)
            .await
            .map_err(ClientError::Handshake)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}

/// Opens HTTP/1.1 connections (plain, or TLS with ALPN `http/1.1`) for a caller that speaks
/// on them itself, byte by byte: a results stream read incrementally, a WebSocket.
pub struct RawDialer(Dial);

impl RawDialer {
    pub fn new(target: &Target) -> Result<Self, ClientError> {
        Dial::new(target, Protocol::H1).map(Self)
    }

    /// A new connection, bound to `source` when given.
    pub async fn connect(&self, source: Option<IpAddr>) -> Result<Stream, ClientError> {
        self.0.stream(source).await
    }
}

type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// A response whose body is read as it comes (a results stream), on any protocol.
pub struct Streaming {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    body: StreamingBody,
}

enum StreamingBody {
    Hyper(hyper::body::Incoming),
    H3(Box<H3Stream>),
}

impl Streaming {
    /// The body's next bytes; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.body {
            StreamingBody::Hyper(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(ClientError::Body(e)),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            StreamingBody::H3(stream) => {
                let Some(mut chunk) = stream.recv_data().await.map_err(h3_error)? else {
                    return Ok(None);
                };
                Ok(Some(chunk.copy_to_bytes(chunk.remaining())))
            }
        }
    }
}

/// One open HTTP/3 connection: its QUIC endpoint (UDP socket) and connection, and the h3
/// request sender (cloned per request).
#[derive(Clone)]
struct H3Live {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: H3Send,
}

/// How to open a QUIC + h3 connection to the target.
struct Quic {
    authority: String,
    server_name: String,
    config: quinn::ClientConfig,
}

impl Quic {
    fn new(target: &Target) -> Result<Self, ClientError> {
        if !target.tls {
            return Err(ClientError::Config(format!(
                "HTTP/3 needs an https:// target (got http://{})",
                target.authority
            )));
        }
        let tls = tls_config(target, b"h3", true)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // Quiet spells of a run (a ramp's start) must not reach the idle timeout.
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        Ok(Self {
            authority: target.authority.clone(),
            server_name: target.host.clone(),
            config,
        })
    }

    async fn connect(&self, source: Option<IpAddr>) -> Result<H3Live, ClientError> {
        let to = resolve(&self.authority, source).await?;
        let local = match (source, to) {
            (Some(src), _) => SocketAddr::new(src, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = std::net::UdpSocket::bind(local).map_err(ClientError::Connect)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(ClientError::Connect)?;
        let conn = endpoint
            .connect_with(self.config.clone(), to, &self.server_name)
            .map_err(|e| ClientError::Quic(e.to_string()))?
            .await
            .map_err(|e| ClientError::Quic(e.to_string()))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| ClientError::H3(e.to_string()))?;
        tokio::spawn(async move {
            let _closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Live {
            _endpoint: endpoint,
            conn,
            send,
        })
    }
}

fn h3_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::H3(e.to_string())
}

/// One request on its own bidirectional stream: headers, the whole body, then the answer.
async fn send_h3(mut send: H3Send, req: Request<Body>) -> Result<Answer, ClientError> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|never| match never {})
        .to_bytes();
    let mut stream = send
        .send_request(Request::from_parts(parts, ()))
        .await
        .map_err(h3_error)?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(h3_error)?;
    }
    stream.finish().await.map_err(h3_error)?;
    let resp = stream.recv_response().await.map_err(h3_error)?;
    let mut buf = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(h3_error)? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            buf.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(Answer {
        status: resp.status(),
        body: buf.freeze(),
    })
}

async fn read(resp: hyper::Response<hyper::body::Incoming>) -> Result<Answer, ClientError> {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Body)?
        .to_bytes();
    Ok(Answer { status, body })
}

struct H1Pool {
    permits: Semaphore,
    idle: Mutex<Vec<Option<http1::SendRequest<Body>>>>,
}

/// Gives a connection (or its absence, after a failure or cancellation) back to the pool.
struct H1Slot<'a> {
    pool: &'a H1Pool,
    conn: Option<http1::SendRequest<Body>>,
}

impl Drop for H1Slot<'_> {
    fn drop(&mut self) {
        self.pool
            .idle
            .lock()
            .expect("pool lock")
            .push(self.conn.take());
    }
}

/// A multiplexed connection (h2 or h3), replaced on its next use once it is closed.
struct Muxed<S> {
    live: Mutex<Option<S>>,
    reconnect: tokio::sync::Mutex<()>,
}

impl<S> Muxed<S> {
    fn new(s: S) -> Self {
        Self {
            live: Mutex::new(Some(s)),
            reconnect: tokio::sync::Mutex::new(()),
        }
    }
}

enum Pool {
    H1(H1Pool, Dial),
    H2 {
        conns: Vec<Muxed<http2::SendRequest<Body>>>,
        next: AtomicUsize,
        dial: Dial,
    },
    H3 {
        conns: Vec<Muxed<H3Live>>,
        next: AtomicUsize,
        quic: Quic,
    },
}

pub struct Client {
    target: Target,
    protocol: Protocol,
    pool: Pool,
    sources: Sources,
}

impl Client {
    /// Opens all `connections` now, so connection setup is not part of the first latencies.
    pub async fn connect(
        target: Target,
        protocol: Protocol,
        connections: usize,
    ) -> Result<Self, ClientError> {
        Self::connect_from(target, protocol, connections, Vec::new()).await
    }

    /// Like [`Client::connect`], each connection bound to the next of `sources` in turn.
    pub async fn connect_from(
        target: Target,
        protocol: Protocol,
        connections: usize,
        sources: Vec<IpAddr>,
    ) -> Result<Self, ClientError> {
        let sources = Sources {
            addrs: sources,
            next: AtomicUsize::new(0),
        };
        let connections = connections.max(1);
        let pool = match protocol {
            Protocol::H1 => {
                let dial = Dial::new(&target, protocol)?;
                let mut idle = Vec::with_capacity(connections);
                for _ in 0..connections {
                    idle.push(Some(dial.h1(sources.pick()).await?));
                }
                Pool::H1(
                    H1Pool {
                        permits: Semaphore::new(connections),
                        idle: Mutex::new(idle),
                    },
                    dial,
                )
            }
            Protocol::H2 => {
                let dial = Dial::new(&target, protocol)?;
                let mut conns = Vec::with_capacity(connections);
                for _ in 0..connections {
                    conns.push(Muxed::new(dial.h2(sources.pick()).await?));
                }
                Pool::H2 {
                    conns,
                    next: AtomicUsize::new(0),
                    dial,
                }
            }
            Protocol::H3 => {
                let quic = Quic::new(&target)?;
                let mut conns = Vec::with_capacity(connections);
                for _ in 0..connections {
                    conns.push(Muxed::new(quic.connect(sources.pick()).await?));
                }
                Pool::H3 {
                    conns,
                    next: AtomicUsize::new(0),
                    quic,
                }
            }
        };
        Ok(Self {
            target,
            protocol,
            pool,
            sources,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The URI to put in a request for `path`: origin-form for HTTP/1.1 (with a `Host`
    /// header), absolute for h2 and h3 (`:scheme` and `:authority` come from it).
    pub fn uri(&self, path: &str) -> Uri {
        let s = match self.protocol {
            Protocol::H1 => path.to_string(),
            Protocol::H2 | Protocol::H3 => {
                format!("{}://{}{path}", self.target.scheme(), self.target.authority)
            }
        };
        s.parse().expect("paths of the voter API are valid URIs")
    }

    /// A request builder for `uri` with what the protocol needs.
    pub fn request(&self, method: hyper::Method, uri: Uri) -> hyper::http::request::Builder {
        let b = Request::builder().method(method).uri(uri);
        match self.protocol {
            Protocol::H1 => b.header(hyper::header::HOST, self.target.authority.as_str()),
            Protocol::H2 | Protocol::H3 => b,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Answer, ClientError> {
        match &self.pool {
            Pool::H1(pool, dial) => {
                let _permit = pool.permits.acquire().await.expect("never closed");
                let conn = pool
                    .idle
                    .lock()
                    .expect("pool lock")
                    .pop()
                    .expect("a permit guarantees a slot");
                let mut slot = H1Slot { pool, conn: None };
                let mut conn = match conn {
                    Some(c) if !c.is_closed() => c,
                    _ => dial.h1(self.sources.pick()).await?,
                };
                conn.ready().await.map_err(ClientError::Http)?;
                let resp = conn.send_request(req).await.map_err(ClientError::Http)?;
                let answer = read(resp).await?;
                slot.conn = Some(conn);
                Ok(answer)
            }
            Pool::H2 { conns, next, dial } => {
                let mut send = self.next_h2(conns, next, dial).await?;
                send.ready().await.map_err(ClientError::Http)?;
                let resp = send.send_request(req).await.map_err(ClientError::Http)?;
                read(resp).await
            }
            Pool::H3 { conns, next, quic } => {
                let live = self.next_h3(conns, next, quic).await?;
                send_h3(live.send, req).await
            }
        }
    }

    /// Sends `req` and returns as soon as the response head arrives, its body unread. On
    /// HTTP/1.1 the request gets a connection of its own, outside the pool: a long-lived body
    /// would hold a pooled one.
    pub async fn open(&self, req: Request<Body>) -> Result<Streaming, ClientError> {
        let resp = match &self.pool {
            Pool::H1(_, dial) => {
                let mut conn = dial.h1(self.sources.pick()).await?;
                conn.ready().await.map_err(ClientError::Http)?;
                conn.send_request(req).await.map_err(ClientError::Http)?
            }
            Pool::H2 { conns, next, dial } => {
                let mut send = self.next_h2(conns, next, dial).await?;
                send.ready().await.map_err(ClientError::Http)?;
                send.send_request(req).await.map_err(ClientError::Http)?
            }
            Pool::H3 { conns, next, quic } => {
                let live = self.next_h3(conns, next, quic).await?;
                let mut send = live.send;
                let (parts, body) = req.into_parts();
                assert_eq!(
                    hyper::body::Body::size_hint(&body).exact(),
                    Some(0),
                    "a streamed request carries no body"
                );
                let mut stream = send
                    .send_request(Request::from_parts(parts, ()))
                    .await
                    .map_err(h3_error)?;
                stream.finish().await.map_err(h3_error)?;
                let resp = stream.recv_response().await.map_err(h3_error)?;
                return Ok(Streaming {
                    status: resp.status(),
                    headers: resp.headers().clone(),
                    body: StreamingBody::H3(Box::new(stream)),
                });
            }
        };
        let (parts, body) = resp.into_parts();
        Ok(Streaming {
            status: parts.status,
            headers: parts.headers,
            body: StreamingBody::Hyper(body),
        })
    }

    /// Opens a tunnel with an h2 extended CONNECT (RFC 8441) for `protocol` to `path` with
    /// `headers`: the status, and on 2xx the stream as a byte pipe. h2 only.
    pub async fn tunnel(
        &self,
        path: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Option<TokioIo<hyper::upgrade::Upgraded>>), ClientError> {
        let Pool::H2 { conns, next, dial } = &self.pool else {
            return Err(ClientError::NotH2);
        };
        let mut req =
            Request::connect(self.uri(path)).extension(hyper::ext::Protocol::from_static(protocol));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::default()).expect("valid request");
        let mut send = self.next_h2(conns, next, dial).await?;
        send.ready().await.map_err(ClientError::Http)?;
        let resp = send.send_request(req).await.map_err(ClientError::Http)?;
        let status = resp.status();
        if !status.is_success() {
            return Ok((status, None));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(ClientError::Http)?;
        Ok((status, Some(TokioIo::new(upgraded))))
    }

    /// The next h2 connection, round-robin, reconnected when closed.
    async fn next_h2(
        &self,
        conns: &[Muxed<http2::SendRequest<Body>>],
        next: &AtomicUsize,
        dial: &Dial,
    ) -> Result<http2::SendRequest<Body>, ClientError> {
        let c = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
        self.live(c, |s| !s.is_closed(), || dial.h2(self.sources.pick()))
            .await
    }

    /// The next QUIC connection, round-robin, reconnected when closed.
    async fn next_h3(
        &self,
        conns: &[Muxed<H3Live>],
        next: &AtomicUsize,
        quic: &Quic,
    ) -> Result<H3Live, ClientError> {
        let c = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
        self.live(
            c,
            |l| l.conn.close_reason().is_none(),
            || quic.connect(self.sources.pick()),
        )
        .await
    }

    /// The open connection of `c`, reconnected (by one request at a time) when it is closed.
    async fn live<S: Clone, F: Future<Output = Result<S, ClientError>>>(
        &self,
        c: &Muxed<S>,
        open: impl Fn(&S) -> bool,
        connect: impl FnOnce() -> F,
    ) -> Result<S, ClientError> {
        let get = |c: &Muxed<S>| {
            c.live
                .lock()
                .expect("conn lock")
                .as_ref()
                .filter(|s| open(s))
                .cloned()
        };
        if let Some(s) = get(c) {
            return Ok(s);
        }
        let _one_at_a_time = c.reconnect.lock().await;
        if let Some(s) = get(c) {
            return Ok(s);
        }
        let s = connect().await?;
        *c.live.lock().expect("conn lock") = Some(s.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_protocols() {
        let t: Target = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t: Target = "http://localhost/".parse().unwrap();
        assert_eq!(t.authority, "localhost:80");
        let t: Target = "https://x:8443".parse().unwrap();
        assert!(t.tls);
        assert_eq!((t.authority.as_str(), t.host.as_str()), ("x:8443", "x"));
        let t: Target = "https://[::1]".parse().unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.as_str()),
            ("[::1]:443", "::1")
        );
        assert!("ftp://x:21".parse::<Target>().is_err());
        assert!("127.0.0.1:8080".parse::<Target>().is_err());
        assert!("http://x:1/v1".parse::<Target>().is_err());
        assert_eq!("h1".parse::<Protocol>(), Ok(Protocol::H1));
        assert_eq!("h2".parse::<Protocol>(), Ok(Protocol::H2));
        assert_eq!("h3".parse::<Protocol>(), Ok(Protocol::H3));
        assert_eq!("http3".parse::<Protocol>(), Ok(Protocol::H3));
        assert!("h4".parse::<Protocol>().is_err());
    }
}
