//! glommio `TcpStream` as `hyper::rt::{Read, Write}`, with the bytes consumed by the protocol
//! sniff put back in front.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::TcpStream;

use super::watchdog::{ConnState, Proto};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest read handed to the socket at once. glommio's `AsyncRead` takes `&mut [u8]`, so the
/// part of hyper's (uninitialised) buffer we pass must be zeroed first; the cap bounds that cost.
const MAX_READ: usize = 64 * 1024;

pub(crate) struct Io {
    stream: TcpStream,
    prefix: [u8; 24],
    prefix_pos: usize,
    prefix_len: usize,
    state: Rc<ConnState>,
}

/// What the first bytes say.
pub(crate) enum Sniffed {
    Proto(Proto, Io),
    /// The peer closed before sending anything.
    Closed,
}

/// Reads until the bytes either diverge from the h2 preface (HTTP/1.x) or match it whole
/// (h2c prior knowledge). At most 24 bytes; a silent peer is bounded by the caller's deadline.
pub(crate) async fn sniff(mut stream: TcpStream, state: Rc<ConnState>) -> io::Result<Sniffed> {
    let mut prefix = [0u8; 24];
    let mut len = 0;
    let proto = loop {
        let n = stream.read(&mut prefix[len..]).await?;
        if n == 0 {
            if len == 0 {
                return Ok(Sniffed::Closed);
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
    Ok(Sniffed::Proto(
        proto,
        Io {
            stream,
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
        // SAFETY: we only write initialised bytes into the slice (zeroes, then the socket's
        // data) and advance by exactly what the socket reported.
        unsafe {
            let spare: &mut [MaybeUninit<u8>] = buf.as_mut();
            let len = spare.len().min(MAX_READ);
            std::ptr::write_bytes(spare.as_mut_ptr(), 0, len);
            let init = std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), len);
            match Pin::new(&mut this.stream).poll_read(cx, init) {
                Poll::Ready(Ok(n)) => {
                    assert!(n <= len, "socket reported more than the buffer");
                    buf.advance(n);
                    this.state.on_read(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}
