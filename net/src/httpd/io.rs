//! glommio `TcpStream`, plain or under TLS, as `hyper::rt::{Read, Write}`, with the bytes
//! consumed by the protocol sniff put back in front; and the start of a connection: sniff
//! (plaintext) or handshake + ALPN (TLS).

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use super::watchdog::{ConnState, Proto};
use super::{Alpn, ConnInfo};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest read handed to the socket at once: the size of the core's read scratch.
const MAX_READ: usize = 64 * 1024;

thread_local! {
    /// Where a connection's bytes land first. glommio's `AsyncRead` takes `&mut [u8]` while
    /// hyper hands out an uninitialised buffer; zeroing its spare capacity on every read cost
    /// ~5% of a reactor (a memset of 8-64 KiB per ~300-byte vote request), so each core reads
    /// into this buffer, zeroed once, and copies only the bytes that arrived. One per reactor
    /// thread: reads are synchronous (a readiness poll never fills a buffer later), so no two
    /// connections of a core ever hold it at once.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; MAX_READ].into_boxed_slice());
}

/// The byte stream under HTTP. An enum rather than a type parameter: one `Io` type keeps a
/// single copy of hyper's connection code per protocol.
enum Transport {
    Plain(TcpStream),
    /// Boxed: rustls' connection state is over a KiB, and the plain variant should not pay it.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Self::Plain(s) => s.as_raw_fd(),
            Self::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// TLS: sends close_notify first, then closes the socket.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

pub(crate) struct Io {
    stream: Transport,
    prefix: [u8; 24],
    prefix_pos: usize,
    prefix_len: usize,
    state: Rc<ConnState>,
}

impl Io {
    fn new(stream: Transport, state: Rc<ConnState>) -> Self {
        Self {
            stream,
            prefix: [0; 24],
            prefix_pos: 0,
            prefix_len: 0,
            state,
        }
    }
}

/// How a connection starts.
pub(crate) enum Started {
    Proto(Proto, ConnInfo, Io),
    /// The peer closed before sending anything (plaintext).
    Closed,
}

/// Why a connection could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// Reading the first bytes failed (plaintext).
    Io(io::Error),
    /// The TLS handshake failed; counted, and logged at debug level only.
    Handshake(io::Error),
    /// A `--proxy-protocol` listener's connection did not start with a valid PROXY v2 header.
    ProxyHeader(String),
}

