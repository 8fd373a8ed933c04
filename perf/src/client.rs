//! The generator's HTTP client: a fixed number of connections to one target.
//!
//! HTTP/1.1 keeps `N` keep-alive connections and sends one request at a time on each (a request
//! waits, FIFO, for a free connection, and that wait is part of its latency); h2c (prior
//! knowledge) opens `N` connections and multiplexes streams over them round-robin. A broken
//! connection is replaced on its next use. With source addresses, connection `i` binds to
//! `sources[i % len]`: many voters behind different addresses, as per-address limits see them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

pub type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "HTTP/3 is not supported by votes-load yet (it needs QUIC and TLS); use --protocol h1 or h2"
    )]
    H3NotYet,
    #[error("unknown protocol {0:?}: expected h1 or h2")]
    Unknown(String),
}

impl std::str::FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "h1" | "http1" | "http/1.1" => Ok(Self::H1),
            "h2" | "h2c" | "http2" => Ok(Self::H2),
            "h3" | "http3" => Err(ProtocolError::H3NotYet),
            _ => Err(ProtocolError::Unknown(s.to_string())),
        }
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }
}

/// A target URL reduced to what the client needs: `http://host[:port]`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, what to connect to and the `Host`/`:authority`.
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid --target {0:?}: expected http://HOST:PORT")]
    Invalid(String),
    #[error("--target {0:?}: only plaintext http:// (HTTP/1.1 or h2c) is supported")]
    Scheme(String),
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|_| TargetError::Invalid(s.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(TargetError::Scheme(s.to_string())),
            None => return Err(TargetError::Invalid(s.to_string())),
        }
        let auth = uri
            .authority()
            .ok_or_else(|| TargetError::Invalid(s.to_string()))?;
        if !matches!(uri.path(), "" | "/") {
            return Err(TargetError::Invalid(s.to_string()));
        }
        let port = auth.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", auth.host()),
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

async fn tcp(authority: &str, source: Option<IpAddr>) -> Result<TokioIo<TcpStream>, ClientError> {
    let s = match source {
        None => TcpStream::connect(authority)
            .await
            .map_err(ClientError::Connect)?,
        Some(src) => {
            let to: SocketAddr = tokio::net::lookup_host(authority)
                .await
                .map_err(ClientError::Connect)?
                .find(|a| a.is_ipv4() == src.is_ipv4())
                .ok_or_else(|| {
                    ClientError::Connect(std::io::Error::other(format!(
                        "{authority} has no address of the family of source {src}"
                    )))
                })?;
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
    Ok(TokioIo::new(s))
}

async fn connect_h1(
    authority: &str,
    source: Option<IpAddr>,
) -> Result<http1::SendRequest<Body>, ClientError> {
    let (send, conn) = http1::handshake(tcp(authority, source).await?)
        .await
        .map_err(ClientError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn connect_h2(
    authority: &str,
    source: Option<IpAddr>,
) -> Result<http2::SendRequest<Body>, ClientError> {
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 22)
        .handshake(tcp(authority, source).await?)
        .await
        .map_err(ClientError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
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

struct H2Conn {
    send: Mutex<Option<http2::SendRequest<Body>>>,
    reconnect: tokio::sync::Mutex<()>,
}

enum Pool {
    H1(H1Pool),
    H2 {
        conns: Vec<H2Conn>,
        next: AtomicUsize,
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
                let mut idle = Vec::with_capacity(connections);
                for _ in 0..connections {
                    idle.push(Some(connect_h1(&target.authority, sources.pick()).await?));
                }
                Pool::H1(H1Pool {
                    permits: Semaphore::new(connections),
                    idle: Mutex::new(idle),
                })
            }
            Protocol::H2 => {
                let mut conns = Vec::with_capacity(connections);
                for _ in 0..connections {
                    conns.push(H2Conn {
                        send: Mutex::new(Some(
                            connect_h2(&target.authority, sources.pick()).await?,
                        )),
                        reconnect: tokio::sync::Mutex::new(()),
                    });
                }
                Pool::H2 {
                    conns,
                    next: AtomicUsize::new(0),
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
    /// header), absolute for h2 (`:scheme` and `:authority` come from it).
    pub fn uri(&self, path: &str) -> Uri {
        let s = match self.protocol {
            Protocol::H1 => path.to_string(),
            Protocol::H2 => format!("http://{}{path}", self.target.authority),
        };
        s.parse().expect("paths of the voter API are valid URIs")
    }

    /// A request builder for `uri` with what the protocol needs.
    pub fn request(&self, method: hyper::Method, uri: Uri) -> hyper::http::request::Builder {
        let b = Request::builder().method(method).uri(uri);
        match self.protocol {
            Protocol::H1 => b.header(hyper::header::HOST, self.target.authority.as_str()),
            Protocol::H2 => b,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Answer, ClientError> {
        match &self.pool {
            Pool::H1(pool) => {
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
                    _ => connect_h1(&self.target.authority, self.sources.pick()).await?,
                };
                conn.ready().await.map_err(ClientError::Http)?;
                let resp = conn.send_request(req).await.map_err(ClientError::Http)?;
                let answer = read(resp).await?;
                slot.conn = Some(conn);
                Ok(answer)
            }
            Pool::H2 { conns, next } => {
                let c = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
                let mut send = self.h2_sender(c).await?;
                send.ready().await.map_err(ClientError::Http)?;
                let resp = send.send_request(req).await.map_err(ClientError::Http)?;
                read(resp).await
            }
        }
    }

    async fn h2_sender(&self, c: &H2Conn) -> Result<http2::SendRequest<Body>, ClientError> {
        let live = |c: &H2Conn| {
            c.send
                .lock()
                .expect("conn lock")
                .as_ref()
                .filter(|s| !s.is_closed())
                .cloned()
        };
        if let Some(s) = live(c) {
            return Ok(s);
        }
        let _one_at_a_time = c.reconnect.lock().await;
        if let Some(s) = live(c) {
            return Ok(s);
        }
        let s = connect_h2(&self.target.authority, self.sources.pick()).await?;
        *c.send.lock().expect("conn lock") = Some(s.clone());
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
        assert!("https://x:8443".parse::<Target>().is_err());
        assert!("127.0.0.1:8080".parse::<Target>().is_err());
        assert!("http://x:1/v1".parse::<Target>().is_err());
        assert_eq!("h1".parse::<Protocol>(), Ok(Protocol::H1));
        assert_eq!("h2".parse::<Protocol>(), Ok(Protocol::H2));
        assert_eq!("h3".parse::<Protocol>(), Err(ProtocolError::H3NotYet));
        assert!("h4".parse::<Protocol>().is_err());
    }
}