/// Reads exactly one PROXY protocol v2 header, not one byte more (what follows is the client's
/// TLS or HTTP), and says whose connection it is.
pub(crate) async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<votes_core::proxy_header::Proxied, StartError> {
    use votes_core::proxy_header::{ADDRESS_BLOCK_MAX, FIXED_LEN, header_len, parse};
    let refuse = |why: String| StartError::ProxyHeader(why);
    let mut head = [0u8; FIXED_LEN + ADDRESS_BLOCK_MAX];
    // A connection closed before its first byte is a balancer's health check (connect, then
    // close), not a refusal: it is not counted as one.
    let first = stream.read(&mut head[..1]).await.map_err(StartError::Io)?;
    if first == 0 {
        return Err(StartError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    stream
        .read_exact(&mut head[1..FIXED_LEN])
        .await
        .map_err(|e| refuse(format!("reading its fixed part: {e}")))?;
    let len = header_len(&head[..FIXED_LEN]).map_err(|e| refuse(e.to_string()))?;
    stream
        .read_exact(&mut head[FIXED_LEN..len])
        .await
        .map_err(|e| refuse(format!("reading its addresses: {e}")))?;
    parse(&head[..len]).map_err(|e| refuse(e.to_string()))
}

/// Starts a connection: sniff on plaintext; on TLS the handshake, after which ALPN decides
/// (`h2` → HTTP/2; `http/1.1` or no ALPN → HTTP/1.1). Unbounded in time by itself: the caller
/// races it against the fresh-connection deadline and shutdown.
pub(crate) async fn start(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    state: Rc<ConnState>,
) -> Result<Started, StartError> {
    let Some(acceptor) = tls else {
        return sniff(stream, state).await.map_err(StartError::Io);
    };
    let tls = acceptor
        .accept(stream)
        .await
        .map_err(StartError::Handshake)?;
    // `check_alpn` at start-up guarantees any chosen id is one of ours.
    let alpn = tls.get_ref().1.alpn_protocol().and_then(Alpn::from_id);
    let (proto, http_version) = match alpn {
        Some(Alpn::H2) => (Proto::H2, http::Version::HTTP_2),
        Some(Alpn::Http11) | None => (Proto::H1, http::Version::HTTP_11),
        Some(Alpn::H3) => unreachable!("a TCP listener never offers h3 (check_alpn)"),
    };
    state.set_proto(proto);
    let info = ConnInfo {
        tls: true,
        alpn,
        http_version,
    };
    Ok(Started::Proto(
        proto,
        info,
        Io::new(Transport::Tls(Box::new(tls)), state),
    ))
}

/// Reads until the bytes either diverge from the h2 preface (HTTP/1.x) or match it whole
/// (h2c prior knowledge). At most 24 bytes; a silent peer is bounded by the caller's deadline.
async fn sniff(mut stream: TcpStream, state: Rc<ConnState>) -> io::Result<Started> {
    let mut prefix = [0u8; 24];
    let mut len = 0;
    let proto = loop {
        let n = stream.read(&mut prefix[len..]).await?;
        if n == 0 {
            if len == 0 {
                return Ok(Started::Closed);
            }
            break Proto::H1; // truncated: let hyper's h1 parser report it
        }
        let old = len;
        len += n;
        if prefix[old..len] != H2_PREFACE[old..len] {
            break Proto::H1;
        }
        if len == H2_PREFACE.len() {
            break Proto::H2;
        }
    };
    debug_assert!(len <= 24);
    state.set_proto(proto);
    let info = ConnInfo {
        tls: false,
        alpn: None,
        http_version: match proto {
            Proto::H2 => http::Version::HTTP_2,
            Proto::H1 | Proto::Unknown => http::Version::HTTP_11,
        },
    };
    Ok(Started::Proto(
        proto,
        info,
        Io {
            stream: Transport::Plain(stream),
            prefix,
            prefix_pos: 0,
            prefix_len: len,
            state,
        },
    ))
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix_pos < this.prefix_len {
            let rest = &this.prefix[this.prefix_pos..this.prefix_len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            return Poll::Ready(Ok(()));
        }
        let len = buf.remaining().min(MAX_READ);
        READ_SCRATCH.with_borrow_mut(|scratch| {
            match this.stream.poll_read(cx, &mut scratch[..len]) {
                Poll::Ready(Ok(n)) => {
                    assert!(n <= len, "socket reported more than the buffer");
                    buf.put_slice(&scratch[..n]);
                    this.state.on_read(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.stream.poll_write(cx, buf);
        if polled.is_pending() {
            let fd = this.stream.fd();
            this.state.on_write_blocked(|| bytes_acked(fd));
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = this.stream.poll_flush(cx);
        // hyper and h2 flush only once their own write buffer is in the socket.
        match &polled {
            Poll::Pending => {
                let fd = this.stream.fd();
                this.state.on_write_blocked(|| bytes_acked(fd));
            }
            Poll::Ready(Ok(())) => this.state.on_flushed(),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream.poll_close(cx)
    }
}

/// Bytes of ours the peer has acknowledged (TCP_INFO), or `None` if the kernel would not say.
pub(crate) fn bytes_acked(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: `fd` is the connection's open socket; the kernel writes at most `len` bytes into
    // `info`, a plain-old-data struct for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let has_field = len as usize
        >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    (rc == 0 && has_field).then_some(info.tcpi_bytes_acked)
}

/// How a [`FrameWriter`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    /// The socket failed or wrote nothing: the client is gone.
    Gone,
    /// A frame made no progress within the stall bound.
    Stalled,
}

/// One frame at a time into a socket taken from hyper (a WebSocket session, a detached
/// response) or a tunnel hyper keeps (a WebSocket over an h2 stream), each flushed (over TLS a write may sit in the session), under a stall bound: a
/// client that stops reading is let go, not buffered for.
pub(crate) struct FrameWriter {
    writing: Option<(bytes::Bytes, usize)>,
    flushing: bool,
    stall: std::time::Duration,
    stall_timer: Option<glommio::timer::Timer>,
}

impl FrameWriter {
    pub(crate) fn new(stall: std::time::Duration) -> Self {
        Self {
            writing: None,
            flushing: false,
            stall,
            stall_timer: None,
        }
    }

    /// Nothing being written or flushed: the next frame may start.
    pub(crate) fn is_idle(&self) -> bool {
        self.writing.is_none() && !self.flushing
    }

    pub(crate) fn start(&mut self, frame: bytes::Bytes) {
        assert!(self.is_idle(), "one frame at a time");
        if !frame.is_empty() {
            self.writing = Some((frame, 0));
        }
    }

    /// Writes and flushes the current frame: `Ready(Ok)` once idle, `Pending` while the socket
    /// is full (within the stall bound).
    pub(crate) fn poll_drain<W: hyper::rt::Write + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteEnd>> {
        use std::future::Future;
        loop {
            let progress = if let Some((buf, off)) = self.writing.as_mut() {
                match Pin::new(&mut *io).poll_write(cx, &buf[*off..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(WriteEnd::Gone));
                    }
                    Poll::Ready(Ok(n)) => {
                        *off += n;
                        if *off == buf.len() {
                            self.writing = None;
                            self.flushing = true;
                        }
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                }
            } else if self.flushing {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flushing = false;
                        Poll::Ready(())
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteEnd::Gone)),
                    Poll::Pending => Poll::Pending,
                }
            } else {
                self.stall_timer = None;
                return Poll::Ready(Ok(()));
            };
            match progress {
                Poll::Ready(()) => self.stall_timer = None,
                Poll::Pending => {
                    let stall = self.stall;
                    let timer = self
                        .stall_timer
                        .get_or_insert_with(|| glommio::timer::Timer::new(stall));
                    if Pin::new(timer).poll(cx).is_ready() {
                        return Poll::Ready(Err(WriteEnd::Stalled));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
